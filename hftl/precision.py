"""Which precision a run trains in: ``train.mixed_precision`` resolved for this device.

``auto`` (the default) picks bf16 where it is fast and fp32 elsewhere, and never guesses from a
flag: CPUs that report native bf16 train slower in it than in fp32 on some machines (DESIGN.md).

- CUDA: bf16 where ``torch.cuda.is_bf16_supported()``, else fp32.
- CPU: bf16 only where a short probe *measured* it at least 1.1x as fast as fp32: a few
  forward/backward steps of a small conv + matmul network in fp32 and under bf16 autocast,
  interleaved (0.1-0.3 s; it stops starting rounds after 1.5 s). The result is cached per machine
  in ``$HFTL_CACHE/precision.json`` (default ``~/.cache/hftl``), keyed by CPU model (and its bf16
  flags), torch version and thread count; an unreadable or corrupt cache is ignored and rewritten.
- elsewhere (MPS, ...): fp32.

``HFTL_CPU_BF16=1`` or ``0`` answers the CPU question without a probe (the test suite sets 0, so
its tiny runs train in fp32 on every CPU). fp16 is used only when asked for, and refused on the CPU. ``no``, ``bf16`` and ``fp16`` are
passed through as they are.

Example:
    >>> resolve_precision("no", "cpu")
    ('no', 'fp32 (train.mixed_precision=no)')
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from hftl.errors import ConfigError

logger = logging.getLogger(__name__)

CHOICES = ("auto", "no", "bf16", "fp16")
# bf16 rounds more than fp32: take it on a CPU only for a clear gain, not for a tie the noise decides.
MIN_SPEEDUP = 1.1
PROBE_BUDGET_S = 1.5  # the probe stops starting rounds after this long
_logged: set[str] = set()


def cache_file() -> Path:
    """``$HFTL_CACHE/precision.json`` (default ``~/.cache/hftl/precision.json``): the probe's results.

    Example:
        >>> cache_file().name
        'precision.json'
    """
    return Path(os.environ.get("HFTL_CACHE", Path.home() / ".cache" / "hftl")) / "precision.json"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), e.g. ``AMD EPYC``; ``platform.processor()`` elsewhere.

    Example:
        >>> cpu_name()  # doctest: +SKIP
        'AMD EPYC'
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    """What the cached probe result belongs to: CPU model, its bf16 flags, torch version, intra-op threads.

    The flags are in the key because one model name covers different chips here: two machines both
    named "AMD EPYC", one with AVX512-BF16 (bf16 faster) and one without (bf16 0.15x of fp32).

    Example:
        >>> machine_key()  # doctest: +SKIP
        'AMD EPYC | avx512_bf16 | torch 2.14.1+cu130 | 2 threads'
    """
    flags = _cpu_flags() & {"avx512_bf16", "amx_bf16", "sve", "bf16"}
    return (f"{cpu_name()} | {'/'.join(sorted(flags)) or 'no bf16 flags'} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run_device(cpu: bool = False) -> str:
    """The device a Trainer runs on: ``cpu`` when asked (``train.cpu``, ``ACCELERATE_USE_CPU``), else cuda/mps/cpu.

    Example:
        >>> run_device(cpu=True)
        'cpu'
    """
    if cpu or _env_cpu():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _env_cpu() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def _probe_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10),
    )


def measure_cpu_bf16() -> dict:
    """bf16-autocast vs fp32 speed of a small CNN-like forward/backward on this CPU, interleaved.

    Runs in one thread: the ratio is a property of the kernels, and on a shared 2-core machine two
    threads stall at every barrier while another process holds a core (2-thread probe steps took
    300 ms for 6 ms of work here, and four runs gave 0.89-1.11x where one thread gave 1.23-1.55x).
    Returns ``{"speedup": fp32 seconds / bf16 seconds, "fp32_ms", "bf16_ms", "rounds", "probe_threads"}``.

    Example:
        >>> measure_cpu_bf16()["speedup"]  # doctest: +SKIP
        0.15
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # leaves the run's random stream as it was
            torch.manual_seed(0)
            net = _probe_net()
            x = torch.randn(16, 16, 24, 24)
            y = torch.randint(0, 10, (16,))

            def step(bf16: bool) -> float:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(net(x).float(), y)
                loss.backward()
                net.zero_grad(set_to_none=True)
                return time.perf_counter() - start

            began = time.perf_counter()
            step(False), step(True)  # warm-up: oneDNN primitives, allocator
            times: dict[bool, list[float]] = {False: [], True: []}
            for r in range(7):
                for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
                    times[bf16].append(step(bf16))
                if r >= 1 and time.perf_counter() - began > PROBE_BUDGET_S:
                    break
    finally:
        torch.set_num_threads(threads)
    # The fastest of each: other work on a shared machine only ever adds time.
    fp32, bf16 = min(times[False]), min(times[True])
    return {"speedup": round(fp32 / bf16, 3), "fp32_ms": round(1e3 * fp32, 2), "bf16_ms": round(1e3 * bf16, 2),
            "rounds": len(times[False]), "probe_threads": 1}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable or corrupt: measure again and rewrite it
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)  # whole or not at all: a concurrent reader never sees half a file
    except OSError as e:
        logger.debug("Could not write the precision cache %s (%s); the probe runs again next time", path, e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def cpu_bf16_speedup() -> dict:
    """The probe's result for this machine: from the cache, else measured now and cached.

    Example:
        >>> cpu_bf16_speedup()["speedup"]  # doctest: +SKIP
        1.68
    """
    path, key = cache_file(), machine_key()
    cache = _read_cache(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)) and entry["speedup"] > 0:
        return entry
    entry = {**measure_cpu_bf16(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    cache = {k: v for k, v in cache.items() if isinstance(v, dict)}
    cache[key] = entry
    _write_cache(path, cache)
    return entry


def resolve_precision(requested: str, device: str | torch.device) -> tuple[str, str]:
    """``(precision for Accelerate: no/bf16/fp16, the reason in one line)`` for ``requested`` on ``device``.

    Example:
        >>> resolve_precision("auto", "cpu")  # doctest: +SKIP
        ('no', 'auto: fp32, bf16 measured 0.15x of fp32 on AMD EPYC')
    """
    kind = torch.device(device).type
    if requested not in CHOICES:
        raise ConfigError(f"train.mixed_precision must be one of {', '.join(CHOICES)}, not '{requested}'.")
    if requested == "fp16" and kind == "cpu":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (it is ~60x slower on CPU). Use auto or bf16 on "
                          "CPU.")
    if requested == "no":
        precision, reason = "no", "fp32 (train.mixed_precision=no)"
    elif requested in ("bf16", "fp16"):
        precision, reason = requested, f"{requested} (train.mixed_precision={requested})"
        if requested == "bf16" and kind == "cpu" and not _mkldnn_bf16():
            logger.warning("train.mixed_precision=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): it runs on "
                           "fallback kernels, several times slower than fp32 (benchmarks/flops.py measured 0.15x); "
                           "train.mixed_precision=auto measures which is faster")
    elif kind == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
        if torch.cuda.is_bf16_supported():
            precision, reason = "bf16", f"auto: bf16, supported by {name}"
        else:
            precision, reason = "no", f"auto: fp32, {name} has no bf16"
    elif kind == "cpu" and os.environ.get("HFTL_CPU_BF16", "") in ("0", "1"):
        precision = "bf16" if os.environ["HFTL_CPU_BF16"] == "1" else "no"
        reason = f"auto: {'bf16' if precision == 'bf16' else 'fp32'}, HFTL_CPU_BF16={os.environ['HFTL_CPU_BF16']} (not measured)"
    elif kind == "cpu":
        speed = cpu_bf16_speedup()["speedup"]
        precision = "bf16" if speed >= MIN_SPEEDUP else "no"
        reason = f"auto: {'bf16' if precision == 'bf16' else 'fp32'}, bf16 measured {speed:.2f}x of fp32 on {cpu_name()}"
    else:
        precision, reason = "no", f"auto: fp32 on {kind} (bf16 is picked on CUDA, and on CPUs where it measures faster)"
    if reason not in _logged:
        _logged.add(reason)
        logger.info("Precision: %s", reason)
    return precision, reason


def resolve_for_ranks(requested: str, device: str, cpu: bool = False) -> tuple[str, str]:
    """:func:`resolve_precision` once for all processes: rank 0 decides and tells the others.

    Each rank measuring on its own could see different loads and pick different precisions, and
    DDP ranks must train alike.

    Example:
        >>> resolve_for_ranks("no", "cpu")
        ('no', 'fp32 (train.mixed_precision=no)')
    """
    if requested != "auto" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return resolve_precision(requested, device)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=cpu or _env_cpu())  # as Accelerator will make it: the same process group
    choice = [resolve_precision(requested, device) if state.is_main_process else None]
    broadcast_object_list(choice)
    return tuple(choice[0])


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a build without the op has no native path
        return False
