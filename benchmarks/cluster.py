"""Unsupervised transfer (issue 13, item 3): does a self-supervised encoder cluster unlabelled images better than
the same network with random weights, or the raw pixels?

1. Source, unsupervised: a tiny SimCLR ResNet (``timm:test_resnet``, ``task: simclr``) and a tiny MAE ViT
   (``task: masked_image``, from random weights) each pretrained on the *images* of scikit-learn's digits 0-4
   (labels never read), apart from a held-out target set.
2. Target, unsupervised: ``hftl.cluster.cluster`` runs k-means (k = 5, scikit-learn, n_init 10) on each
   frozen encoder's L2-normalised features of (a) 250 held-out digits 0-4 (the source's kind of image) and
   (b) 250 digits 5-9 (classes the source never saw), and of the baselines: the same architecture with
   random weights, and the pixels the encoder reads (32x32x3, flattened).
3. Scores against the held-back labels: NMI, ARI, matched accuracy; the mean (and range) over pretraining
   seeds (each seed also draws the random-init network and k-means' starts).

Usage: python benchmarks/cluster.py [--seeds 2] [--simclr-epochs 30] [--mae-epochs 40] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _common as C
import numpy as np

import hftl
from hftl.cluster import cluster

PER_CLASS = 50  # target images per class
MAE = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
           intermediate_size=128, decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
           decoder_intermediate_size=128)
COMMON = ["data.image_size=32", "train.global_batch_size=64", "train.per_device_batch_size=64", "train.progress=false"]


def write_digits(root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """(flat pool folder of digits 0-4, target folder of held-out 0-4, target folder of 5-9), as 8-px PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pool, same, new = root / "pool_0_4", root / "target_0_4", root / "target_5_9"
    pool.mkdir(parents=True)
    seen: dict = {}
    for i in np.random.default_rng(seed).permutation(len(digits.images)):
        y = int(digits.target[i])
        image = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L")
        if seen.get(y, 0) < PER_CLASS:  # the first 50 of each class: a target image
            folder = (same if y < 5 else new) / str(y)
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
        elif y < 5:
            image.save(pool / f"{i}.png")
        seen[y] = seen.get(y, 0) + 1
    return pool, same, new


def pretrain(root: Path, pool: Path, seed: int, simclr_epochs: int, mae_epochs: int) -> dict:
    """The two self-supervised sources of one seed, with their seconds and held-out losses."""
    from transformers import ViTMAEConfig

    out: dict = {}
    with C.Timer() as t:
        result = hftl.train(None, ["task=simclr", "model.id=timm:test_resnet", f"data.id={pool}", *COMMON,
                                   f"train.epochs={simclr_epochs}", "train.lr=0.003", "train.warmup_ratio=0.0",
                                   "train.patience=0", f"train.seed={seed}", f"output_dir={root / f'simclr_s{seed}'}"])
    out["SimCLR ResNet"] = (result.output_dir, t.seconds, result.history)
    config = root / "vit_mae_config"
    ViTMAEConfig(**MAE).save_pretrained(config)  # a config alone: strategy scratch, random weights
    with C.Timer() as t:
        result = hftl.train(None, ["task=masked_image", f"model.id={config}", "strategy.name=scratch",
                                   f"data.id={pool}", *COMMON, "data.augment=false", "train.patience=0",
                                   f"train.epochs={mae_epochs}", "train.lr=0.0015", "train.weight_decay=0.05",
                                   "train.warmup_ratio=0.05", f"train.seed={seed}",
                                   f"output_dir={root / f'mae_s{seed}'}"])
    out["MAE ViT"] = (result.output_dir, t.seconds, result.history)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="pretraining seeds")
    parser.add_argument("--simclr-epochs", type=int, default=30)
    parser.add_argument("--mae-epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs each, 1 seed")
    C.add_threads_option(parser)
    args = parser.parse_args()
    C.apply_threads(args)
    if args.quick:
        args.seeds, args.simclr_epochs, args.mae_epochs = 1, 2, 2
    root = C.SCRATCH / "cluster"
    pool, same, new = write_digits(root)
    n_pool = len(list(pool.iterdir()))
    C.header("unsupervised transfer: self-supervised encoders -> k-means on unlabelled digits (issue 13, item 3)",
             f"SimCLR timm:test_resnet ({args.simclr_epochs} epochs), MAE ViT {MAE} ({args.mae_epochs} epochs, "
             f"resized only); {n_pool} unlabelled pool images of digits 0-4; targets: {PER_CLASS * 5} held-out "
             f"digits 0-4 and {PER_CLASS * 5} digits 5-9, k = 5; {args.seeds} pretraining seeds")
    started = time.perf_counter()
    scores: dict = {}  # (target, representation) -> {metric: [values over seeds]}
    targets = (("digits 0-4 (held out)", same), ("digits 5-9 (unseen classes)", new))
    for seed in range(args.seeds):
        sources = pretrain(root, pool, seed, args.simclr_epochs, args.mae_epochs)
        for name, (_, seconds, history) in sources.items():
            print(f"seed {seed} {name}: pretrained in {seconds:.0f} s; held-out loss {history[0]['loss']:.4f} -> "
                  f"{history[-1]['loss']:.4f} ({len(history)} epochs)", flush=True)
        for target, data in targets:
            for name, (folder, _, _) in sources.items():
                baselines = ["random_init", "pixels"] if name == "SimCLR ResNet" else ["random_init"]
                report = cluster(str(folder), str(data), k=5, overrides=["data.image_size=32"], baselines=baselines,
                                 seed=seed)
                labels = {"model": name, "random_init": f"{name}, random init", "pixels": "pixels (32x32x3)"}
                for row in report["rows"]:
                    key = (target, labels[row["name"]])
                    for metric in ("nmi", "ari", "matched_accuracy"):
                        scores.setdefault(key, {}).setdefault(metric, []).append(row[metric])
                    print(f"seed {seed} {target:<28} {labels[row['name']]:<28} NMI {row['nmi']:.3f}  ARI "
                          f"{row['ari']:.3f}  matched accuracy {row['matched_accuracy']:.3f}", flush=True)
    print()
    print(f"## k-means (k = 5) on frozen features; mean over {args.seeds} pretraining seeds (range)")
    for target, _ in targets:
        print(f"\n### {target}\n")
        print("| representation | NMI | ARI | matched accuracy |")
        print("|---|---|---|---|")
        for (t, rep), metrics in scores.items():
            if t != target:
                continue
            cells = [f"{statistics.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in metrics.values()]
            print(f"| {rep} | " + " | ".join(cells) + " |")
    print()
    for target, _ in targets:
        for name in ("SimCLR ResNet", "MAE ViT"):
            gain = statistics.mean(scores[(target, name)]["nmi"]) - \
                statistics.mean(scores[(target, f"{name}, random init")]["nmi"])
            vs_pixels = statistics.mean(scores[(target, name)]["nmi"]) - \
                statistics.mean(scores[(target, "pixels (32x32x3)")]["nmi"])
            print(f"{target}: {name} NMI minus random init {gain:+.3f}, minus pixels {vs_pixels:+.3f}")
    print(f"\ntotal: {time.perf_counter() - started:.0f} s")
    C.footer()


if __name__ == "__main__":
    main()
