"""Achieved FLOP/s of hftl's training step as a share of this machine's matmul peak; bf16 and auto vs fp32 (issue 2).

One process measures, round by round:

- the FLOPs of one training step (forward + backward) of ResNet-18 at 224 px, counted with
  ``torch.utils.flop_counter.FlopCounterMode`` (counts depend on shapes, not on the dtype);
- the seconds per optimizer step of ``hftl.trainer.Trainer`` in four settings: fp32 in the default
  (NCHW) layout, fp32 channels-last, bf16 autocast with channels-last (``train.mixed_precision=bf16
  train.channels_last=true``), and the default ``train.mixed_precision=auto`` (default layout), with
  the precision auto chose and why: the time between consecutive step ends, so set-up, evaluation
  and checkpointing are not counted (on CUDA each step end waits for the GPU);
- the matrix-multiply peak of this machine in bf16 and in fp32: the best GFLOP/s of square
  ``torch.matmul`` products (bf16 sizes kept small enough to finish, see the header).

The share is the step's FLOPs over its seconds, divided by the peak of the same precision. The
settings run one after another in each round, in a rotating order; times are medians.

auto's CPU probe runs afresh in this run: ``HFTL_CACHE`` defaults to the run's scratch folder here.

Usage: python benchmarks/flops.py [--quick] [--device cuda] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os

# _common first: it sets the offline environment before any Hugging Face import.
import _common as C
import loop  # the dict dataset and the step-stamping Trainer of benchmarks/loop.py
import torch
import torch.nn.functional as F


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(n: int, dtype: torch.dtype, repeats: int = 3, device: str = "cpu") -> tuple[float, float]:
    """Best GFLOP/s of an n x n x n product (2 n^3 FLOPs) after one warm-up: per wall second, per CPU second."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    a @ b
    sync(device)
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = C.stamp()
        a @ b
        sync(device)
        w1, c1 = C.stamp()
        wall, cpu = min(wall, w1 - w0), min(cpu, c1 - c0)
    return 2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9


def count_step_flops(model, batch: dict, device: str = "cpu") -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.train().to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(batch).float(), batch["labels"])
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.cpu()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 2, one round (a smoke run)")
    p.add_argument("--rounds", type=int, default=None)
    C.add_device_option(p)
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 4 on CPU, 64 on CUDA)")
    C.add_threads_option(p)
    args = p.parse_args()
    C.apply_threads(args)
    C.set_device(args.device)
    device = args.device
    os.environ.setdefault("HFTL_CACHE", str(C.SCRATCH / "hftl_cache"))  # auto's probe measures in this run
    batch, steps = (2, 2) if args.quick else ((4, 3) if device == "cpu" else (64, 8))
    batch = args.batch or batch
    rounds = args.rounds or (1 if args.quick else 2)
    size = 224
    # A bf16 matmul on a CPU without native bf16 runs at ~1 GFLOP/s: small sizes there; a GPU needs big ones.
    bf16_sizes, fp32_sizes = ((256, 512), (1024, 2048)) if device == "cpu" else ((4096, 8192), (4096, 8192))
    repeats = 3 if device == "cpu" else 10

    from hftl.backbones import create_model
    from hftl.config import TrainConfig

    where = "CPU" if device == "cpu" else C.device_name()
    C.header(f"Training-step FLOP/s vs matmul peak; bf16 + channels-last and auto vs fp32 (hftl Trainer, ResNet-18 "
             f"224 px, on {where})",
             f"timm resnet18 (random init, 10 classes), {size}x{size} px, batch {batch}, {steps} optimizer steps "
             f"per run (time = median of the {steps - 1} step-to-step intervals), AdamW; {rounds} round(s) after a "
             f"warm-up, settings rotated; peaks: best of square matmuls n={bf16_sizes} in bf16, n={fp32_sizes} in fp32")

    labels = [str(i) for i in range(10)]
    torch.manual_seed(0)
    model = create_model("timm:resnet18", labels, image_size=size)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    n = batch * steps
    data = loop.DictData("pixel_values", torch.randn(n, 3, size, size, generator=g),
                                  torch.randint(0, 10, (n,), generator=g))
    eval_data = loop.DictData("pixel_values", data.x[:1], data.y[:1])
    flops = count_step_flops(model, {"pixel_values": data.x[:batch], "labels": data.y[:batch]}, device)

    settings = {
        "fp32, default layout": dict(mixed_precision="no", channels_last=False),
        "fp32, channels-last": dict(mixed_precision="no", channels_last=True),
        "bf16, channels-last": dict(mixed_precision="bf16", channels_last=True),
        "auto, default layout": dict(mixed_precision="auto", channels_last=False),
    }
    chosen: dict[str, str] = {}

    def run(name: str, tag: str, n_steps: int) -> list[float]:
        # A fresh model object per run: Accelerate marks a prepared model (_is_accelerate_prepared) and
        # skips preparing it again, so a reused model would keep the first run's precision.
        model = create_model("timm:resnet18", labels, image_size=size)
        model.load_state_dict(init)
        cfg = TrainConfig(epochs=1, global_batch_size=batch, per_device_batch_size=batch, lr=1e-3, progress=False,
                          checkpoint_every=10**9, seed=0, cpu=device == "cpu", **settings[name])
        train = loop.DictData("pixel_values", data.x[: batch * n_steps], data.y[: batch * n_steps])
        trainer = loop.hftl_trainer_class()(cfg, model, train, eval_data, output_dir=C.SCRATCH / tag, metrics=())
        trainer.stamps = []
        trainer.fit()
        chosen[name] = f"{trainer.precision} ({trainer.precision_reason})"
        return trainer.stamps

    for name in settings:  # warm-up: oneDNN primitives and allocator, one step each
        run(name, f"warmup-{name}", 1)
    names = list(settings)
    step_s: dict[str, list[float]] = {k: [] for k in names}
    step_cpu: dict[str, list[float]] = {k: [] for k in names}
    peaks = {"bf16": 0.0, "fp32": 0.0}
    cpu_peaks = {"bf16": 0.0, "fp32": 0.0}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            stamps = run(name, f"{name}-{r}".replace(" ", "_").replace(",", ""), steps)
            step_s[name] += C.intervals(stamps, 0)
            step_cpu[name] += C.intervals(stamps, 0, cpu=True)
        for key, dtype, sizes in (("bf16", torch.bfloat16, bf16_sizes), ("fp32", torch.float32, fp32_sizes)):
            for n_mm in sizes:
                wall, cpu = matmul_gflops(n_mm, dtype, repeats, device)
                peaks[key], cpu_peaks[key] = max(peaks[key], wall), max(cpu_peaks[key], cpu)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {C.median(v):.2f} s/step" for k, v in step_s.items())
              + f"; peaks bf16 {peaks['bf16']:.1f}, fp32 {peaks['fp32']:.1f} GFLOP/s", flush=True)
    print()

    med = {k: C.median(v) for k, v in step_s.items()}
    achieved = {k: flops / v / 1e9 for k, v in med.items()}
    cpu_achieved = {k: flops / C.median(v) / 1e9 for k, v in step_cpu.items()}
    native = C.native_bf16() if device == "cpu" else torch.cuda.is_bf16_supported()
    table = C.Table(f"ResNet-18 {size} px, batch {batch}: {flops / 1e9:.1f} GFLOP per step (forward + backward)")
    for name in names:
        table.add(f"{name}: s/step (median)", f"{med[name]:.2f}")
        table.add(f"{name}: achieved GFLOP/s (per wall s | per CPU s)",
                  f"{achieved[name]:.1f} | {cpu_achieved[name]:.1f}")
    for key in ("bf16", "fp32"):
        table.add(f"matmul peak, {key} (GFLOP/s per wall s | per CPU s)", f"{peaks[key]:.1f} | {cpu_peaks[key]:.1f}")
    share = achieved["bf16, channels-last"] / peaks["bf16"]
    table.add("share of peak: bf16 step / bf16 matmul peak (wall clock)", f"{100 * share:.0f}%",
              ">= 70%" if native else ">= 70% (no native bf16: see note)", share >= 0.70 if native else None)
    best = max(("fp32, default layout", "fp32, channels-last"), key=lambda k: achieved[k])
    share_fp32 = achieved[best] / peaks["fp32"]
    table.add(f"share of peak: best fp32 step ({best.split(', ')[1]}) / fp32 matmul peak (wall clock)",
              f"{100 * share_fp32:.0f}%", ">= 70% (the goal, in the fast precision)", share_fp32 >= 0.70)
    table.add("  the same per CPU second (load-independent)", f"{100 * cpu_achieved[best] / cpu_peaks['fp32']:.0f}%",
              "(info)")
    table.add("share of peak: bf16 step / fp32 matmul peak (the machine's fastest)",
              f"{100 * achieved['bf16, channels-last'] / peaks['fp32']:.1f}%", "(info)")
    speed = med["fp32, default layout"] / med["bf16, channels-last"]
    table.add("speed-up bf16+channels-last vs fp32 default", f"{speed:.2f}x", "~2.4x (DESIGN.md)", speed >= 2.0)
    cl = med["fp32, default layout"] / med["fp32, channels-last"]
    table.add("speed-up fp32 channels-last vs fp32 default", f"{cl:.2f}x", "~1.2x (DESIGN.md)", cl >= 1.0)
    auto = med["fp32, default layout"] / med["auto, default layout"]
    # auto's goal: never slower than fp32 (within noise), faster where it picked bf16.
    table.add("speed-up auto (the default) vs fp32 default", f"{auto:.2f}x", ">= 0.95x", auto >= 0.95)
    table.print()
    print(f"auto chose on {C.device_name()}: {chosen['auto, default layout']}")
    if device == "cuda":  # cuDNN runs fp32 convolutions in TF32 by default; the fp32 matmul peak above is true fp32
        print(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
    if device == "cpu":
        from hftl.precision import cache_file, machine_key

        print(f"auto's probe ({cache_file()}, key '{machine_key()}'): "
              f"{json.loads(cache_file().read_text()).get(machine_key())}")
    print()
    if not native:
        print("note: this CPU has no native bf16 (oneDNN reports none: no AVX512-BF16/AMX), so bf16 matmuls and")
        print("convolutions run on slow fallback kernels; the bf16 'peak' above is that fallback's speed, not the")
        print("hardware's. bf16 is the slow choice here; fp32 is what to train in on such a CPU.")
        print()
    C.footer()


if __name__ == "__main__":
    main()
