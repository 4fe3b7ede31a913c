"""What the ``hftl`` command shows in the terminal, and the log file each run and study keeps.

The terminal gets one progress display per run or study, each warning once, and the results; the
INFO lines (what was loaded, every fold's number) and the libraries' own chatter (transformers'
load reports, ``datasets``' Map/Filter bars, the Hub's "Writing model shards") stay out of it.
``hftl --verbose`` brings the INFO lines back. Every INFO line still goes to the run's
``OUTPUT_DIR/logs/hftl.log`` (a study's: ``STUDY_DIR/logs/hftl.log``), so nothing is lost.

Only the command configures logging: a notebook that imports hftl keeps its own logging setup,
and :func:`run_log` writes no file there unless the notebook calls :func:`setup_console` too.

Example:
    >>> setup_console(verbose=False)  # doctest: +SKIP
    >>> with run_log("outputs/run"):  # doctest: +SKIP
    ...     train(cfg)
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

# Set by setup_console: the command keeps log files, a notebook (by default) does not; study workers copy it.
_FILE_LOGS = {"on": False, "verbose": False}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUIET_LIBRARIES = ("httpx", "urllib3", "filelock", "datasets", "timm", "accelerate", "huggingface_hub",
                    "transformers", "torch", "sentence_transformers", "matplotlib", "PIL")


class _ProgressSafeHandler(logging.Handler):
    """Writes through ``tqdm.write``, so a log line never tears a progress bar in two.

    Not a StreamHandler on purpose: tqdm's ``logging_redirect_tqdm`` (the study uses it in notebooks)
    then leaves this handler, its level and its filter as they are.
    """

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)  # where progress bars and warnings go, not stdout
        except Exception:
            self.handleError(record)


class _Once(logging.Filter):
    """Each distinct message once per process: a warning about every fold of a study is one line, not twenty."""

    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_console(verbose: bool = False) -> None:
    """Configure logging for the ``hftl`` command: warnings once on the terminal (INFO with ``verbose``), all to files.

    Example:
        >>> setup_console(verbose=True)  # doctest: +SKIP
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ProgressSafeHandler)]:
        root.removeHandler(handler)  # called again (tests, recipes): one console handler, not two
    console = _ProgressSafeHandler(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose
                                           else "%(levelname)s: %(message)s"))
    console.addFilter(_Once())
    root.addHandler(console)
    root.setLevel(logging.INFO)  # the run's log file gets the INFO lines; the console filters by its own level
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose and name == "transformers" else logging.WARNING)
    logging.captureWarnings(True)  # Python warnings through the same handler: each shown once
    _FILE_LOGS.update(on=True, verbose=verbose)
    _quiet_library_output(verbose)


def _quiet_library_output(verbose: bool) -> None:
    """The libraries' own bars and reports (they print them themselves, not through our handlers)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if verbose:
        return
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the LOAD REPORT of a fresh classifier head, per fold, is expected
        hf_logging.disable_progress_bar()  # "Loading weights" per model
    except ImportError:
        pass


@contextmanager
def run_log(folder: str | Path):
    """While the block runs, hftl's INFO lines also go to ``folder/logs/hftl.log`` (only under the command).

    Example:
        >>> with run_log("outputs/run"):  # doctest: +SKIP
        ...     ...
    """
    if not _FILE_LOGS["on"]:
        yield None
        return
    path = Path(folder) / "logs" / "hftl.log"  # the caller made the folder (a run's lock, a study's start)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # opened at the first line it gets
    except OSError:  # a read-only folder: the run's own checks say so; the log file is not worth failing for
        yield None
        return
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield path
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def console_settings() -> dict:
    """What :func:`setup_console` was called with in this process (a study's worker processes repeat it)."""
    return dict(_FILE_LOGS)
