"""Self-supervised pretraining by inpainting (issue 13, item 1, "Measured"): does a tiny ViT that learnt to
inpaint unlabelled digits classify them better from a few labels than the same ViT from random weights?

1. ``task: masked_image`` pretrains a tiny ViTMAE from random weights (32 px, patch 8, width 64, 4 layers,
   4 heads; decoder width 64, 2 layers) on the images of scikit-learn's digits outside a fixed test set,
   labels unread: mask ratio 0.75, norm_pix_loss, every epoch run (``train.patience=0``; the best held-out
   loss kept). The images are only resized (``data.augment=false``): run_mae.py's crops (20-100% of the
   area) and flips, the task's default, are ``--crops``; on these 8-px digits a crop is a few pixels, and
   with them the held-out loss rose while the training loss fell (``results/masked_image.txt``).
2. A timm ViT of the same shape learns the ten classes from k labelled images per class (drawn from the
   pretraining pool; hftl holds 20% of them out for its validation metric, and refits the solved probe on
   all of them) four ways: a linear probe (solved, L2 by 5-fold CV) and fine-tuning, each from the MAE
   encoder (``model.init_from``) and from random weights (fine-tuning from random weights is strategy
   scratch). Everything else is hftl's defaults.
3. Every model is scored on the same held-out test images, which neither step saw: accuracy, the mean
   (and range) over label draws.

Usage: python benchmarks/masked_image.py [--epochs 60] [--labels 5,20] [--seeds 3] [--crops] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import _common as C
import numpy as np

import hftl

ENCODER = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=128)
DECODER = dict(decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
               decoder_intermediate_size=128)
TIMM_VIT = ["model.id=timm:vit_base_patch16_224", "model.pretrained=false", "data.image_size=32",
            "model.kwargs={embed_dim: 64, depth: 4, num_heads: 4, patch_size: 8, mlp_ratio: 2}"]
TEST_PER_CLASS = 50


def write_digits(root: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """(unlabelled pool folder, labelled test folder, pool file -> label): sklearn's digits as 8-px PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    pool, test, labels, seen = root / "pool", root / "test", {}, {}
    pool.mkdir(parents=True)
    for i in order:
        y = int(digits.target[i])
        image = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L")
        if seen.get(y, 0) < TEST_PER_CLASS:
            (test / str(y)).mkdir(parents=True, exist_ok=True)
            image.save(test / str(y) / f"{i}.png")
        else:
            image.save(pool / f"{i}.png")
            labels[pool / f"{i}.png"] = y
        seen[y] = seen.get(y, 0) + 1
    return pool, test, labels


def labelled_subset(root: Path, labels: dict, per_class: int, seed: int) -> Path:
    """A class-folder copy of ``per_class`` pool images per class, drawn with ``seed``."""
    import shutil

    folder = root / f"train_k{per_class}_s{seed}"
    rng = np.random.default_rng(1000 + seed)
    for y in range(10):
        files = sorted(p for p, label in labels.items() if label == y)
        (folder / str(y)).mkdir(parents=True)
        for p in rng.choice(files, per_class, replace=False):
            shutil.copy(p, folder / str(y) / Path(p).name)
    return folder


def pretrain(root: Path, pool: Path, epochs: int, crops: bool) -> tuple[Path, dict]:
    from transformers import ViTMAEConfig

    source = root / "vit_mae_tiny_config"
    ViTMAEConfig(**ENCODER, **DECODER).save_pretrained(source)  # a config alone: strategy scratch, random weights
    out = root / "mae"
    # --crops: the task's defaults (run_mae.py's crops, early stopping after 10 epochs without a better held-out loss).
    plain = [] if crops else ["data.augment=false", "train.patience=0"]
    hftl.train(None, ["task=masked_image", f"model.id={source}", "strategy.name=scratch", f"data.id={pool}",
                      f"train.epochs={epochs}", "train.global_batch_size=64", "train.per_device_batch_size=64",
                      "train.lr=0.0015", "train.weight_decay=0.05", "train.warmup_ratio=0.05", *plain,
                      "train.progress=false", f"output_dir={out}"])
    return out, json.loads((out / "metrics.json").read_text())


def classify(out: Path, train: Path, test: Path, strategy: str, init_from: Path | None, seed: int) -> float:
    overrides = [*TIMM_VIT, "task=image_classification", f"strategy.name={strategy}", f"data.id={train}",
                 f"train.seed={seed}", "train.progress=false", f"output_dir={out}"]
    if init_from is not None:
        overrides.append(f"model.init_from={init_from}")
    hftl.train(None, overrides)
    return hftl.evaluate(out, [f"data.id={test}"])["accuracy"]


ARMS = (("probe, MAE encoder", "linear_probe", True), ("probe, random init", "linear_probe", False),
        ("fine-tune, MAE encoder", "finetune", True), ("scratch (fine-tune, random init)", "scratch", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="pretraining epochs")
    parser.add_argument("--labels", default="5,20", help="labelled images per class, comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="label draws (and run seeds) per arm")
    parser.add_argument("--crops", action="store_true", help="pretrain with run_mae.py's crops and flips and early "
                                                              "stopping (the task's defaults)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 pretraining epochs, 1 seed, k = 5")
    C.add_threads_option(parser)
    args = parser.parse_args()
    C.apply_threads(args)
    if args.quick:
        args.epochs, args.labels, args.seeds = 2, "5", 1
    ks = [int(k) for k in args.labels.split(",")]
    root = C.SCRATCH / "masked_image"
    pool, test, labels = write_digits(root)
    C.header("masked image modelling (MAE) -> few-label digits (issue 13, item 1)",
             f"ViTMAE {ENCODER} + decoder {DECODER}; {len(labels)} unlabelled pool images, "
             f"{TEST_PER_CLASS * 10} test images; {args.epochs} pretraining epochs "
             f"({'crops and flips, early stopping' if args.crops else 'resized only, every epoch'}); "
             f"k = {ks}, {args.seeds} draws")
    started = time.perf_counter()
    with C.Timer() as t:
        mae, record = pretrain(root, pool, args.epochs, args.crops)
    first, last = record["history"][0], record["history"][-1]
    print(f"pretraining: {t.seconds:.0f} s; held-out loss (norm_pix: predicting the patch mean scores 1.0) "
          f"{first['loss']:.4f} after epoch 1 -> {last['loss']:.4f} after epoch {len(record['history'])}; "
          f"kept epoch {record['kept_epoch'] + 1}; train loss {first['train_loss']:.4f} -> {last['train_loss']:.4f}")
    scores: dict = {}
    for k in ks:
        for seed in range(args.seeds):
            train = labelled_subset(root, labels, k, seed)
            for name, strategy, from_mae in ARMS:
                with C.Timer() as t:
                    acc = classify(root / f"{strategy}_{from_mae}_k{k}_s{seed}", train, test, strategy,
                                   mae if from_mae else None, seed)
                scores.setdefault((k, name), []).append(acc)
                print(f"k={k:>2} seed {seed} {name:<33} accuracy {acc:.3f}  ({t.seconds:.0f} s)", flush=True)
    print()
    print(f"## Test accuracy on {TEST_PER_CLASS * 10} held-out digits (mean over {args.seeds} label draws; range)")
    print()
    print("| labels per class | " + " | ".join(name for name, _, _ in ARMS) + " |")
    print("|---|" + "---|" * len(ARMS))
    for k in ks:
        cells = []
        for name, _, _ in ARMS:
            values = scores[(k, name)]
            cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print()
    for k in ks:
        probe = statistics.mean(scores[(k, ARMS[0][0])]) - statistics.mean(scores[(k, ARMS[1][0])])
        tune = statistics.mean(scores[(k, ARMS[2][0])]) - statistics.mean(scores[(k, ARMS[3][0])])
        print(f"k={k}: MAE minus random init: probe {probe:+.3f}, fine-tune {tune:+.3f}")
    print(f"\ntotal: {time.perf_counter() - started:.0f} s")
    C.footer()


if __name__ == "__main__":
    main()
