"""Audio to visual, measured (issue 13, item 4): do an audio transformer's weights help an image ViT?

Runs ``recipes/configs/study/audio_to_visual.yaml`` as ``hftl study`` does, in a scratch folder:

1. ``hftl.sounds.write_study_inputs`` writes the offline inputs: 6 kinds of synthetic sound as 16 kHz clips
   (60 each), the spectrogram pictures (the AST's log-mel front end, 32x32 gray) of 5 *other* kinds (40
   each), and a config-only tiny AST.
2. The study makes its two sources from random weights: the AST taught the 6 sounds from the audio, and a
   timm ViT of the same shape taught the built-in digits (a visual source).
3. On 5 stratified folds of the 200 pictures it compares a ViT from random weights (scratch) with the ViT
   started from each source (``model.init_from``, converted by hftl.convert), fine-tuned and probed; the
   verdict of each arm is the study's paired t-test over the folds.

It prints what the conversion copied, the sources' own scores, and the study's table.

Usage: python benchmarks/audio_to_visual.py [--folds 5] [--threads 1] [--quick] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import _common as C

YAML = C.REPO / "recipes" / "configs" / "study" / "audio_to_visual.yaml"


def _budget(train) -> str:
    if train.epochs is None:
        return f"train.epochs null (at least {train.min_steps} steps, early stopping patience {train.patience})"
    return f"{train.epochs} epochs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 folds, 2 epochs everywhere")
    parser.add_argument("--work", default=None, help="folder to run in (default: a fresh temporary one); a rerun "
                                                     "in the same folder resumes the study from its records")
    C.add_threads_option(parser)
    args = parser.parse_args()
    C.apply_threads(args)

    import hftl.sounds as sounds
    from hftl.convert import transfer_weights
    from hftl.study import load_study_config, run_study

    work = Path(args.work) if args.work else C.SCRATCH / "audio_to_visual"
    work.mkdir(parents=True, exist_ok=True)
    overrides = [f"study.folds={args.folds}"]
    if args.quick:
        overrides = ["study.folds=2", "base.train.epochs=2"]
    cfg = load_study_config(YAML, overrides)
    if args.quick:
        for source in cfg.pretrain:
            source.config.train.epochs = 2
    C.header("audio to visual: AST weights -> image ViT on spectrogram pictures (issue 13, item 4)",
             f"{YAML.relative_to(C.REPO)}; {len(cfg.arms)} arms x {cfg.study.folds} folds, "
             f"{_budget(cfg.base.train)}, lr {cfg.base.train.lr:g}, ViT {cfg.arms[0].config.model.kwargs} "
             "at 32 px; sources: " + ", ".join(f"{s.name} ({s.config.task}, {s.config.train.epochs} epochs)"
                                              for s in cfg.pretrain))
    os.chdir(work)  # the YAML's paths are relative (outputs/...), as for `hftl study` run from the repository
    started = time.perf_counter()
    inputs = Path("outputs/audio_to_visual/inputs")
    # Written once per folder: rewritten files would change the data's fingerprint, and a rerun would not resume.
    paths = {name: inputs / name for name in ("sounds", "pictures", "ast")} if (inputs / "ast").is_dir() else \
        sounds.write_study_inputs(inputs)
    print(f"inputs: {sum(1 for _ in paths['sounds'].rglob('*.wav'))} clips of {len(sounds.SOURCE_SOUNDS)} sounds "
          f"({', '.join(sounds.SOURCE_SOUNDS)}); {sum(1 for _ in paths['pictures'].rglob('*.png'))} pictures of "
          f"{len(sounds.PICTURE_SOUNDS)} others ({', '.join(sounds.PICTURE_SOUNDS)})", flush=True)
    report = run_study(cfg)
    study = json.loads((report.output_dir / "study.json").read_text())
    print()
    for name, info in study["sources"].items():
        print(f"source {name}: {info['strategy']} on {info['data']} ({info['num_train']} train examples, "
              f"{len(info['classes'])} classes, {info['epochs']} epochs, {info['seconds']:.0f} s); its validation "
              f"accuracy {info['metrics']['accuracy']:.3f}")
    import timm

    for name in ("ast_sounds", "vit_digits"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=5, img_size=32,
                                **cfg.arms[0].config.model.kwargs)
        transfer = transfer_weights(vit, str(report.output_dir / "sources" / name), skip=("head.",))
        print(f"model.init_from {name}: {transfer.summary()}")
        if transfer.converted:
            print("  converted: " + "; ".join(f"{k}: {v}" for k, v in transfer.converted.items()))
    print()
    print(report.summary())
    print()
    print(Path(report.output_dir / "report.md").read_text().split("\n## ")[1].split("\n", 1)[1].strip())
    print(f"\ntotal: {time.perf_counter() - started:.0f} s")
    C.footer()


if __name__ == "__main__":
    main()
