"""An output folder belongs to one run at a time, and a run never overwrites what it did not write.

Two runs started on one folder would interleave their logs and leave one run's model beside the
other's results; a run pointed at a folder of the user's own files would replace them. So a run
first checks the folder (:func:`check_output_dir`), then holds an exclusive lock on it for its
whole length (:func:`output_lock`). The lock is an ``flock`` on ``.hftl.lock``: the kernel drops it
when the process ends, however it ends, so a killed run never leaves a stale lock behind.

Example:
    >>> with output_lock("outputs/run"):  # doctest: +SKIP
    ...     train_into("outputs/run")
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from hftl.errors import ConfigError

LOCK_FILE = ".hftl.lock"
# What an interrupted hftl run leaves before its first checkpoint: a restart may write over these.
RUN_LEFTOVERS = {LOCK_FILE, "log.jsonl", "logs", "checkpoints"}


def check_output_dir(output_dir: str, resume: str | None) -> None:
    """Refuse an output folder that would lose something: another run's model, or files hftl did not write.

    Example:
        >>> check_output_dir("outputs/new-run", resume=None)  # doctest: +SKIP
    """
    if not str(output_dir).strip():
        raise ConfigError("output_dir is empty: name a folder for the run (e.g. output_dir=outputs/run); hftl does not "
                          "write a run into the current directory.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir '{out}' is a file, not a folder. Choose another output_dir.")
    if resume or not out.is_dir():
        return
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise ConfigError(
            f"output_dir '{out}' already holds a run's checkpoints. Resume it with train.resume=latest, or choose "
            "another output_dir (nothing was overwritten).")
    if (out / "hftl.json").is_file() or (out / "metrics.json").is_file():
        raise ConfigError(f"output_dir '{out}' already holds a trained model. Choose another output_dir, or delete "
                          "the folder first (nothing was overwritten).")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_LEFTOVERS)
    if foreign:
        raise ConfigError(f"output_dir '{out}' is not empty and is not an hftl run (it holds "
                          f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}). Choose a new or empty "
                          "folder (nothing was overwritten).")


@contextmanager
def output_lock(output_dir: str | Path):
    """Hold ``output_dir`` for this run; a second run on it fails at once with one line.

    Under ``torchrun``/``accelerate launch`` only rank 0 takes the lock: the other ranks are the same run.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    import fcntl

    out = Path(output_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")
    except OSError as e:
        raise ConfigError(f"output_dir '{out}' cannot be written ({e.strerror}). Choose a folder you can write to, "
                          "or free space on its disk.") from e
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"output_dir '{out}' is in use by another hftl run ({holder}). Wait for it to finish, or "
                              "choose another output_dir.") from e
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing drops the lock
        # A run that failed before writing anything leaves nothing (its log lines were on the terminal too).
        logs = out / "logs"
        only_log = logs.is_dir() and {p.name for p in logs.iterdir()} <= {"hftl.log"}
        if created and {p.name for p in out.iterdir()} <= {LOCK_FILE, *(["logs"] if only_log else [])}:
            if only_log:
                (logs / "hftl.log").unlink(missing_ok=True)
                logs.rmdir()
            (out / LOCK_FILE).unlink(missing_ok=True)
            out.rmdir()
