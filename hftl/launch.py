"""Make ``accelerate launch --cpu --num_processes N`` start N processes, as it says.

Accelerate's launcher hands a ``--cpu`` run to its simple launcher, which starts ONE process and
drops ``--num_processes`` silently (measured on these machines; DESIGN.md). The recipes call
:func:`relaunch_cpu_multiprocess` first: when it sees that case it re-launches the same script
under ``torch.distributed.run`` with N ranks on the CPU (gloo), and says so in the log.

Example:
    >>> relaunch_cpu_multiprocess(["cfg.yaml"]) is None  # not under accelerate --cpu: nothing to do
    True
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _parent_num_processes() -> int:
    """``--num_processes`` from the launching ``accelerate launch`` command line (Linux /proc), else 1."""
    cmdline = Path(f"/proc/{os.getppid()}/cmdline")
    if not cmdline.is_file():
        return 1
    args = cmdline.read_bytes().decode(errors="replace").split("\0")
    if not any("accelerate" in a for a in args[:3]):
        return 1
    for i, arg in enumerate(args):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(args) and args[i + 1].isdigit():
                return int(args[i + 1])
            if arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
                return int(value) if value.isdigit() else 1
    return 1


def relaunch_cpu_multiprocess(script_args: list[str], script: str | None = None) -> int | None:
    """Re-launch under torchrun when ``accelerate launch --cpu --num_processes N>1`` started one process.

    Returns the children's exit code, or None when no re-launch is needed.
    """
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    if not use_cpu or "WORLD_SIZE" in os.environ or os.environ.get("HFTL_NO_RELAUNCH"):
        return None
    n = _parent_num_processes()
    if n <= 1:
        return None
    logger.warning("accelerate launch --cpu would start 1 process for --num_processes %d; starting %d CPU ranks "
                   "with torch.distributed.run (gloo) instead", n, n)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HFTL_NO_RELAUNCH="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           script or sys.argv[0], *script_args]
    return subprocess.call(cmd, env=env)
