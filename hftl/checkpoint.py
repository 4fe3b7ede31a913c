"""A training checkpoint: written atomically, verified before anything is read, read back for an exact resume.

A checkpoint is a folder ``output_dir/checkpoints/checkpoint-<step>`` holding what Accelerate saves
(``model.safetensors``, ``optimizer.bin``, ``random_states_<rank>.pkl``), the best epoch's weights so
far (``best_model.safetensors``) and ``trainer_state.json``: the step, epoch, batches done, the
history, the run's shape, the scheduler's state (JSON, not a pickle) and each file's size and sha256.
It is written to ``.tmp-checkpoint-<step>`` and renamed into place, so only complete checkpoints have
the name. On resume, a checkpoint that hftl did not write into this run, holds files hftl never
writes, fails its checksums or belongs to a run of another shape is refused before Accelerate reads it.

:class:`hftl.trainer.Trainer` calls these at its checkpoint steps and on ``train.resume``.

Example:
    >>> path = find_checkpoint(Path("outputs/run"), "latest")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'checkpoint-12'
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from hftl.errors import CheckpointError, OutputError

STATE_FILE = "trainer_state.json"
# What a checkpoint folder holds (plus random_states_<rank>.pkl, read with weights_only=True).
CHECKPOINT_FILES = {STATE_FILE, "model.safetensors", "optimizer.bin", "best_model.safetensors"}
CHECKPOINT_FORMAT = "hftl-checkpoint/3"  # 2: scheduler state in JSON, the run's shape; 3: file checksums
BEST_FILE = "best_model.safetensors"  # in a checkpoint: the weights of the best epoch so far


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    """The checkpoint to resume from: 'latest' (highest complete step) or one of this output dir's checkpoints.

    Only checkpoints hftl wrote into ``output_dir/checkpoints`` are resumed: a checkpoint folder from
    elsewhere is untrusted input (Accelerate's state files are pickles), and belongs to another run anyway.
    """
    root = output_dir / "checkpoints"
    if resume != "latest":
        path = Path(resume)
        if not path.is_absolute() and not path.exists():
            path = root / resume
        if path.resolve().parent != root.resolve():
            raise CheckpointError(
                f"train.resume='{resume}' is not a checkpoint of this run: hftl resumes only checkpoints it wrote in "
                f"'{root}' (train.resume=latest or checkpoint-N). To start from other weights, use model.id or "
                "model.init_from.")
        if not (path / STATE_FILE).is_file():
            raise CheckpointError(f"'{resume}' is not a complete hftl checkpoint (no {STATE_FILE} in it).")
        return path
    # Only renamed-into-place folders count: a crash mid-write leaves a .tmp-* folder, never checkpoint-N.
    complete = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    if not complete:
        raise CheckpointError(
            f"train.resume=latest but '{root}' holds no complete checkpoint. Start without train.resume, or "
            "point it at a checkpoint folder."
        )
    return max(complete, key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(output_dir: Path) -> Path | None:
    """The latest complete checkpoint of ``output_dir``, or None when there is none yet."""
    try:
        return find_checkpoint(output_dir, "latest")
    except CheckpointError:
        return None


# ------------------------------------------------------------------------------------------ writing

def save_checkpoint(acc, output_dir: Path, state: dict, *, model: nn.Module, best_state: dict | None,
                    channels_last: bool, keep: int) -> None:
    """Write ``output_dir/checkpoints/checkpoint-<state["global_step"]>`` on every process, atomically.

    Written to a temporary folder, then renamed into place: a crash never leaves a whole-looking half.
    ``state`` is what ``trainer_state.json`` records of the run (global_step, epoch, batches_done,
    history, run, scheduler); ``model`` the prepared model; ``best_state`` the best epoch's weights
    (or None); ``keep`` how many complete checkpoints to keep. A write that fails (a full disk, a
    read-only folder) is an :class:`OutputError` naming the last good checkpoint, and leaves no
    temporary folder behind.
    """
    root = output_dir / "checkpoints"
    final = root / f"checkpoint-{state['global_step']}"
    tmp = root / f".tmp-checkpoint-{state['global_step']}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    try:
        _write_checkpoint(acc, state, model, best_state, channels_last, keep, tmp, final, root)
    except (OSError, RuntimeError) as e:  # a full disk, a read-only folder (torch.save: "iostream error")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written folder holding the space
        last = last_checkpoint(output_dir)
        why = getattr(e, "strerror", None) or str(e)[:120]
        then = f"the run can resume from {last.name} (train.resume=latest)." if last else "no earlier checkpoint exists."
        raise OutputError(f"Checkpoint {final.name} could not be written to '{root}' ({why}). Free disk space or "
                          f"choose a writable output_dir; {then}") from e
    acc.wait_for_everyone()


def _write_checkpoint(acc, state: dict, model: nn.Module, best_state: dict | None, channels_last: bool, keep: int,
                      tmp: Path, final: Path, root: Path) -> None:
    if channels_last:  # safetensors stores contiguous tensors only
        model.to(memory_format=torch.contiguous_format)
    acc.save_state(str(tmp), safe_serialization=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    acc.wait_for_everyone()  # every rank's RNG file is on disk before rank 0 checksums the folder
    if acc.is_main_process:
        if best_state is not None:  # the best epoch's weights, restored at the end even after a resume
            from safetensors.torch import save_file

            save_file(best_state, str(tmp / BEST_FILE))
        state = {"format": CHECKPOINT_FORMAT, **state, "files": _digests(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted((p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file()),
                      key=lambda p: int(p.name.split("-")[-1]))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading

def load_checkpoint(acc, path: Path, run_shape: dict) -> tuple[dict, dict | None]:
    """Restore Accelerate's state (model, optimizer, RNG) from a verified checkpoint.

    Returns ``(state, best_state)``: what ``trainer_state.json`` holds (see :func:`checked_state`),
    and the best epoch's weights when the checkpoint has them (else None). The scheduler, step and
    history in ``state`` are the caller's to restore.
    """
    state = checked_state(path, run_shape, acc.process_index)
    try:  # every piece Accelerate reads here is safetensors or torch.load(weights_only=True)
        acc.load_state(str(path))
    except Exception as e:  # a damaged optimizer/RNG file: name the checkpoint, not a deep traceback
        raise CheckpointError(f"Checkpoint '{path}' could not be read ({type(e).__name__}: {str(e)[:200]}). "
                              "Resume from an earlier checkpoint-N, or start without train.resume.") from e
    best_state = None
    if (path / BEST_FILE).is_file():
        from safetensors.torch import load_file

        best_state = load_file(str(path / BEST_FILE))
    return state, best_state


def checked_state(path: Path, run_shape: dict, process_index: int) -> dict:
    """The checkpoint's state file, after checking hftl wrote it for a run shaped like this one.

    ``run_shape``: this run's batch sizes, world size, examples and steps (compared with the recorded
    ones); ``process_index``: this process's rank (its RNG file is checked to be readable).
    """
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"'{path / STATE_FILE}' is damaged ({e}); resume from an earlier checkpoint-N.") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' was not written by this version of hftl (no '{CHECKPOINT_FORMAT}' in "
                              f"{STATE_FILE}); start the run again without train.resume.")
    foreign = sorted(p.name for p in path.iterdir() if p.is_file() and p.name not in CHECKPOINT_FILES
                     and not (p.name.startswith("random_states_") and p.suffix == ".pkl"))
    if foreign:
        raise CheckpointError(f"Checkpoint '{path}' holds files hftl never writes ({', '.join(foreign[:3])}); it "
                              "is not resumed. Resume from another checkpoint-N, or start without train.resume.")
    missing = [name for name in ("model.safetensors", "optimizer.bin") if not (path / name).is_file()]
    missing += [name for name in state["files"] if name not in missing and not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"Checkpoint '{path}' is incomplete (no {', '.join(missing)}); resume from an "
                              "earlier checkpoint-N, or start without train.resume.")
    now = _digests(path)
    changed = [name for name, digest in state["files"].items() if now.get(name) != digest]
    if changed:  # a truncated or edited file: never resume from weights that are not the ones saved
        raise CheckpointError(f"Checkpoint '{path}' does not match its checksums ({', '.join(changed[:3])} "
                              "changed since it was written); resume from an earlier checkpoint-N, or start "
                              "without train.resume.")
    rng = path / f"random_states_{process_index}.pkl"
    try:  # Accelerate would skip an unreadable RNG file with a log line: the resume would then not be exact
        from accelerate.utils import load as weights_only_load

        weights_only_load(rng)
    except Exception as e:
        raise CheckpointError(f"Checkpoint '{path}' could not be read ({rng.name}: {type(e).__name__}). Resume "
                              "from an earlier checkpoint-N, or start without train.resume.") from e
    differs = [f"{k} {v} (now {run_shape[k]})" for k, v in (state.get("run") or {}).items()
               if k in run_shape and v != run_shape[k]]
    if differs:
        raise CheckpointError(f"Checkpoint '{path}' belongs to a run of another shape: {'; '.join(differs)}. "
                              "Resume with the same data and batch settings, or start a new output_dir.")
    return state


def _digests(folder: Path) -> dict[str, str]:
    """``{file name: "size:sha256"}`` of a checkpoint folder's files (the state file itself excluded)."""
    import hashlib

    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != STATE_FILE:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[p.name] = f"{p.stat().st_size}:{h.hexdigest()}"
    return out
