"""The one training loop, on Accelerate: every recipe and every strategy trains through it.

It runs unchanged on a CPU, a GPU or many processes (``accelerate launch``/``torchrun``) and does:
gradient accumulation derived from the global batch size, clipping, warmup + cosine/linear
schedule counted in optimizer steps, evaluation each epoch, atomic checkpoints every N steps and
exact resume (both in :mod:`hftl.checkpoint`), a guard that stops on a NaN/inf loss before the
weights are touched, trackers, a progress bar and a JSONL log.

(Over 500 lines: it is the one loop, and its parts (resume, early stopping, the checks for bad values,
evaluation) share its state; split into modules, the loop would have to be read across them.)

Example:
    >>> trainer = Trainer(cfg.train, model, train_ds, eval_ds, output_dir="outputs/run")  # doctest: +SKIP
    >>> metrics = trainer.fit()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from hftl.checkpoint import find_checkpoint, last_checkpoint, load_checkpoint, save_checkpoint
from hftl.config import TrainConfig
from hftl.errors import ConfigError, NonFiniteLossError
from hftl.metrics import LOWER_IS_BETTER, better_beyond_noise, compute_metrics, example_scores, perplexity

logger = logging.getLogger(__name__)
# train.keep_best restores the best epoch only where the validation examples show it better than the last at this
# level (a one-sided sign test): on 16 images no single-image lead is evidence.
KEEP_BEST_P = 0.05


def classification_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Cross-entropy; mean squared error when the head has one output (regression)."""
    labels = batch["labels"]
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def argmax_predictions(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class of each example: what accuracy and F1 compare with the labels."""
    return logits.argmax(-1)


def make_scheduler(optimizer, name: str, warmup_steps: int, total_steps: int):
    """Linear warmup from 0, then cosine/linear decay to 0 or constant; counted in optimizer steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Trains ``model`` (a module mapping a batch dict to logits) with one Accelerate loop.

    Args:
        cfg: the ``train`` section of the config.
        model: ``model(batch) -> logits``.
        train_dataset, eval_dataset: map-style datasets yielding dicts with ``labels``.
        output_dir: where checkpoints, ``log.jsonl`` and tracker logs go.
        strategy: an object with ``param_groups`` and ``on_epoch_start`` (see hftl.methods.strategies).
        loss_fn: ``loss_fn(logits, batch) -> loss``; cross-entropy by default.
        metrics: names of shipped metric modules: ``accuracy``/``f1`` on argmax predictions, ``regression``
            (mse, mae, pearson) on the one output, ``perplexity`` (from the loss) for LMs.
        predictions: ``predictions(logits) -> tensor`` compared with ``batch["labels"]`` by the metrics (the
            task's; None: no metric needs predictions).
        score: ``score(metric_names, predictions, references) -> dict`` (default: hftl.metrics.compute_metrics;
            multi-task runs score each task's column).
        collate_fn: batches examples (default: torch's).
        num_workers: data-loading worker processes.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_dataset, eval_dataset, *,
                 output_dir: str | Path, strategy=None, loss_fn: Callable = classification_loss,
                 metrics: tuple[str, ...] = ("accuracy", "f1"), predictions: Callable | None = argmax_predictions,
                 score: Callable | None = None, collate_fn: Callable | None = None,
                 num_workers: int = 0, run_config: dict | None = None):
        self.cfg = cfg
        self.model = model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.output_dir = Path(output_dir)
        self.strategy = strategy
        self.loss_fn = loss_fn
        self.metrics = metrics
        self.predictions = predictions
        self.score = score or compute_metrics
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.run_config = run_config or {}
        self.history: list[dict] = []
        self.global_step = 0
        self._log_file = None  # log.jsonl, opened once per fit
        self.precision, self.precision_reason = cfg.mixed_precision, ""  # resolved when the Accelerator is built

    # ------------------------------------------------------------------------------ set-up
    def _accelerator(self):
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        from hftl.precision import resolve_for_ranks, run_device

        cfg = self.cfg
        # auto: bf16 where it is supported (CUDA) or measured faster (CPU), else fp32; fp16 refused on a CPU.
        self.precision, self.precision_reason = resolve_for_ranks(cfg.mixed_precision, run_device(cfg.cpu), cfg.cpu)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_step = cfg.per_device_batch_size * world
        if cfg.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size ({cfg.global_batch_size}) must be a multiple of per_device_batch_size x "
                f"processes ({cfg.per_device_batch_size} x {world} = {per_step})."
            )
        self.grad_accum = cfg.global_batch_size // per_step
        tracker = None if cfg.tracker == "none" else cfg.tracker
        if tracker and not _installed(TRACKER_PACKAGES[tracker][0]):  # Accelerate would only warn and track nothing
            raise ConfigError(f"train.tracker={tracker}, but {tracker} is not installed: pip install "
                              f"{TRACKER_PACKAGES[tracker][1]}, or set train.tracker=none.")
        # Accelerate keeps one process-wide state; a notebook that trains in fp32 and then in bf16 would
        # otherwise fail. The process group (PartialState) is kept.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        return Accelerator(
            cpu=cfg.cpu,
            mixed_precision=self.precision,
            gradient_accumulation_steps=self.grad_accum,
            log_with=tracker,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            # A seedable sampler makes each epoch's order a function of (seed, epoch): exact resume.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            # Models that skip parameters at random in training (wav2vec2's LayerDrop, SpecAugment's mask
            # embedding) need DDP to look for unused ones, or the ranks' gradient all-reduces fall out of step.
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=bool(getattr(self.model, "ddp_find_unused_parameters", False)))],
        )

    def _loader(self, dataset, shuffle: bool):
        generator = torch.Generator().manual_seed(self.cfg.seed)  # keeps the global RNG out of data loading
        # A last training batch of one example crashes BatchNorm ("Expected more than 1 value per channel").
        lone = shuffle and len(dataset) > 1 and len(dataset) % self.cfg.per_device_batch_size == 1
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.cfg.per_device_batch_size, shuffle=shuffle, collate_fn=self.collate_fn,
            num_workers=self.num_workers, generator=generator, drop_last=lone,
        )

    # ------------------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train for ``cfg.epochs`` epochs (null: enough for ``cfg.min_steps``); returns the kept epoch's metrics.

        The kept epoch is the last, or with ``cfg.keep_best`` the best by ``cfg.metric`` where it beats the last
        beyond the validation split's noise (:meth:`_kept_index`); ``cfg.patience`` epochs without a better one
        stop the run. ``epochs=0`` trains nothing and evaluates the model as given
        (a solved linear probe), so its metrics come from the same code as any run's.
        """
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        cfg = self.cfg
        acc = self._accelerator()
        self.accelerator = acc
        set_seed(cfg.seed)
        self.history, self.global_step = [], 0  # each fit trains cfg.epochs afresh (resume restores both)
        self._best_state, self.kept_epoch, self.best_epoch = None, None, None
        # Per-example validation scores of the best and the latest epoch (hftl.metrics.example_scores), and the
        # sign test's p-value between them: what decides whether the best epoch's weights are worth keeping.
        self._best_scores, self._scores, self.kept_p = None, None, None
        # A model trained before (by an earlier fit) still carries Accelerate's marks: prepare() would skip it.
        self.model = _release(self.model)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = self.strategy.param_groups(self.model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_scale) \
            if self.strategy else [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        # Fused AdamW (one kernel over all tensors): ~10x faster steps on CPU than the per-tensor loop.
        fused = all(p.is_floating_point() for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        train_dl = self._loader(self.train_dataset, shuffle=True)
        eval_dl = self._loader(self.eval_dataset, shuffle=False)
        model, optimizer, train_dl, eval_dl = acc.prepare(self.model, optimizer, train_dl, eval_dl)
        self._prepared = model
        stepper = _plain_optimizer(acc, optimizer)
        if cfg.compile:
            model = torch.compile(model)
        steps_per_epoch = math.ceil(len(train_dl) / self.grad_accum)
        # Small data sets get more passes: a budget in steps (200 examples in batches of 32: 7 steps an epoch).
        self.epochs = cfg.epochs if cfg.epochs is not None else max(3, math.ceil(cfg.min_steps / steps_per_epoch))
        total_steps = steps_per_epoch * self.epochs
        # Stepped by hand once per optimizer step (not prepared): counts are then the same on any world size.
        scheduler = make_scheduler(stepper, cfg.scheduler, int(cfg.warmup_ratio * total_steps), total_steps)
        # The scheduler's state goes into trainer_state.json (Accelerate would pickle it: no pickle is read on resume).
        self._scheduler = scheduler
        self._run_shape = {"global_batch_size": cfg.global_batch_size, "per_device_batch_size": cfg.per_device_batch_size,
                           "world_size": acc.num_processes, "train_examples": len(self.train_dataset),
                           "steps_per_epoch": steps_per_epoch, "epochs": self.epochs}

        start_epoch, skip_batches = 0, 0
        if cfg.resume:
            start_epoch, skip_batches = self._resume(acc, find_checkpoint(self.output_dir, cfg.resume))
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if cfg.tracker != "none":
            acc.init_trackers("hftl", config=_flat(self.run_config))
        logger.info("Training %d epochs x %d optimizer steps (accumulation %d, %d process(es))",
                    self.epochs, steps_per_epoch, self.grad_accum, acc.num_processes)

        progress = tqdm(total=total_steps, initial=self.global_step, desc="train", unit="step",
                        disable=not (cfg.progress and acc.is_local_main_process), dynamic_ncols=True)
        started = time.perf_counter()
        try:
            metrics = self._epochs(acc, model, stepper, scheduler, train_dl, eval_dl, start_epoch, skip_batches,
                                   progress)
            self._kept = self._kept_index() if self.history else None
            if not progress.disable and self.history:
                progress.set_postfix_str(self._outcome(), refresh=True)  # what the bar ends on: stop and kept epoch
        finally:
            progress.close()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        self.train_seconds = time.perf_counter() - started
        # The plain module again: no autocast forward or compile wrapper left from this run's settings.
        self.model = _release(model)
        if self.history:
            kept = self._kept
            self.kept_epoch = self.history[kept]["epoch"]
            self.best_epoch = self.history[self._best_index()]["epoch"]
            if kept != len(self.history) - 1 and self._best_state is not None:
                self.model.load_state_dict(self._best_state)  # every rank holds the same copy
                metrics = {k: v for k, v in self.history[kept].items() if k != "epoch"}
                tested = "" if self.kept_p is None else f", better than the last epoch's: sign test p={self.kept_p:.3g}"
                logger.info("Kept epoch %d (best %s %.4g%s)", self.kept_epoch, cfg.metric, metrics.get(cfg.metric),
                            tested)
            elif self.kept_p is not None:
                logger.info("Kept the last epoch: epoch %d's better validation %s is within the noise of %d examples "
                            "(sign test p=%.3g)", self.best_epoch, cfg.metric, len(self._scores), self.kept_p)
        if cfg.channels_last:
            self.model.to(memory_format=torch.contiguous_format)  # what save_pretrained/safetensors expect
        # Each rank's weights, summarised: DDP must leave them identical (recorded in metrics.json).
        total, squares = 0.0, 0.0
        for p in self.model.parameters():  # one parameter at a time: no float64 copy of the whole model
            value = p.detach().double()
            total += value.sum().item()
            squares += (value * value).sum().item()
        summary = torch.tensor([[total, squares]], dtype=torch.float64, device=acc.device)
        self.world_size = acc.num_processes
        self.rank_checksums = acc.gather(summary).cpu().tolist()
        acc.wait_for_everyone()
        acc.end_training()
        return metrics

    def _epochs(self, acc, model, optimizer, scheduler, train_dl, eval_dl, start_epoch: int, skip_batches: int,
                progress) -> dict:
        """The epochs of one fit; returns the last evaluation's metrics."""
        cfg = self.cfg
        metrics: dict = {}
        if self.epochs == 0:  # nothing to train (a solved probe): evaluate the model as it is
            metrics = self.evaluate(model, eval_dl)
            metrics["train_loss"] = self.evaluate(model, acc.prepare(self._loader(self.train_dataset, False)))["loss"]
            self.history.append({"epoch": 0, **metrics})
            self._log(acc, {"step": 0, "epoch": 0, **{f"eval/{k}": v for k, v in metrics.items()}})
            return metrics
        for epoch in range(start_epoch, self.epochs):
            if self._stop_early():  # a resumed run stops where the uninterrupted one did
                break
            if self.strategy:
                self.strategy.on_epoch_start(acc.unwrap_model(model), epoch)
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(epoch)
            train_dl.set_epoch(epoch)
            batches = acc.skip_first_batches(train_dl, skip_batches) if skip_batches else train_dl
            model.train()
            running, seen = 0.0, 0
            for batch_index, batch in enumerate(batches, start=skip_batches):
                if cfg.channels_last:
                    batch = _channels_last(batch)
                with acc.accumulate(model):
                    logits = model(batch)
                    loss = self.loss_fn(logits, batch)
                    running += self._loss_value(acc, loss, epoch)
                    seen += 1
                    acc.backward(loss)
                    if acc.sync_gradients:
                        norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) \
                            if cfg.max_grad_norm else None
                        if norm is not None:
                            self._check_finite(acc, norm, "gradient norm", epoch)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    scheduler.step()
                    self.global_step += 1
                    if not progress.disable:  # set_postfix costs ~25 us even on a disabled bar
                        progress.set_postfix(epoch=epoch, loss=f"{running / seen:.4f}", refresh=False)
                    progress.update(1)
                    self._log(acc, {"step": self.global_step, "epoch": epoch, "loss": running / seen,
                                    "lr": scheduler.get_last_lr()[-1]})
                    if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                        self._save_checkpoint(acc, epoch, batch_index + 1)
            skip_batches = 0
            metrics = self.evaluate(model, eval_dl)
            metrics["train_loss"] = running / max(1, seen)
            self.history.append({"epoch": epoch, **metrics})
            self._log(acc, {"step": self.global_step, "epoch": epoch, **{f"eval/{k}": v for k, v in metrics.items()}})
            if cfg.keep_best and self._best_index() == len(self.history) - 1:  # a new best: keep a copy (CPU)
                self._best_scores = self._scores
                self._best_state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                                    for k, v in acc.unwrap_model(model).state_dict().items()}
            if not cfg.checkpoint_every or epoch == self.epochs - 1 or self._stop_early():
                self._save_checkpoint(acc, epoch + 1, 0)
        if not metrics and self.history:  # resumed from the last checkpoint (a crash in the final save)
            metrics = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        return metrics

    def _outcome(self) -> str:
        """How the fit ended, for the progress display: epochs run, an early stop, the epoch whose weights are kept."""
        cfg = self.cfg
        kept = self._kept
        value = self.history[kept].get(cfg.metric)
        shown = f" ({cfg.metric} {value:.4g})" if isinstance(value, (int, float)) else ""
        stopped = f" of {self.epochs}, stopped early" if len(self.history) < self.epochs else ""
        return (f"{len(self.history)} epochs{stopped}; kept epoch {self.history[kept]['epoch'] + 1}{shown}"
                if self.epochs else f"head solved{shown}")

    def _kept_index(self) -> int:
        """Index in the history of the epoch whose weights the run ends with: the last, unless ``cfg.keep_best``
        and the best epoch beats it beyond the validation split's noise.

        Beyond noise: a one-sided sign test over the validation examples' own scores (McNemar's exact test for
        accuracy) at p < ``KEEP_BEST_P``. On a small split the best epoch is mostly luck, and the last is the one
        the schedule annealed to: a ResNet-18 from scratch on 64 shapes peaked at 16 of 16 validation images at
        epoch 67 (test 0.88), against 15 of 16 for its last epoch (test 0.96; benchmarks/kept_epoch.py). A metric
        with no per-example score (F1, Pearson, mAP, perplexity) keeps the best epoch, as before.
        """
        last, best = len(self.history) - 1, self._best_index()
        self.kept_p = None
        if not self.cfg.keep_best or best == last:
            return last
        if self._best_scores is None or self._scores is None:  # no per-example scores for this metric
            return best
        self.kept_p = better_beyond_noise(self._best_scores, self._scores, self.cfg.metric in LOWER_IS_BETTER)
        return best if self.kept_p < KEEP_BEST_P else last

    def _best_index(self) -> int:
        """Index in the history of the best epoch by ``cfg.metric``; a tie goes to the lower loss, then the earlier."""
        sign = -1.0 if self.cfg.metric in LOWER_IS_BETTER else 1.0

        def key(i: int) -> tuple:
            value = self.history[i].get(self.cfg.metric)
            value = sign * value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf
            loss = self.history[i].get("loss")
            return value, -loss if isinstance(loss, (int, float)) and math.isfinite(loss) else -math.inf, -i

        return max(range(len(self.history)), key=key)

    def _stop_early(self) -> bool:
        """``cfg.patience`` epochs since the best one: a function of the history and the step count alone
        (both restored from a checkpoint), so a resumed run stops where an uninterrupted one would."""
        patience = self.cfg.patience
        if self.cfg.epochs is None and self.global_step < self.cfg.min_steps:
            # min_steps is a floor: a net trained from scratch sits at chance for its first epochs (measured:
            # stopped after 11 epochs of a 67-epoch budget, it kept epoch 0; benchmarks/quality.py, scratch)
            return False
        return bool(patience and self.history and len(self.history) - 1 - self._best_index() >= patience)

    def evaluate_only(self) -> dict:
        """Evaluate the model on the evaluation dataset without training (``hftl eval``): what an epoch reports."""
        acc = self._accelerator()
        self.accelerator = acc
        model = _release(self.model)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model, eval_dl = acc.prepare(model, self._loader(self.eval_dataset, shuffle=False))
        try:
            return self.evaluate(model, eval_dl)
        finally:
            self.model = _release(model)
            if self.cfg.channels_last:
                self.model.to(memory_format=torch.contiguous_format)
            self.model.eval()

    def evaluate(self, model, eval_dl) -> dict:
        """Loss and metrics over the whole evaluation set, gathered from every process."""
        acc = self.accelerator
        model.eval()
        losses, predictions, references = [], [], []
        names = [m for m in self.metrics if m != "perplexity"]  # perplexity comes from the loss
        scored = bool(names) and self.predictions is not None
        with torch.inference_mode():
            for batch in eval_dl:
                if self.cfg.channels_last:
                    batch = _channels_last(batch)
                logits = model(batch)
                loss = self.loss_fn(logits, batch)
                # Scored positions only: padding and unmasked tokens (-100) carry no loss.
                count = (batch["labels"] != -100).sum().reshape(1)
                losses.append(acc.gather_for_metrics((loss.detach().float().reshape(1) * count, count)))
                if scored:
                    preds, refs = acc.gather_for_metrics((self.predictions(logits), batch["labels"]))
                    predictions += preds.cpu().tolist()
                    references += refs.cpu().tolist()
        total = sum(l_[0].sum().item() for l_ in losses)
        n = sum(l_[1].sum().item() for l_ in losses)
        out = {"loss": total / max(1, n)}
        if scored:
            out.update(self.score(names, predictions, references))
            self._scores = example_scores(self.cfg.metric, predictions, references)
        if "perplexity" in self.metrics:
            out["perplexity"] = perplexity(out["loss"])
        model.train()
        return out

    # ------------------------------------------------------------------------------ faults
    def _loss_value(self, acc, loss: torch.Tensor, epoch: int) -> float:
        """The loss as a number for the running mean, after stopping the run if it is NaN/inf anywhere."""
        if acc.num_processes > 1:  # every process must stop together: the check is reduced over all of them
            self._check_finite(acc, loss, "loss", epoch)
            return loss.detach().float().item()
        value = loss.detach().float().item()  # one host sync serves both the guard and the running loss
        if not math.isfinite(value):
            self._stop("loss", epoch)
        return value

    def _check_finite(self, acc, value: torch.Tensor, what: str, epoch: int) -> None:
        if acc.num_processes > 1:
            # A NaN on one process stops all of them (one stopping alone would hang the others' next all-reduce).
            bad = (~torch.isfinite(value.detach().float())).any().float().reshape(1)
            finite = acc.reduce(bad, reduction="sum").item() == 0
        elif value.numel() == 1:  # the gradient norm: one sync, no reduction kernels
            finite = math.isfinite(value.item())
        else:
            finite = bool(torch.isfinite(value.detach()).all())
        if not finite:
            self._stop(what, epoch)

    def _stop(self, what: str, epoch: int) -> NoReturn:
        last = last_checkpoint(self.output_dir)
        kept = f"The last good checkpoint is {last}." if last else "No checkpoint was written yet."
        raise NonFiniteLossError(
            f"The {what} became NaN/inf at optimizer step {self.global_step} (epoch {epoch}); the run stopped "
            f"before the weights were updated. {kept} Lower train.lr, keep train.max_grad_norm set, "
            "or check the data for bad values."
            # bf16 kernels have given NaN gradients where fp32 gave none (a 3x3 stride-2 convolution of a 1x1
            # feature map on an AVX512-BF16 CPU, nondeterministically): name the way out.
            + (f" The run trains in {self.precision} ({self.precision_reason}): train.mixed_precision=no trains "
               "in fp32." if self.precision in ("bf16", "fp16") else "")
        )

    def _save_checkpoint(self, acc, epoch: int, batches_done: int) -> None:
        """Checkpoint the run now (hftl.checkpoint.save_checkpoint), after checking the weights are finite."""
        # Never checkpoint weights that already went bad (a finite loss can precede inf weights).
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in acc.unwrap_model(self._prepared).parameters()])
        self._check_finite(acc, finite.float().log(), "weights", epoch)
        if not self.cfg.save_checkpoints:  # the check above still runs: bad weights stop the run either way
            return
        state = {"global_step": self.global_step, "epoch": epoch, "batches_done": batches_done,
                 "history": self.history, "run": self._run_shape, "scheduler": self._scheduler.state_dict(),
                 "best_scores": self._best_scores}
        save_checkpoint(acc, self.output_dir, state, model=self._prepared, best_state=self._best_state,
                        channels_last=self.cfg.channels_last, keep=self.cfg.keep_checkpoints)

    def _resume(self, acc, path: Path) -> tuple[int, int]:
        """Restore the run from checkpoint ``path`` (verified first); returns (epoch, batches done in it)."""
        state, best_state = load_checkpoint(acc, path, self._run_shape)
        self._scheduler.load_state_dict(state["scheduler"])
        self.global_step = state["global_step"]
        self.history = state.get("history", [])
        if best_state is not None:
            self._best_state = best_state
        self._best_scores = state.get("best_scores")
        logger.info("Resumed from %s (step %d, epoch %d)", path, self.global_step, state["epoch"])
        return state["epoch"], state["batches_done"]

    def _log(self, acc, row: dict) -> None:
        if self.cfg.tracker != "none":
            acc.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if acc.is_main_process:
            if self._log_file is None:  # closed at the end of fit; line-buffered: a killed run keeps every row
                self._log_file = open(self.output_dir / "log.jsonl", "a", buffering=1)
            self._log_file.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")


def evaluate_model(cfg, task, model, dataset, collate=None) -> dict:
    """The Trainer's evaluation of ``model`` on ``dataset`` with run config ``cfg`` and its task, plus ``examples``.

    Example:
        >>> evaluate_model(cfg, get_task_impl(cfg.task), model, eval_ds)["accuracy"]  # doctest: +SKIP
    """
    trainer = Trainer(cfg.train, model, None, dataset, output_dir=cfg.output_dir, loss_fn=task.loss(cfg),
                      metrics=task.metric_modules(), predictions=task.predictions, collate_fn=collate,
                      num_workers=cfg.data.num_workers)
    return {**trainer.evaluate_only(), "examples": len(dataset)}


# tracker -> (module Accelerate imports, what to install)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard (or hftl[tracking])"), "trackio": ("trackio", "trackio")}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _release(model: nn.Module) -> nn.Module:
    """``model`` without what Accelerate attached to it (wrappers, autocast forward, the 'prepared' mark).

    A model that keeps the mark is returned as is by the next ``prepare``: a second fit would then skip
    device placement and keep the first fit's mixed-precision forward.
    """
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_fp32_wrapper=False, keep_torch_compile=False)
    model.__dict__.pop("_is_accelerate_prepared", None)
    return model


def _plain_optimizer(acc, optimizer):
    """The optimizer to step: the wrapped one itself where Accelerate's wrapper adds nothing but cost.

    Without a gradient scaler (fp16) or XLA, ``AcceleratedOptimizer`` only forwards step/zero_grad on
    synchronising steps (the loop steps only then); its step looks up lomo_optim twice (importlib,
    ~0.2 ms) and its zero_grad inspects a signature, on every call.
    """
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.utils import DistributedType

    if type(optimizer) is AcceleratedOptimizer and optimizer.scaler is None \
            and acc.distributed_type != DistributedType.XLA:
        return optimizer.optimizer
    return optimizer


def _channels_last(batch: dict) -> dict:
    return {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4 else v
            for k, v in batch.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
