"""THE run path, whatever the task: seed, the task's hooks, the ways to transfer, the one Trainer, the outputs.

:func:`run` is what ``hftl.train`` calls once the output folder is checked and locked. It reads
like a recipe: the task (hftl.tasks) loads its data, builds its model and datasets and says its
loss and predictions; each way to transfer the config switches on (hftl.methods) changes that
setup; the strategy prepares the model; the Trainer fits it (``train.refit``: then once more,
from the same start, on training + validation examples, for the same epochs, where the first fit
kept its last); :func:`write_outputs` writes the weights in the library's layout, ``hftl.json``,
the resolved config, ``metrics.json`` and the model card, whole or not at all, and pushes when the
config says so. The one evaluation, the Trainer's, is :func:`hftl.trainer.evaluate_model`
(``hftl eval`` and the methods call it).

Example:
    >>> result = run(load_config("recipes/configs/image_classification/resnet18_linear_probe.yaml"))  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hftl.config import Config, redact_secrets, to_yaml
from hftl.data import LabelledData
from hftl.model import is_peft, save_output

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: where, its final metrics and its per-epoch history."""

    output_dir: Path
    metrics: dict
    history: list = field(default_factory=list)


def run(cfg: Config, data: LabelledData | None = None, extra_card_info: dict | None = None) -> TrainResult:
    """Train as ``cfg`` says (``data`` replaces loading ``cfg.data``: a study's folds); returns the result.

    The caller (``hftl.train``) has checked and locked the output folder.
    """
    from hftl.chain import chain_card_info
    from hftl.methods import active_methods
    from hftl.tasks import get_task_impl

    task = get_task_impl(cfg.task)
    task.spec.check_strategy(cfg.strategy.name)  # config checks it too; a Config built in code may not be
    methods = active_methods(cfg)
    card_info = chain_card_info(cfg, extra_card_info) or {}  # started from an hftl output: the card records the chain
    data = data or task.load_data(cfg)
    setup, trainer, metrics, facts = fit(cfg, task, data, methods, card_info)
    refit = None
    if refit_applies(cfg, task, data, methods, trainer):
        setup, refit = refit_on_all(cfg, task, data, methods, card_info, trainer)
    if trainer.accelerator.is_main_process:
        write_outputs(cfg, setup.model, setup.ref, data, setup.strategy, trainer, metrics,
                      {**facts, **setup.card_info}, methods, refit)
    return TrainResult(Path(cfg.output_dir), metrics, trainer.history)


def fit(cfg: Config, task, data: LabelledData, methods, card_info: dict):
    """Build the model and its datasets, let the strategy and the methods prepare them, and train: (setup,
    trainer, metrics, the card's facts of the data). ``cfg.train``'s unset rates are resolved here, for how the
    model starts."""
    from hftl.methods import Setup
    from hftl.methods.strategies import check_base, get_strategy
    from hftl.trainer import Trainer

    torch.manual_seed(cfg.train.seed)
    model, ref = task.build_model(cfg, data)
    from_scratch = random_init(cfg, ref)
    if cfg.train.backbone_lr_scale is None:  # the network's split goes with its own rate; a rate one sets is for all
        cfg.train.backbone_lr_scale = model.default_backbone_lr_scale(from_scratch) if cfg.train.lr is None else 1.0
    if cfg.train.lr is None:  # the network knows the rate that suits it, from random weights or not
        cfg.train.lr = model.default_lr(from_scratch=from_scratch)
    check_base(cfg, model, ref)
    train_ds, eval_ds, collate = task.datasets(cfg, model, data)
    setup = Setup(cfg, task, data, model, ref, train_ds, eval_ds, collate, task.loss(cfg), task.predictions,
                  strategy=get_strategy(cfg.strategy), train_cfg=cfg.train, card_info=dict(card_info))
    for method in methods:
        method.before_strategy(setup)
    setup.model = setup.trained = setup.strategy.prepare(setup.model)
    for method in methods:
        method.after_strategy(setup)
    trainer = Trainer(setup.train_cfg, setup.trained, setup.train_ds, setup.eval_ds, output_dir=cfg.output_dir,
                      strategy=setup.strategy, loss_fn=setup.loss_fn, metrics=task.metric_modules(),
                      predictions=setup.predictions, score=setup.score, collate_fn=setup.collate,
                      num_workers=cfg.data.num_workers, run_config=cfg.to_dict())
    metrics = trainer.fit()
    for method in methods:
        metrics.update(method.after_fit(setup, trainer) or {})  # what a method measured on the model as saved
    facts = task.card_facts(cfg, setup.model, data, train_ds, eval_ds) if trainer.accelerator.is_main_process else {}
    return setup, trainer, metrics, facts


def refit_applies(cfg: Config, task, data: LabelledData, methods, trainer) -> bool:
    """Whether ``train.refit`` trains the model again on training + validation examples.

    Only where the same procedure on more labels can be trusted to do at least as well, with nothing left to
    check it on: a classifier or regressor (one label per example), whose first fit ran its whole schedule and
    kept its last epoch; a validation split hftl held out itself (one the data or a study's fold gave is never
    trained on); a strategy that trains (a solved probe refits by ``strategy.probe_refit``); and no other way to
    transfer (their validation-based steps, such as multi-label thresholds, would be chosen on examples trained on).
    A kept earlier epoch, or a run stopped early, was chosen on the validation split, and a refit cannot repeat
    that choice: on weather temperatures (kept epoch 21 of 80, better than the last at p = 0.0003) a refit for 21
    epochs lost R^2 0.971 -> 0.957 annealed over them, and -> 0.938 on the first fit's schedule.
    """
    if not (cfg.train.refit and data.carved and trainer.history and trainer.epochs):
        return False
    if not (task.spec.classification or task.spec.regression):  # one label per example (multi-label is neither)
        return False
    others = [m.name for m in methods if m.name != "feature_cache"]
    if others:
        logger.info("train.refit: not with %s; the model saved is the one trained on the training split",
                    ", ".join(others))
        return False
    if trainer.kept_epoch != trainer.epochs - 1:
        logger.info("train.refit: not this time: the kept epoch (%d of %d) was chosen on the validation split, which "
                    "a refit on it could not repeat; the model saved is the first fit's", trainer.kept_epoch + 1,
                    trainer.epochs)
        return False
    return True


def refit_on_all(cfg: Config, task, data: LabelledData, methods, card_info: dict, first) -> tuple:
    """Train again from the same start on training + validation examples, for the first fit's epochs (Goodfellow
    et al. 2016, section 7.8, by passes): every label is learned from. Returns the refit's setup and what
    metrics.json and the card say of it."""
    import copy

    from hftl.data import merged_for_refit

    again = copy.deepcopy(cfg)
    # A fixed budget, no validation-based choice (the validation examples are trained on), no checkpoints
    # (train.resume=latest resumes the first fit, which ended: the refit then runs again), no second tracker run.
    again.train.epochs, again.train.patience, again.train.keep_best = first.epochs, 0, False
    again.train.save_checkpoints, again.train.resume, again.train.tracker = False, None, "none"
    again.output_dir = str(Path(cfg.output_dir) / "refit")  # its own log.jsonl
    merged = merged_for_refit(data)
    setup, trainer, _, _ = fit(again, task, merged, methods, card_info)
    logger.info("train.refit: trained again on all %d training + validation examples for %d epochs; the reported "
                "metrics are the first fit's, on the %d held-out ones", len(merged.train), first.epochs,
                len(data.validation))
    first.rank_checksums = trainer.rank_checksums  # the saved weights are the refit's
    return setup, {"examples": len(merged.train), "epochs": first.epochs,
                   "train_seconds": round(trainer.train_seconds, 2)}


def random_init(cfg: Config, ref) -> bool:
    """Whether the weights start random: strategy scratch, or an architecture with nothing loaded into it
    (``timm:resnet18`` with no ``model.init_from``, or ``model.pretrained: false``)."""
    loaded = (ref.source != "arch" and cfg.model.pretrained) or bool(cfg.model.init_from)
    return cfg.strategy.name == "scratch" or not loaded


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated (CUDA), in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:  # Linux: this process's own high-water mark (ru_maxrss carries a larger parent's over fork and exec)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def best_epoch(history: list[dict], metric: str, epoch: int | None = None) -> dict | None:
    """The epoch with the best ``metric`` (lowest for losses, errors and perplexity), or None if never measured.

    ``epoch``: the trainer's own best (``Trainer.best_epoch``, whose ties go to the lower loss), so metrics.json
    and the card name the same epoch; without it, the first best."""
    from hftl.metrics import LOWER_IS_BETTER

    scored = [h for h in history if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    best = next((h for h in scored if h["epoch"] == epoch), None) or pick(scored, key=lambda h: h[metric])
    return {"epoch": best["epoch"], "metric": metric, "value": best[metric]}


def write_outputs(cfg: Config, model, ref, data: LabelledData, strategy, trainer, metrics: dict,
                  extra_info: dict | None = None, methods=(), refit: dict | None = None) -> None:
    """Weights in the library's layout, hftl.json, the resolved config, metrics.json and the model card.

    ``extra_info`` holds the card's facts the task and the ways to transfer give (sizes, classes,
    a teacher, a chain of runs); ``refit``: what ``train.refit`` trained the saved weights on (``trainer`` is
    the first fit's, whose validation scores are reported).

    A full disk or a read-only folder is one line that says the run can be finished from its last
    checkpoint (``train.resume=latest`` writes the outputs again without training).
    """
    import os
    import shutil

    from hftl.errors import HubError, OutputError

    final = Path(cfg.output_dir)
    # Written whole into a hidden folder first, then renamed into place file by file (hftl.json, metrics.json
    # and the card last): a crash never leaves a half-written model that looks finished.
    staging = final / f".tmp-outputs-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_outputs(cfg, model, ref, data, strategy, trainer, metrics, extra_info, methods, staging, final.name,
                       refit)
        _move_into_place(staging, final)
    except (HubError, OutputError):
        raise
    except OSError as e:
        raise OutputError(f"The trained model could not be written to '{cfg.output_dir}' ({e.strerror or e}). Free disk "
                          "space or make the folder writable, then run again with train.resume=latest: it writes "
                          "the outputs from the last checkpoint without training again.") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if cfg.hub.push:
        from hftl.hub import push

        push(final, cfg.hub.repo_id, private=cfg.hub.private, revision=cfg.hub.revision)


FINISHING_FILES = ("metrics.json", "README.md", "hftl.json")  # moved last: their presence says the run finished


def _move_into_place(staging: Path, final: Path) -> None:
    import os
    import shutil

    entries = sorted(staging.iterdir(), key=lambda p: (p.name in FINISHING_FILES, FINISHING_FILES.index(p.name)
                                                       if p.name in FINISHING_FILES else 0, p.name))
    for entry in entries:
        target = final / entry.name
        if entry.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def _write_outputs(cfg: Config, model, ref, data: LabelledData, strategy, trainer, metrics: dict,
                   extra_info: dict | None, methods, out: Path, name: str, refit: dict | None = None) -> None:
    from hftl.cards import render_card
    from hftl.tasks import get_task_impl

    meta = {
        "task": cfg.task,
        "label_names": data.label_names,
        "base_model": cfg.model.id,
        "base_arch": cfg.model.arch,  # the architecture of a state_dict base (an adapter's reload rebuilds it)
        "base_revision": cfg.model.revision,
        # The commit the revision resolved to: reloading an adapter rebuilds exactly this base.
        "base_commit": ref.path.name if ref.source == "hub" and ref.path is not None else None,
        "base_source": ref.source,
        "base_pretrained": ref.source != "arch" and cfg.model.pretrained and cfg.strategy.name != "scratch",
        # A token given as a kwarg is never written.
        "model_kwargs": redact_secrets(get_task_impl(cfg.task).model_kwargs(cfg)),
        "strategy": cfg.strategy.name,
        "library": model.library,
        "init_from": {"id": cfg.model.init_from, "revision": cfg.model.init_from_revision} if cfg.model.init_from
        else None,
    }
    save_output(model, out, meta, merge_lora=cfg.strategy.merge_lora)
    (out / "hftl_config.yaml").write_text(to_yaml(cfg))
    probe = getattr(strategy, "probe", None)
    record = {"final": metrics, "best": best_epoch(trainer.history, cfg.train.metric, trainer.best_epoch),
              # The epoch whose weights were saved (train.keep_best: the best by train.metric where it beats the
              # last beyond noise, else the last), the sign test's p-value between the two, and how long it ran.
              "kept_epoch": trainer.kept_epoch, "kept_p": trainer.kept_p,
              "epochs_run": len(trainer.history), "epochs_planned": trainer.epochs,
              "lr": cfg.train.lr,  # the peak rate used (train.lr null: the network's default for how it starts)
              "backbone_lr_scale": cfg.train.backbone_lr_scale,  # the backbone's rate / the head's, as resolved
              "probe": probe, "history": trainer.history,
              # train.refit: the saved weights were trained again on training + validation examples.
              "refit": refit,
              "train_seconds": round(trainer.train_seconds, 2),
              "skipped_examples": data.skipped, "world_size": trainer.world_size,
              "rank_weight_checksums": trainer.rank_checksums,
              # What train.mixed_precision resolved to on this machine, and why (auto: probed or supported).
              "precision": {"requested": cfg.train.mixed_precision, "used": trainer.precision,
                            "reason": trainer.precision_reason}}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    if meta["base_pretrained"]:
        started_from = f"`{ref.describe()}`"
    elif not random_init(cfg, ref):  # an architecture given the weights of model.init_from
        started_from = f"`{cfg.model.id}` (weights from `{cfg.model.init_from}`)"
    else:  # describe() already says so for a bare architecture
        started_from = f"`{ref.describe()}`" + ("" if ref.source == "arch" else " (architecture only, random init)")
    info = {
        **meta,
        "model_name": name,
        "summary": f"{model.library} model transferred from {started_from} to {data.source} with "
                   f"strategy `{cfg.strategy.name}`, trained with hftl.",
        "base_model_line": started_from,
        # Weights transferred by model.init_from are someone's trained weights too: their license is not ours to set.
        "base_pretrained": not random_init(cfg, ref),
        "is_adapter": is_peft(model),
        "strategy_info": strategy.describe(model),
        "data": data.source,
        "epochs": trainer.epochs,
        "epochs_run": len(trainer.history),
        "kept_epoch": trainer.kept_epoch,
        "kept_p": trainer.kept_p,
        "best_epoch": trainer.best_epoch,
        "keep_best": cfg.train.keep_best,
        "patience": cfg.train.patience,
        "metric": cfg.train.metric,
        "probe": probe,
        "refit": refit,
        "global_batch_size": cfg.train.global_batch_size,
        "lr": cfg.train.lr,
        "scheduler": cfg.train.scheduler,
        "mixed_precision": trainer.precision_reason or cfg.train.mixed_precision,
        "train_seconds": trainer.train_seconds,
        "peak_memory": f"{peak_memory_mb():.0f} MiB",
        "metrics": {k: v for k, v in metrics.items() if k != "train_loss"},
        "repo_id": cfg.hub.repo_id,
        "weights_from": f"`{cfg.model.init_from or cfg.model.id}`: {model.transfer_report.summary()}"
        if getattr(model, "transfer_report", None) else None,
        **(extra_info or {}),
    }
    render_card(info).save(out / "README.md")
    for method in methods:  # what a way to transfer adds (multi-task: one folder per task)
        method.write_outputs(out, model, meta, {**info, "run_config": cfg.to_dict()})
