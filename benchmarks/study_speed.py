"""Study wall time: the work a study saves (features once per study, no fold checkpoints) and study.workers.

The study of issue 17: MiniLM on short support tickets of 4 topics (benchmarks/quality_data.py), arms
scratch / linear_probe / finetune, k folds, no search, a fixed number of epochs. Variants, each in a
fresh output folder and a fresh feature cache, one after another in this run:

- ``before``: what a study did before this change: each fold computed its own frozen features and
  wrote a checkpoint at every epoch end (re-enabled here by patching, for the comparison only);
- ``serial``: today's defaults (study.workers=1);
- ``workers=N``: the same study with N workers, each on its share of the cores.

Every variant should give the same fold metrics (the largest difference is printed); the printed ratios are wall times against
``before`` and ``serial``. Run it on a quiet machine: other jobs on the cores skew the workers' ratio.

    python benchmarks/study_speed.py                 # 400 tickets, 5 folds, 3 epochs (~30 min on 2 cores)
    python benchmarks/study_speed.py --quick         # 120 tickets, 2 folds, 1 epoch (~3 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _common as C
import quality_data as D


def run_variant(name: str, train: Path, args, workers: int) -> tuple[float, dict]:
    import os

    from hftl.demo import text_model_dir
    from hftl.study import run_study
    from hftl.study.runner import _Study
    from hftl.tasks.base import Task

    out = C.SCRATCH / f"study-{name}"
    os.environ["HFTL_CACHE"] = str(C.SCRATCH / f"cache-{name}")  # no variant reads another's features
    cfg = {"base": {"task": "text_classification", "model": {"id": str(text_model_dir())},
                    "data": {"id": str(train)}, "train": {"epochs": args.epochs, "progress": False}},
           "study": {"arms": ["scratch", "linear_probe", "finetune"], "folds": args.folds, "search": False,
                     "workers": workers, "output_dir": str(out)}}
    patched = []
    if name == "before":  # the old behaviour, for this comparison only
        fold_config = _Study.fold_config

        def with_checkpoints(self, *a, **k):
            c = fold_config(self, *a, **k)
            c.train.save_checkpoints = True
            return c

        patched = [(_Study, "fold_config", fold_config), (Task, "features_per_example", True)]
        _Study.fold_config = with_checkpoints
        Task.features_per_example = False
    try:
        started = time.perf_counter()
        run_study(cfg)
        seconds = time.perf_counter() - started
    finally:
        for owner, attr, value in patched:
            setattr(owner, attr, value)
    runs = json.loads((out / "study.json").read_text())["runs"]
    return seconds, {(r["arm"], r["fold"]): r["metrics"]["accuracy"] for r in runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="120 tickets, 2 folds, 1 epoch")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", default="before,serial,workers", help="which variants to run")
    args = parser.parse_args()
    args.folds = args.folds or (2 if args.quick else 5)
    args.epochs = args.epochs or (1 if args.quick else 3)
    per_topic = 30 if args.quick else 100
    train, _ = D.tickets(C.SCRATCH / "data", per_topic=per_topic, per_class_train=per_topic)
    C.header("study wall time: features once per study, no fold checkpoints, study.workers (issue 17)",
             f"{4 * per_topic} tickets, 3 arms x {args.folds} folds, {args.epochs} epochs, no search")
    results = {}
    for variant in args.variants.split(","):
        workers = args.workers if variant == "workers" else 1
        name = f"workers={workers}" if variant == "workers" else variant
        seconds, metrics = run_variant(variant, train, args, workers)
        results[name] = (seconds, metrics)
        print(json.dumps({"variant": name, "seconds": round(seconds, 1)}), flush=True)
    first = next(iter(results.values()))[1]
    # Not always bit-identical: one worker's torch uses fewer threads (another summation order), and "before"
    # pads each split's texts on their own; the probes and fine-tunes should agree to within noise.
    diff = max(abs(m[key] - first[key]) for _, m in results.values() for key in first)
    print("\n| variant | wall time (s) | vs before | vs serial |\n|---|---|---|---|")
    for name, (seconds, _) in results.items():
        vs_before = f"{seconds / results['before'][0]:.2f}x" if "before" in results else ""
        vs_serial = f"{seconds / results['serial'][0]:.2f}x" if "serial" in results else ""
        print(f"| {name} | {seconds:.0f} | {vs_before} | {vs_serial} |")
    print(f"\nlargest difference of a fold's accuracy between variants: {diff:.4f}")
    C.footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
