"""Running a study's fold trainings at once: a local process pool, or Ray tasks (``study.workers``, ``study.backend``).

Every (arm, budget, fold) of a study is an independent training with its own seed, data and record
file, so they can run in any order, anywhere that sees the study's output folder. Each worker
rebuilds the study's state (pool, folds, sources' keys) once from the config, then runs jobs with
the same code as a serial study (``_Study.run_fold``): the same records, the same resume, and the
same numbers as a serial run with as many threads per training.

- ``local``: a spawn-started process pool; worker *i* gets its own slice of this process's CPU
  cores (``os.sched_setaffinity``, and as many torch threads) and, where CUDA devices are present,
  its own GPU (``CUDA_VISIBLE_DEVICES``, set before torch is imported there).
- ``ray``: one Ray task per job on the instance ``ray.init`` finds (``RAY_ADDRESS``, else a local
  one), asking for its share of CPUs (and a GPU where the cluster has them). The cluster's nodes
  must see ``study.output_dir`` (a shared file system) and have hftl installed.

Example:
    >>> report = run_study(cfg_dict, ["study.workers=2"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from hftl.errors import ConfigError

logger = logging.getLogger(__name__)

_STATE: dict = {}  # per worker process: the study it serves, built on its first job


def plan_slots(workers: int, cores: list[int], gpus: int) -> list[dict]:
    """Each worker's CPU cores (a disjoint slice, at least one) and GPU (round-robin, or None).

    Example:
        >>> plan_slots(2, [0, 1, 2], 0)
        [{'cores': [0, 1], 'gpu': None}, {'cores': [2], 'gpu': None}]
    """
    cores = cores or [0]
    share, extra = divmod(len(cores), workers)
    slots, start = [], 0
    for i in range(workers):
        n = max(1, share + (i < extra))
        picked = cores[start:start + n] if start < len(cores) else [cores[i % len(cores)]]
        start += n
        slots.append({"cores": picked, "gpu": i % gpus if gpus else None})
    return slots


def _init_worker(slots, console: dict) -> None:
    """A pool worker takes its slot: cores and GPU first, before torch is imported in this process."""
    slot = slots.get()
    if slot["gpu"] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot["gpu"])
    threads = len(slot["cores"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, slot["cores"])
        except OSError:  # a core the container does not give us: the thread count still holds
            pass
    import torch

    torch.set_num_threads(threads)
    if console["on"]:  # under the command: the same quiet terminal, and each fold's log file
        from hftl.console import setup_console

        setup_console(console["verbose"])


def _study_for(study_class, cfg, source_keys: dict):
    """This worker's study (built once per study: its pool and folds load from the config, as the parent's did)."""
    key = (str(cfg.output_dir), tuple(sorted(source_keys.items())), tuple(a.name for a in cfg.arms))
    if _STATE.get("key") != key:
        study = study_class(cfg)
        study.source_keys = dict(source_keys)
        study.load_pool()
        _STATE.update(key=key, study=study)
    return _STATE["study"]


def run_job(study_class, cfg, source_keys: dict, job: tuple, threads: int | None = None) -> tuple[tuple, dict, int, int]:
    """One (arm name, budget, fold) of the study: its record, and how many trainings it ran and skipped.

    ``study_class`` is hftl.study.runner's study class (passed in, pickled by name: no import cycle).
    """
    if threads:  # a Ray task: it has its CPUs, but torch would use every core of the node
        import torch

        torch.set_num_threads(threads)
    study = _study_for(study_class, cfg, source_keys)
    arm = next(a for a in study.cfg.arms if a.name == job[0])
    trained, skipped = study.trained, study.skipped
    record = study.run_fold(arm, job[1], job[2])
    return job, record, study.trained - trained, study.skipped - skipped


def run_jobs(study, jobs: list[tuple], on_done: Callable[[tuple, dict], None]) -> dict:
    """Run ``jobs`` ((arm name, budget, fold) each) on the study's backend; returns {job: record}.

    ``on_done(job, record)`` is called in this process as each one finishes (the progress bar).
    """
    backend = _ray_jobs if study.s.backend == "ray" else _pool_jobs
    return backend(study, jobs, on_done)


def _collect(study, results, on_done) -> dict:
    out = {}
    for job, record, trained, skipped in results:
        out[job] = record
        study.trained += trained
        study.skipped += skipped
        on_done(job, record)
    return out


def _pool_jobs(study, jobs: list[tuple], on_done) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    from hftl.console import console_settings

    workers = min(study.s.workers, len(jobs))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started its threads can hang
    plan = plan_slots(workers, cores, gpus)
    slots = ctx.Queue()
    for slot in plan:
        slots.put(slot)
    logger.info("Study: %d workers (%s)", workers, ", ".join(
        f"cores {s['cores']}" + (f", GPU {s['gpu']}" if s["gpu"] is not None else "") for s in plan))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots, console_settings())) as pool:
        futures = [pool.submit(run_job, type(study), study.cfg, study.source_keys, job) for job in jobs]
        try:
            return _collect(study, (f.result() for f in as_completed(futures)), on_done)
        except BaseException:  # one failure (or Ctrl-C) stops the rest; finished folds keep their records
            for f in futures:
                f.cancel()
            raise


def _ray_jobs(study, jobs: list[tuple], on_done) -> dict:
    try:
        import ray
    except ImportError:
        raise ConfigError("study.backend=ray needs Ray: pip install 'hftl[ray]' (or study.backend=local).") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    resources = ray.cluster_resources()
    workers = min(study.s.workers, len(jobs))
    cpus = max(1, int(resources.get("CPU", 1) // workers))
    gpus = 1 if resources.get("GPU", 0) >= workers else 0
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_job)
    pending = {task.remote(type(study), study.cfg, study.source_keys, job, cpus): job for job in jobs}
    out: dict = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as e:  # the task's own error (a ConfigError...), not Ray's wrapper
                raise e.as_instanceof_cause() from None
            pending.pop(done[0])
            out.update(_collect(study, [result], on_done))
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return out
