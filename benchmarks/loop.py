"""hftl's training loop vs a bare PyTorch loop vs transformers' Trainer: steady-state throughput (issue 2).

The three loops train the same model from the same initial weights on the same in-memory data,
batch size, optimizer (``torch.optim.AdamW(fused=True)`` as hftl builds it, one parameter group,
lr 1e-3, weight decay 0.01),
schedule (hftl's warmup + cosine ``make_scheduler``), gradient clipping (max norm 1.0), loss
(cross-entropy) and precision (fp32: on CPUs without native bf16, bf16 is the slow choice):

- hftl:         ``hftl.trainer.Trainer.fit`` with its defaults (NaN/inf guard, JSONL log per step,
                Accelerate's prepared model/data loader; without a gradient scaler it steps the
                AdamW itself, not Accelerate's optimizer wrapper), ``progress=False``;
- bare:         ``for batch in DataLoader: forward, loss, backward, clip, step, zero_grad, schedule``;
- transformers: ``transformers.Trainer`` with its extras off (``eval_strategy="no"``,
                ``save_strategy="no"``, ``logging_strategy="no"``, ``report_to="none"``, no tqdm),
                given the same optimizer and scheduler, the model wrapped to return ``{"loss", "logits"}``.

The three loops run in lockstep (``Lockstep``): each in its own thread on its own copy of the
model, one optimizer step at a time in a shuffled order, so only one runs at any moment and step i
of the three runs within the same few seconds. A step is timed from the loop's release to the end
of its optimizer step (hftl: its per-step ``_log``; transformers: ``on_step_end``), so it includes
each loop's own per-step work; set-up and the first ``skip`` steps are not counted, nor is what
follows the last step (hftl's evaluation, checkpoint). Each ratio is the median of the per-step
ratios. (Run one after another instead, the loops met different loads on this shared machine:
per-round ratios of 0.25 to 2.3 for identical work.)

Two workloads: ResNet-18 on 64 px images (the goal's workload: a step is compute-bound), and the
head of a cached linear probe (a 512->10 linear layer on cached features: a step is microseconds
of compute, so this row exposes each loop's fixed per-step overhead). For each workload, every
extra that hftl's loop does per step beyond the bare loop (NaN/inf guards, ``.item()``, the JSONL
row, Accelerate's wrappers and data loader, the progress bar) is then timed on its own, with
hftl's real objects, into an overhead budget; it predicts the ratio without the machine's noise.

With ``--device cuda`` the three loops and their data run on the GPU (each step's end waits for the
GPU); the overhead budget is then left out (it times host-side pieces with CPU objects).

Usage: python benchmarks/loop.py [--quick] [--profile] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

# _common first: it sets the offline environment before any Hugging Face import.
import _common as C
import torch
import torch.nn.functional as F
from torch import nn


class DictData(torch.utils.data.Dataset):
    """In-memory examples as dicts (what hftl's datasets yield)."""

    def __init__(self, key: str, x: torch.Tensor, y: torch.Tensor):
        self.key, self.x, self.y = key, x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {self.key: self.x[i], "labels": self.y[i]}


class ForHFTrainer(nn.Module):
    """transformers.Trainer calls ``model(**batch)`` and reads ``loss``: the same model, wrapped."""

    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, labels=None, **inputs):
        logits = self.model(inputs)
        return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}


def make_optimizer(model: nn.Module, steps: int):
    from hftl.trainer import make_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    # The optimizer hftl's Trainer builds: AdamW, fused (one kernel over all tensors) for float parameters.
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=all(p.is_floating_point() for p in params))
    return opt, make_scheduler(opt, "cosine", int(0.1 * steps), steps)


def run_bare(model, data, batch: int, steps: int, hook=None) -> list[tuple[float, float]]:
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model.to(C.DEVICE)
    opt, sched = make_optimizer(model, steps)
    model.train()
    stamps = []
    for b in loader:
        b = {k: v.to(C.DEVICE, non_blocking=True) for k, v in b.items()}
        logits = model(b)
        loss = F.cross_entropy(logits.float(), b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        stamps.append(C.stamp())
        if hook:
            hook()
    return stamps


def hftl_trainer_class(no_nan_check: bool = False, no_log: bool = False):
    """hftl's Trainer, stamping each optimizer step's end; optionally with one per-step extra removed."""
    from hftl.trainer import Trainer

    class Stamped(Trainer):
        stamps: list[tuple[float, float]]
        hook = None

        def _log(self, acc, row):
            if "loss" in row:  # a training step's row (evaluation rows hold eval/* keys)
                self.stamps.append(C.stamp())
                if self.hook:
                    self.hook()
            if not (no_log and "loss" in row):
                super()._log(acc, row)

        def _check_finite(self, acc, value, what, epoch):
            if not no_nan_check:
                super()._check_finite(acc, value, what, epoch)

        def _loss_value(self, acc, loss, epoch):
            return loss.detach().float().item() if no_nan_check else super()._loss_value(acc, loss, epoch)

    return Stamped


def run_hftl(model, data, eval_data, batch: int, steps: int, out, hook=None, **ablate) -> list[tuple[float, float]]:
    from hftl.config import TrainConfig

    cfg = TrainConfig(epochs=1, global_batch_size=batch, per_device_batch_size=batch, lr=1e-3, weight_decay=0.01,
                      scheduler="cosine", warmup_ratio=0.1, max_grad_norm=1.0, progress=False,
                      checkpoint_every=10**9, seed=0, mixed_precision="no",  # fp32, as the bare loop
                      cpu=C.DEVICE == "cpu")
    trainer = hftl_trainer_class(**ablate)(cfg, model, data, eval_data, output_dir=out, metrics=())
    trainer.stamps = []
    trainer.hook = hook
    trainer.fit()
    return trainer.stamps


def run_transformers(model, key: str, data, batch: int, steps: int, out, hook=None) -> list[tuple[float, float]]:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    stamps: list[tuple[float, float]] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(C.stamp())
            if hook:
                hook()

    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-3,
        weight_decay=0.01, max_grad_norm=1.0, eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=C.DEVICE == "cpu", dataloader_num_workers=0, seed=0, bf16=False,
        dataloader_pin_memory=False, remove_unused_columns=False,
    )
    wrapped = ForHFTrainer(model, key)
    opt, sched = make_optimizer(wrapped, steps)
    trainer = Trainer(model=wrapped, args=args, train_dataset=data, optimizers=(opt, sched), callbacks=[Stamp()])
    trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict; nothing else is logged
    trainer.train()
    return stamps


def workloads(quick: bool):
    from hftl.backbones import create_model
    from hftl.methods.feature_cache import HeadOnly

    labels = [str(i) for i in range(10)]
    g = torch.Generator().manual_seed(0)
    size, batch = 64, 32
    steps = 6 if quick else 28
    torch.manual_seed(0)
    resnet = create_model("timm:resnet18", labels, image_size=size)
    n = steps * batch
    images = DictData("pixel_values", torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))
    eval_images = DictData("pixel_values", images.x[:batch], images.y[:batch])
    head_steps = 60 if quick else 400
    m = head_steps * batch
    head = HeadOnly(nn.Linear(512, 10))
    feats = DictData("features", torch.randn(m, 512, generator=g), torch.randint(0, 10, (m,), generator=g))
    return [
        dict(name=f"ResNet-18, {size} px, batch {batch}", model=resnet, key="pixel_values", data=images,
             eval=eval_images, batch=batch, steps=steps, skip=3),
        dict(name=f"probe head 512->10, batch {batch}", model=head, key="features", data=feats,
             eval=DictData("features", feats.x[:batch], feats.y[:batch]), batch=batch, steps=head_steps, skip=20),
    ]


class Lockstep:
    """Runs several training loops in threads, one optimizer step at a time, in a shuffled order.

    Only one loop runs at any moment (the others wait on an event), so they never compete for the
    cores; and consecutive steps of the different loops are seconds apart, so a change in the
    machine's load hits all of them alike. Each loop calls ``hook`` at the end of every optimizer
    step (the hftl Trainer from ``_log``, transformers' from a callback, the bare loop inline); a
    turn is timed inside the loop's thread, from its release to that hook: one whole step,
    including the loop's own per-step work around it. After its last step a loop waits until all
    have finished, so end-of-training work (evaluation, checkpoint) overlaps no timed step.
    """

    def __init__(self, names: list[str], steps: int, seed: int = 0, timeout: float = 900.0):
        import random
        import threading

        self.names, self.steps, self.timeout = names, steps, timeout
        self.rng = random.Random(seed)
        self.release = {n: threading.Event() for n in names}
        self.done = {n: threading.Event() for n in names}
        self.finish = threading.Event()
        self.turns: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        self.start: dict[str, tuple[float, float]] = {}
        self.errors: list[BaseException] = []

    def _wait(self, event) -> None:
        if not event.wait(self.timeout):
            raise TimeoutError("a benchmarked loop stopped answering")
        event.clear()

    def hook(self, name: str):
        def end_turn() -> None:
            w1, c1 = C.stamp()
            w0, c0 = self.start[name]
            self.turns[name].append((w1 - w0, c1 - c0))
            self.done[name].set()
            if len(self.turns[name]) >= self.steps:
                self.finish.wait(self.timeout)  # extra steps (if any) and clean-up run after the timing
                return
            self._wait(self.release[name])
            self.start[name] = C.stamp()
        return end_turn

    def run(self, loops: dict) -> dict[str, list[tuple[float, float]]]:
        """``loops``: name -> fn(hook) running a whole training loop. Returns each loop's turns (wall, CPU)."""
        import threading

        threads = {}
        threads_setting = torch.get_num_threads()

        def body(name, fn):
            try:
                torch.set_num_threads(threads_setting)  # a per-thread setting in OpenMP
                self._wait(self.release[name])
                self.start[name] = C.stamp()
                fn(self.hook(name))
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.errors.append(e)
                self.done[name].set()

        for name, fn in loops.items():
            threads[name] = threading.Thread(target=body, args=(name, fn), daemon=True)
            threads[name].start()
        for _ in range(self.steps):
            order = list(self.names)
            self.rng.shuffle(order)
            for name in order:
                self.release[name].set()
                self._wait(self.done[name])
                if self.errors:
                    self.finish.set()
                    raise self.errors[0]
        self.finish.set()
        for t in threads.values():
            t.join(self.timeout)
        if self.errors:
            raise self.errors[0]
        return self.turns


def measure(w: dict) -> dict[str, list[tuple[float, float]]]:
    """Per-step (wall, CPU) seconds of the three loops, run in lockstep; each on its own copy of the model."""
    import copy

    models = {n: copy.deepcopy(w["model"]) for n in ("bare", "hftl", "transformers")}
    steps = w["steps"]
    loops = {
        "bare PyTorch": lambda hook: run_bare(models["bare"], w["data"], w["batch"], steps, hook),
        "hftl Trainer": lambda hook: run_hftl(models["hftl"], w["data"], w["eval"], w["batch"], steps,
                                              C.SCRATCH / f"hftl-{w['key']}", hook),
        "transformers Trainer": lambda hook: run_transformers(models["transformers"], w["key"], w["data"],
                                                              w["batch"], steps, C.SCRATCH / f"tf-{w['key']}", hook),
    }
    turns = Lockstep(list(loops), steps).run(loops)
    return {name: t[w["skip"]:] for name, t in turns.items()}


def per_call_us(fn, n: int, baseline=None) -> float:
    """Median microseconds per call of ``fn`` (minus ``baseline``'s), over 7 alternating blocks of ``n``.

    Alternating the two in blocks and taking the median of the differences keeps a busy machine's
    noise out of small differences.
    """
    diffs = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        t = (time.perf_counter() - start) / n
        if baseline is not None:
            start = time.perf_counter()
            for _ in range(n):
                baseline()
            t -= (time.perf_counter() - start) / n
        diffs.append(t * 1e6)
    return C.median(diffs)


def overhead_budget() -> list[tuple[str, float, str]]:
    """Microseconds per optimizer step of each thing hftl's loop does beyond the bare loop.

    Each is timed alone with hftl's real objects (its Trainer's Accelerator and the prepared
    optimizer/data loader) around a 512->10 layer, so the wrapped work is tiny and what is left is
    the fixed per-step cost. Returns (what, us per step, where it comes from).
    """
    import inspect
    import io

    from accelerate.utils import is_lomo_available
    from tqdm.auto import tqdm

    from hftl.config import TrainConfig
    from hftl.methods.feature_cache import HeadOnly
    from hftl.trainer import Trainer, _plain_optimizer

    g = torch.Generator().manual_seed(1)
    batch = 32
    data = DictData("features", torch.randn(64 * batch, 512, generator=g), torch.randint(0, 10, (64 * batch,), generator=g))
    model = HeadOnly(nn.Linear(512, 10))
    cfg = TrainConfig(epochs=1, global_batch_size=batch, per_device_batch_size=batch, progress=False, seed=0,
                      mixed_precision="no")
    out = C.SCRATCH / "budget"
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, model, data, data, output_dir=out)
    acc = trainer._accelerator()
    trainer.accelerator = acc
    raw_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    plain_dl = trainer._loader(data, shuffle=True)
    pmodel, popt, pdl = acc.prepare(model, raw_opt, trainer._loader(data, shuffle=True))
    first = next(iter(plain_dl))
    loss = F.cross_entropy(pmodel(first).float(), first["labels"])
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    raw_opt.step()  # AdamW's state exists before timing
    n = 1000
    rows = [
        ("NaN/inf guard on the loss + running loss", per_call_us(lambda: trainer._loss_value(acc, loss, 0), n),
         "hftl _loss_value: one .item(), math.isfinite (one process)"),
        ("NaN/inf guard on the gradient norm", per_call_us(lambda: trainer._check_finite(acc, norm, "norm", 0), n),
         "hftl _check_finite: one .item(), math.isfinite (one process)"),
    ]
    row = {"step": 1, "epoch": 0, "loss": 2.3, "lr": 1e-3}
    rows.append(("JSONL log row", per_call_us(lambda: trainer._log(acc, row), 200),
                 "hftl _log: json.dumps + write; log.jsonl opened once per fit, line-buffered"))
    trainer._log_file.close()

    def accumulate():
        with acc.accumulate(pmodel):
            pass

    rows.append(("acc.accumulate(model) context", per_call_us(accumulate, n), "Accelerate"))
    rows.append(("acc.backward: loss / accumulation steps", per_call_us(lambda: loss.detach() / 1, n,
                                                                        lambda: loss.detach()),
                 "Accelerate divides even when accumulation is 1"))
    # The wrappers are timed around a 1x1 layer, so what is left is their own cost, not the math they wrap
    # (on a busy 2-core machine a small tensor op alone varies by 10x from one block to the next).
    null = nn.Linear(1, 1)
    null_opt = torch.optim.AdamW(null.parameters(), lr=1e-3, fused=True)
    null_model, null_popt = acc.prepare(null, null_opt)
    for p in null.parameters():
        p.grad = torch.ones_like(p)
    null_opt.step()
    rows.append(("acc.clip_grad_norm_ vs torch's",
                 per_call_us(lambda: acc.clip_grad_norm_(null_model.parameters(), 1.0), n,
                             lambda: torch.nn.utils.clip_grad_norm_(null.parameters(), 1.0)),
                 "Accelerate: unscale_gradients + DTensor-aware grouping"))
    assert _plain_optimizer(acc, null_popt) is null_opt  # what hftl's loop steps without a gradient scaler
    rows.append(("optimizer step + zero_grad vs AdamW's", 0.0,
                 "not timed: hftl steps the AdamW itself (no gradient scaler), as the bare loop does"))
    rows.append(("  not paid: AcceleratedOptimizer.step vs AdamW.step", per_call_us(null_popt.step, 300, null_opt.step),
                 "Accelerate: calls is_lomo_available() twice per step (importlib find_spec, uncached)"))
    rows.append(("  not paid: 2 x accelerate is_lomo_available()",
                 per_call_us(lambda: (is_lomo_available(), is_lomo_available()), 200), "(in the row above)"))
    rows.append(("  not paid: AcceleratedOptimizer.zero_grad vs AdamW.zero_grad",
                 per_call_us(lambda: null_popt.zero_grad(set_to_none=False), n,
                             lambda: null_opt.zero_grad(set_to_none=False)),
                 "Accelerate: inspect.signature(optimizer.zero_grad) every call"))
    rows.append(("  not paid: inspect.signature", per_call_us(lambda: inspect.signature(raw_opt.zero_grad), n),
                 "(in the row above)"))

    def drain(loader, k=64):
        it = iter(loader)
        for _ in range(k):
            next(it, None)

    rows.append(("Accelerate's data loader vs torch's, per batch",
                 per_call_us(lambda: drain(pdl), 3, lambda: drain(plain_dl)) / 64,
                 "DataLoaderShard: one-batch look-ahead, send_to_device, RNG sync"))
    bar = tqdm(total=10**9, file=io.StringIO(), dynamic_ncols=True)
    rows.append(("progress bar update + set_postfix (not in the timed loops)",
                 per_call_us(lambda: (bar.set_postfix(epoch=0, loss=f"{2.3:.4f}", refresh=False), bar.update(1)), 200),
                 "hftl with train.progress=true (the default): the bar redraws at most every 0.1 s"))
    acc.end_training()
    return rows


def profile(w: dict) -> None:
    """cProfile of one hftl fit on the overhead-bound workload: where the per-step time goes."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run_hftl(w["model"], w["data"], w["eval"], w["batch"], w["steps"], C.SCRATCH / "profile")
    prof.disable()
    print(f"## cProfile of one hftl fit ({w['name']}, {w['steps']} steps), top 30 by cumulative time")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of hftl's loop")
    C.add_device_option(p)
    C.add_threads_option(p)
    args = p.parse_args()
    C.apply_threads(args)
    C.set_device(args.device)
    ws = workloads(args.quick)
    C.header("hftl loop vs bare PyTorch loop vs transformers Trainer (steady-state step time)",
             "; ".join(f"{w['name']}: {w['steps']} steps per run, first {w['skip']} not timed" for w in ws)
             + "; fp32, AdamW, clip 1.0, cosine schedule; the three loops run in lockstep (one step of each in "
             "a shuffled order, then the next), each on its own copy of the model")

    # The budget times host-side pieces with CPU objects; one process cannot hold Accelerate on both devices.
    budget = overhead_budget() if C.DEVICE == "cpu" else []
    extras = sum(us for name, us, _ in budget if not name.startswith("  ") and "progress bar" not in name)
    for i, w in enumerate(ws):
        turns = measure(w)
        res = {n: [t[0] for t in v] for n, v in turns.items()}
        cpu = {n: [t[1] for t in v] for n, v in turns.items()}
        n_timed = len(res["hftl Trainer"])
        table = C.Table(f"{w['name']}: {n_timed} timed steps per loop, the three loops in lockstep")
        for name in res:
            table.add(f"{name}: ms/step, median (wall | CPU)",
                      f"{1000 * C.median(res[name]):.2f} | {1000 * C.median(cpu[name]):.2f}")
        goal = i == 0  # the goals are stated for a real model's training step; the head row is diagnostic

        def ratio(times: dict, other: str) -> list[float]:
            # step i of each loop ran within the same few seconds: compare them pairwise
            return [o / h for o, h in zip(times[other], times["hftl Trainer"])]

        for other, short, target in (("bare PyTorch", "bare", 0.95), ("transformers Trainer", "transformers", 1.0)):
            wall = sorted(ratio(res, other))
            q1, q3 = wall[len(wall) // 4], wall[(3 * len(wall)) // 4]
            table.add(f"throughput ratio hftl / {short} (median of per-step ratios)", f"{C.median(wall):.3f}",
                      f">= {target}" if goal else "(diagnostic)", C.median(wall) >= target if goal else None)
            table.add("  interquartile range of the per-step ratios", f"{q1:.3f} - {q3:.3f}")
            table.add("  the same in CPU time", f"{C.median(ratio(cpu, other)):.3f}", "(info)")
        bare = res["bare PyTorch"]
        step_us = 1e6 * C.median(bare)
        if budget:
            table.add("  => throughput ratio hftl / bare predicted by the overhead budget below",
                      f"{step_us / (step_us + extras):.4f}", "(noise-free estimate)")
        table.print()
    if budget:
        budget_table = C.Table("hftl's per-step extras beyond the bare loop, each timed alone (us per optimizer step)")
        for name, us, why in budget:
            budget_table.add(name, f"{us:.1f}", why)
        budget_table.add("total counted (indented rows and the progress bar excluded)", f"{extras:.0f}")
        budget_table.print()
    if args.profile:
        profile(ws[1])
    C.footer()


if __name__ == "__main__":
    main()
