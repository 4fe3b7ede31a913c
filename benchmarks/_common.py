"""Shared helpers for the benchmarks: offline environment, machine facts, timing, the result table.

Benchmarks are scripts, not tests. Every ratio they print is measured in one run, on the same
model, data and batch size, with the variants interleaved round by round (these machines are
shared and noisy), after a warm-up, as the median over the rounds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before any Hugging Face import: no network, caches in a throw-away folder, quiet progress bars.
SCRATCH = Path(tempfile.mkdtemp(prefix="hftl-bench-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(SCRATCH / "hf_home"))
os.environ.setdefault("HF_DATASETS_CACHE", str(SCRATCH / "hf_datasets"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # same device for every variant, whatever the machine holds

import logging  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

logging.basicConfig(level=logging.WARNING)
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not results
for _name in ("hftl", "accelerate", "transformers", "datasets", "timm", "peft"):
    logging.getLogger(_name).setLevel(logging.ERROR)

REPO = Path(__file__).resolve().parents[1]


def command() -> str:
    """The exact command that produced this output (to quote next to the numbers)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])])


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    from hftl.precision import (
        cpu_name as name,  # one reading of /proc/cpuinfo, the one precision's cache keys on
    )

    return name()


def native_bf16() -> bool:
    """Whether PyTorch's oneDNN has a native bf16 path on this CPU (AVX512-BF16/AMX or the like)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old build without the op simply has no such path
        return False


def add_threads_option(parser) -> None:
    """``--threads N``: torch's intra-op threads (default: torch's own choice, the machine's cores).

    With other work on a 2-core machine, two OpenMP threads can stall at every barrier while one
    of them waits for a core (steps measured here went from 0.5 s to 3.6 s that way); ``--threads 1``
    trades peak speed for steadier numbers.
    """
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def apply_threads(args) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def header(title: str, sizes: str) -> None:
    """Print what ran where: the command, the machine, the software, the sizes."""
    import accelerate
    import timm
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars would clutter the tables
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    print(f"# {title}")
    print(f"command:  {command()}")
    print(f"machine:  {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"SIMD {'/'.join(simd) or 'none listed'}, native bf16 (oneDNN): {native_bf16()}")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
          f"transformers {transformers.__version__}, accelerate {accelerate.__version__}")
    if DEVICE != "cpu":
        print(f"device:   {device_name()}")
    print(f"sizes:    {sizes}")
    print(f"load average at start (1/5/15 min): {load()}")
    print()


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


DEVICE = "cpu"  # where the benchmarked steps run: set_device("cuda") for --device cuda


def set_device(device: str) -> None:
    """Run the benchmark's steps on ``device`` (cpu or cuda); a CUDA step ends when the GPU has finished it."""
    global DEVICE
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
        os.environ.pop("ACCELERATE_USE_CPU", None)  # set above so CPU runs stay on the CPU whatever the machine holds
    DEVICE = device


def add_device_option(parser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the steps run (default cpu)")


def device_name() -> str:
    return cpu_name() if DEVICE == "cpu" else f"{torch.cuda.get_device_name()} (cuda)"


def stamp() -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds over all its threads), taken at a step's end.

    On CUDA it first waits for the queued kernels: otherwise a step would "end" when it is launched.
    """
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def intervals(stamps: list[tuple[float, float]], skip: int, cpu: bool = False) -> list[float]:
    """Seconds between consecutive step ends (wall clock, or CPU time with ``cpu``), after ``skip`` steps.

    CPU time does not advance while the machine runs other people's work, so it is the steadier
    measure on a shared machine (threads spinning at a barrier still count).
    """
    values = [s[1 if cpu else 0] for s in stamps[skip:]]
    return [b - a for a, b in zip(values, values[1:])]


class Table:
    """Rows of measured numbers; rows with a goal get PASS/MISS next to them."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, name: str, value: str, goal: str = "", ok: bool | None = None) -> None:
        status = "" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append((name, value, goal, status))

    def print(self) -> None:
        print(f"## {self.title}")
        w = [max(len(r[i]) for r in self.rows + [("measure", "value", "goal", "")]) for i in range(4)]
        line = lambda r: f"| {r[0]:<{w[0]}} | {r[1]:>{w[1]}} | {r[2]:<{w[2]}} | {r[3]:<{w[3]}} |"  # noqa: E731
        print(line(("measure", "value", "goal", "")))
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")
        for r in self.rows:
            print(line(r))
        print()


def footer() -> None:
    print(f"load average at end (1/5/15 min): {load()}")
    sys.stdout.flush()


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB: Linux's VmHWM, else ``ru_maxrss``.

    VmHWM belongs to the process's own address space, so a fresh subprocess starts from zero.
    ``ru_maxrss`` does not: Linux carries the parent's resident size at fork across exec into the
    child's ``ru_maxrss``, so a subprocess of a big parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
