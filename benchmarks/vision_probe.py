"""Cached linear probe vs recomputing the frozen backbone every epoch (issue 2), on hftl's own path.

Both variants train the same ResNet-18's new head for E epochs on the same digits images, with the
same Trainer settings:

- cached:    ``hftl.methods.feature_cache.cached_features`` for train and validation (cold cache: the backbone
             runs once), then ``hftl.trainer.Trainer`` on ``HeadOnly`` over ``FeatureDataset``: what
             ``hftl.api.train`` does for ``strategy.name=linear_probe`` (cache_features true);
- recompute: ``Trainer`` over the full model prepared by the ``linear_probe`` strategy (backbone
             frozen) on the images: what ``strategy.cache_features=false`` does.

Both include per-epoch evaluation (as the Trainer always does) and one final checkpoint
(``checkpoint_every`` is set past the run so neither writes one per epoch). Neither augments: a
cache holds features of un-augmented images. A third row, ``cached, warm``, reruns the cached
variant with the cache already on disk (the second run of a sweep).

Usage: python benchmarks/vision_probe.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil

# _common first: it sets the offline environment before any Hugging Face import.
import _common as C
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller data and one round (a smoke run)")
    p.add_argument("--rounds", type=int, default=None)
    C.add_threads_option(p)
    args = p.parse_args()
    C.apply_threads(args)
    n_train, n_val, size, batch, epochs = (32, 16, 64, 16, 10) if args.quick else (96, 32, 112, 32, 10)
    rounds = args.rounds or (1 if args.quick else 2)

    from hftl.backbones import create_model
    from hftl.config import DataConfig, StrategyConfig, TrainConfig
    from hftl.data import load_labelled_data
    from hftl.images import ImageDataset
    from hftl.methods.feature_cache import FeatureDataset, HeadOnly, cached_features
    from hftl.methods.strategies import get_strategy
    from hftl.trainer import Trainer

    C.header("Cached linear probe vs recomputing the frozen backbone (vision, hftl path)",
             f"timm resnet18 (random init), {size}x{size} px, builtin:digits {n_train} train / {n_val} validation, "
             f"batch {batch}, {epochs} epochs, fp32, AdamW lr 1e-3; {rounds} round(s), variants alternated")

    data = load_labelled_data(DataConfig(id="builtin:digits", max_train_samples=n_train, max_eval_samples=n_val,
                                         augment=False), "image_classification", seed=0)
    torch.manual_seed(0)
    strategy = get_strategy(StrategyConfig(name="linear_probe"))
    model = strategy.prepare(create_model("timm:resnet18", data.label_names, image_size=size))
    head_state = {k: v.clone() for k, v in model.head.state_dict().items()}
    plain_train = ImageDataset(data.train, model.transform(train=False), 0, random=False)
    eval_ds = ImageDataset(data.validation, model.transform(train=False), 0, random=False)
    cfg = TrainConfig(epochs=epochs, global_batch_size=batch, per_device_batch_size=batch, lr=1e-3,
                      progress=False, checkpoint_every=10**9, seed=0, mixed_precision="no")

    def fresh_head() -> None:
        model.head.load_state_dict(head_state)  # every variant starts from the same head

    def cached(tag: str) -> float:
        fresh_head()
        with C.Timer() as t:
            fingerprint = model.fingerprint()  # hashes every backbone weight: once, not per split
            tr_x, tr_y, _ = cached_features(model, plain_train, data.fingerprint, "train", progress=False, fingerprint=fingerprint)
            va_x, va_y, _ = cached_features(model, eval_ds, data.fingerprint, "validation", progress=False, fingerprint=fingerprint)
            Trainer(cfg, HeadOnly(model.head), FeatureDataset(tr_x, tr_y), FeatureDataset(va_x, va_y),
                    output_dir=C.SCRATCH / f"cached-{tag}", strategy=strategy).fit()
        return t.seconds

    def recompute(tag: str) -> float:
        fresh_head()
        # Accelerate marks a model it prepared and skips it next time: let every fit prepare it afresh.
        model.__dict__.pop("_is_accelerate_prepared", None)
        with C.Timer() as t:
            Trainer(cfg, model, plain_train, eval_ds, output_dir=C.SCRATCH / f"recompute-{tag}",
                    strategy=strategy).fit()
        return t.seconds

    # Warm-up (allocator, oneDNN kernels, imports inside the Trainer), not timed: one short pass of each.
    os.environ["HFTL_CACHE"] = str(C.SCRATCH / "cache-warmup")
    warm_cfg = cfg
    cfg = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    cached("warmup")
    recompute("warmup")
    cfg = warm_cfg

    times: dict[str, list[float]] = {"cached, cold cache": [], "cached, warm cache": [], "recompute": []}
    ratios, warm_ratios = [], []
    for r in range(rounds):
        # Alternate which variant goes first, so a drift in machine load does not favour one.
        order = ("cached", "recompute") if r % 2 == 0 else ("recompute", "cached")
        for variant in order:
            if variant == "cached":
                os.environ["HFTL_CACHE"] = str(C.SCRATCH / f"cache-{r}")  # empty: a cold cache
                times["cached, cold cache"].append(cached(f"cold{r}"))
                times["cached, warm cache"].append(cached(f"warm{r}"))  # same key, now on disk
            else:
                times["recompute"].append(recompute(str(r)))
        ratios.append(times["recompute"][-1] / times["cached, cold cache"][-1])
        warm_ratios.append(times["recompute"][-1] / times["cached, warm cache"][-1])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    print()
    shutil.rmtree(C.SCRATCH, ignore_errors=True)

    table = C.Table(f"Linear probe, {epochs} epochs: wall time (median of {rounds}) and speed-up")
    for name, values in times.items():
        table.add(f"{name}: seconds for {epochs} epochs", f"{C.median(values):.2f}")
    speedup = C.median(ratios)
    table.add("speed-up, cached (cold) vs recompute", f"{speedup:.1f}x", ">= 8x", speedup >= 8)
    table.add("speed-up, cached (warm) vs recompute", f"{C.median(warm_ratios):.1f}x", "(info)")
    # Why the speed-up is what it is: cached = one backbone pass (P) + a fixed cost (F, the warm run:
    # head training, per-epoch evaluation, set-up, checkpoint); recompute = about E passes.
    cold, warm_s, rec = (C.median(times[k]) for k in ("cached, cold cache", "cached, warm cache", "recompute"))
    table.add("  P: one backbone pass over train + validation, s (cold - warm)", f"{cold - warm_s:.2f}", "(info)")
    table.add("  F: fixed cost of the cached run, s (warm)", f"{warm_s:.2f}", "(info)")
    table.add("  projected speed-up with 4x the data: 4 R / (4 P + F)", f"{4 * rec / (4 * (cold - warm_s) + warm_s):.1f}x",
              "(info)")
    table.print()
    C.footer()


if __name__ == "__main__":
    main()
