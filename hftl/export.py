"""Export a trained classifier to ONNX, checked against onnxruntime before it is kept.

``hftl export OUT --format onnx`` writes ``OUT/onnx/model.onnx`` (torch's dynamo exporter, dynamic
batch and, for text, sequence dimensions), runs it with onnxruntime on an example batch and on a
batch of another size, and keeps it only when its logits match PyTorch's within ``atol`` (1e-4).
``OUT/onnx/export.json`` and a block in the model card record the opset, the inputs and the
largest difference measured. Image, text and audio classifiers (and text regression) export; other
tasks say so in one line.

Example:
    >>> path = export_onnx("outputs/resnet18_digits")  # doctest: +SKIP
    >>> import onnxruntime; onnxruntime.InferenceSession(str(path))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from hftl.errors import ConfigError, HftlError

logger = logging.getLogger(__name__)

OPSET = 18
ONNX_START, ONNX_END = "<!-- hftl:onnx -->", "<!-- /hftl:onnx -->"


class _Positional(torch.nn.Module):
    """The model behind named tensor inputs (what ONNX graphs take), returning its logits."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(dict(zip(self.names, tensors)))


def export_onnx(folder: str | Path, output: str | Path | None = None, *, opset: int = OPSET, atol: float = 1e-4,
                trust_remote_code: bool = False, allow_pickle: bool = False) -> Path:
    """Export the model in ``folder`` (an hftl output) to ONNX; returns the .onnx path.

    Example:
        >>> export_onnx("outputs/minilm_topics", opset=18)  # doctest: +SKIP
        PosixPath('outputs/minilm_topics/onnx/model.onnx')
    """
    from hftl.api import _task_of
    from hftl.model import load
    from hftl.tasks import get_task_impl

    ort = _require("onnxruntime")
    _require("onnxscript")
    folder = Path(folder)
    model = load(folder, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle).eval()
    task = get_task_impl(_task_of(model))
    example, dims = task.export_inputs(model, batch_size=2)
    exported, output_name = task.export_module(model)  # the classifier, or what of the model exports (an encoder)
    names = list(example)
    path = Path(output) if output else folder / "onnx" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    from torch.export import Dim

    shapes = {n: {axis: Dim(label) for axis, label in dims.get(n, {}).items()} for n in names}
    try:
        with torch.no_grad():
            program = torch.onnx.export(_Positional(exported, names), tuple(example[n] for n in names), dynamo=True,
                                        input_names=names, output_names=[output_name], opset_version=opset,
                                        dynamic_shapes=(tuple(shapes[n] for n in names),), verbose=False)
        program.save(str(tmp))
    except HftlError:
        raise
    except Exception as e:  # the exporter's own errors are long: one line, with the model kind
        tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"'{folder}' ({task.name}, {model.library}) could not be exported to ONNX: {first}") from e
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch_size in (2, 3):  # a second size proves the batch dimension is dynamic
        batch, _ = task.export_inputs(model, batch_size=batch_size)
        with torch.no_grad():
            expected = exported(batch).float().numpy()
        got = session.run(None, {n: batch[n].numpy() for n in names})[0]
        worst = max(worst, float(abs(got - expected).max()))
    if worst > atol:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"The ONNX export of '{folder}' differs from PyTorch by {worst:.2g} (> {atol:g}); it was not "
                          "kept. Try another opset (--opset).")
    tmp.replace(path)
    record = {"file": path.name, "opset": opset, "inputs": {n: _shape(example[n], dims.get(n, {})) for n in names},
              "outputs": {output_name: list(_shape(exported(example).detach(), {0: "batch", **({1: "sequence"}
                          if output_name != "logits" else {})}))},
              "max_abs_diff_vs_pytorch": worst, "onnxruntime": ort.__version__, "torch": torch.__version__}
    (path.parent / "export.json").write_text(json.dumps(record, indent=2))
    _note_in_card(folder, path, record)
    logger.info("ONNX export: %s (opset %d), onnxruntime matches PyTorch within %.2g", path, opset, worst)
    return path


def _shape(tensor: torch.Tensor, dynamic: dict) -> list:
    return [dynamic.get(i, n) for i, n in enumerate(tensor.shape)]


def _note_in_card(folder: Path, path: Path, record: dict) -> None:
    """Add (or replace) the ONNX block of the folder's model card."""
    card = folder / "README.md"
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    inputs = ", ".join(f"`{n}` {shape}" for n, shape in record["inputs"].items())
    where = path.relative_to(folder) if path.is_relative_to(folder) else path
    output = ", ".join(f"`{n}` {shape}" for n, shape in record["outputs"].items())
    block = (f"{ONNX_START}\n## ONNX\n\n`{where}`: opset {record['opset']}, inputs {inputs}, output {output}. "
             f"Checked with onnxruntime {record['onnxruntime']}: largest difference from PyTorch "
             f"{record['max_abs_diff_vs_pytorch']:.2g}.\n{ONNX_END}")
    if ONNX_START in text and ONNX_END in text:
        text = text[: text.index(ONNX_START)] + block + text[text.index(ONNX_END) + len(ONNX_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    card.write_text(text, encoding="utf-8")


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs {module}, which is not installed: pip install 'hftl[onnx]'.") from None


__all__ = ["export_onnx", "OPSET"]
