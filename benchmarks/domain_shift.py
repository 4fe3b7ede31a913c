"""Transductive transfer under a domain shift (issue 13, item 2): does AdaBN or CORAL beat plain source training
on the target domain, and how far is each from the labelled-target ceiling?

1. ``hftl study recipes/configs/study/digits_domain_shift.yaml``: a ResNet-10t (random init, 32 px) trained on
   scikit-learn's digits, half a (``builtin:digits_a``, the labelled source), scored on the other
   half, blurred (``builtin:digits_b_blurred``, the target, its training images unlabelled): source_only,
   adabn, coral, and the oracle (trained on the labelled target training images), on the same 4 source folds
   and seeds; verdicts by the paired t-test over the folds vs source_only. No target label chooses anything.
2. A plain-PyTorch reference on the same folds (the same source training indices, the same target images,
   the same preprocessing): a bare AdamW loop with the same schedule, AdaBN written out (reset the
   batch-norm statistics, one pass over the target in train mode) and Deep CORAL written out; hftl's
   numbers should fall within its noise.

Usage: python benchmarks/domain_shift.py [--folds 4] [--epochs N] [--target builtin:digits_b_rotated] [--ablation]
       [--no-reference] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time

import _common as C

RECIPE = C.REPO / "recipes" / "configs" / "study" / "digits_domain_shift.yaml"


def ms(values) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def plain_reference(cfg, records_by_fold: dict, epochs: int, pool) -> dict:
    """source_only, AdaBN and CORAL in plain PyTorch on the study's folds: {arm: [target accuracy per fold]}."""
    import timm
    import torch
    import torch.nn.functional as F

    from hftl.methods.domain_adapt import load_target

    arch = cfg.base.model.id.split(":", 1)[1]
    size = cfg.base.data.image_size
    probe = timm.create_model(arch, num_classes=10, pretrained=False)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({"input_size": (3, size, size)},
                                                                           model=probe))

    def tensors(ds):
        x = torch.stack([transform(img.convert("RGB")) for img in ds["image"]])
        return x, torch.tensor(ds["label"])

    out: dict = {"source_only": [], "adabn": [], "coral": []}
    t = cfg.base.train
    for k, train_idx in sorted(records_by_fold.items()):
        seed = t.seed + k
        xs, ys = tensors(pool.select(train_idx))
        fold = copy.deepcopy(cfg.base)
        fold.train.seed = seed  # the study's seed for fold k: its target split, as the study drew it
        target = load_target(fold, [str(i) for i in range(10)], read_labels=False)
        xt, _ = tensors(target.train)
        xv, yv = tensors(target.validation)
        for coral in (False, True):
            torch.manual_seed(seed)
            model = timm.create_model(arch, num_classes=10, pretrained=False)
            decay = [p for n, p in model.named_parameters() if p.ndim > 1]
            rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                     {"params": rest, "weight_decay": 0.0}], lr=t.lr)
            steps = epochs * math.ceil(len(xs) / t.global_batch_size)
            warm = int(t.warmup_ratio * steps)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, w=warm, n=steps: (s + 1) / max(1, w) if s < w else
                                                      0.5 * (1 + math.cos(math.pi * (s - w) / max(1, n - w))))
            gen = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                model.train()
                order, torder = torch.randperm(len(xs), generator=gen), torch.randperm(len(xt), generator=gen)
                for i in range(0, len(xs), t.global_batch_size):
                    idx = order[i:i + t.global_batch_size]
                    if len(idx) < 2:
                        continue
                    if coral:
                        tdx = torder[torch.arange(i, i + len(idx)) % len(xt)]
                        feats = model.forward_head(model.forward_features(torch.cat([xs[idx], xt[tdx]])), pre_logits=True)
                        n = len(idx)
                        fs, ft = feats[:n], feats[n:]
                        cs = (fs - fs.mean(0)).T @ (fs - fs.mean(0)) / (n - 1)
                        ct = (ft - ft.mean(0)).T @ (ft - ft.mean(0)) / (len(ft) - 1)
                        d = fs.shape[1]
                        loss = F.cross_entropy(model.get_classifier()(fs), ys[idx]) + \
                            cfg.base.domain_adapt.coral_weight * ((cs - ct) ** 2).sum() / (4 * d * d)
                    else:
                        loss = F.cross_entropy(model(xs[idx]), ys[idx])
                    opt.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    opt.step()
                    sched.step()

            def accuracy(model=model, xv=xv, yv=yv) -> float:
                model.eval()
                with torch.inference_mode():
                    return float((model(xv).argmax(-1) == yv).float().mean())

            if coral:
                out["coral"].append(accuracy())
                continue
            out["source_only"].append(accuracy())
            bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for m in bns:  # AdaBN: the statistics of the target images, one pass in train mode
                m.reset_running_stats()
                m.momentum = None
            model.eval()
            for m in bns:
                m.train()
            with torch.no_grad():
                for i in range(0, len(xt), cfg.base.domain_adapt.adabn_batch_size):
                    model(xt[i:i + cfg.base.domain_adapt.adabn_batch_size])
            out["adabn"].append(accuracy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--target", default=None, help="another target domain (default: the recipe's, "
                                                       "builtin:digits_b_blurred), e.g. builtin:digits_b_rotated")
    parser.add_argument("--ablation", action="store_true",
                        help="add an arm coral_no_loss: CORAL's mixed source + target batches with coral_weight 0 (how "
                             "much of CORAL's effect is its loss, how much batch norm seeing target images)")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-PyTorch reference")
    parser.add_argument("--quick", action="store_true", help="2 folds, 1 epoch, a tiny model: checks the script")
    C.add_threads_option(parser)
    args = parser.parse_args()
    C.apply_threads(args)

    from hftl.study import run_study
    from hftl.study.stats import compare_paired

    over = [f"study.folds={args.folds}", f"study.output_dir={C.SCRATCH / 'study'}", "base.train.progress=false",
            "study.winner=none"]
    if args.quick:
        over = ["study.folds=2", f"study.output_dir={C.SCRATCH / 'study'}", "base.train.progress=false",
                "study.winner=none", "base.model.id=timm:test_resnet", "base.data.image_size=16",
                "base.domain_adapt.max_target_samples=60"]
    if args.target:
        over.append(f"base.domain_adapt.target={args.target}")
    if args.epochs or args.quick:
        over.append(f"base.train.epochs={1 if args.quick else args.epochs}")
    from hftl.config import parse_overrides, read_yaml
    from hftl.study.config import _merge, study_config_from_dict

    raw = read_yaml(RECIPE)
    if args.ablation:
        raw["study"]["arms"].insert(3, {"name": "coral_no_loss", "strategy": "scratch",
                                        "config": {"domain_adapt": {"method": "coral", "coral_weight": 0.0}}})
    cfg = study_config_from_dict(_merge(raw, parse_overrides(over)))
    b = cfg.base
    C.header(f"domain shift: digits -> other digits, {b.domain_adapt.target.rsplit('_', 1)[-1]} (issue 13, item 2)",
             f"{b.model.id} ({b.strategy.name}) at {b.data.image_size} px, {b.train.epochs} epochs, batch "
             f"{b.train.global_batch_size}, lr {b.train.lr}; source {b.data.id}, target {b.domain_adapt.target}; "
             f"{cfg.study.folds} source folds; coral_weight {b.domain_adapt.coral_weight}")
    started = time.perf_counter()
    report = run_study(cfg)
    study_seconds = time.perf_counter() - started
    tag = report.full_budget
    study = json.loads((C.SCRATCH / "study" / "study.json").read_text())

    print(f"hftl study ({study_seconds:.0f} s): target accuracy on the target's held-out images (mean ± sd over "
          f"{report.folds} folds), source accuracy on the held-out source fold")
    print(f"{'arm':<13} {'source acc':<15} {'target acc':<15} {'Δ target vs source_only [95% CI]':<34} {'p (t)':<7} verdict")
    for r in report.table_rows(tag):
        arm = r["arm"]
        diff = "—" if r["diff"] is None else f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        p = "—" if r["p"] is None else ("<0.001" if r["p"] < 0.001 else f"{r['p']:.3f}")
        print(f"{arm:<13} {ms(report.scores[arm][tag]['accuracy']):<15} "
              f"{ms(report.scores[arm][tag]['target_accuracy']):<15} {diff:<34} {p:<7} {r['verdict']}")
    print()

    from hftl.data import load_labelled_data

    data = load_labelled_data(b.data, b.task, b.train.seed)
    import datasets

    pool = datasets.concatenate_datasets([data.train, data.validation])  # the study's pool, in its order
    folds = {r["fold"]: r["train_indices"] for r in study["runs"] if r["arm"] == "source_only"}
    if args.no_reference:
        print("(plain-PyTorch reference not run: --no-reference)")
    else:
        started = time.perf_counter()
        ref = plain_reference(cfg, folds, b.train.epochs, pool)
        print(f"plain PyTorch on the same folds ({time.perf_counter() - started:.0f} s): target accuracy, "
              "and the verdict of the same paired t-test vs its own source_only")
        print(f"{'arm':<13} {'target acc':<15} {'hftl target acc':<16} {'Δ vs source_only [95% CI]':<28} {'p (t)':<7} verdict")
        for arm in ("source_only", "adabn", "coral"):
            mine = report.scores[arm][tag]["target_accuracy"]
            if arm == "source_only":
                diff = p = verdict = "—"
            else:
                c = compare_paired(ref[arm], ref["source_only"])
                diff = f"{c.mean_diff:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
                p, verdict = ("<0.001" if c.p_value < 0.001 else f"{c.p_value:.3f}"), c.verdict
            print(f"{arm:<13} {ms(ref[arm]):<15} {ms(mine):<16} {diff:<28} {p:<7} {verdict}")
        print()
    C.footer()


if __name__ == "__main__":
    main()
