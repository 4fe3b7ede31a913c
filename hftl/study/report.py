"""What a study found, rendered: the summary table the CLI prints, report.md, the model card's section, the plots.

(Over 500 lines: four renderings of one StudyReport that share its formatting helpers.)

:mod:`hftl.study.runner` runs a study and fills a :class:`StudyReport`; this module turns it into text and
pictures. Everything here reads the report (and, for report.md, the study config and the per-fold
records); nothing trains or computes statistics. The columns follow the study's task: accuracy,
macro-F1 and loss for classifiers; MSE, MAE, Pearson's r and loss for ``text_regression``.

Example:
    >>> report = run_study("recipes/configs/study/negative_transfer.yaml")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    >>> Path("report.md").read_text().startswith("# Transfer study")  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hftl.registry import TASKS
from hftl.study.search import describe_grid, describe_values

if TYPE_CHECKING:
    from hftl.study.config import StudyConfig

# Column headings of the results table (the per-fold table shortens "F1 (macro)" to "F1").
METRIC_LABELS = {"accuracy": "accuracy", "f1": "F1 (macro)", "loss": "loss", "mse": "MSE", "mae": "MAE",
                 "pearson": "Pearson r"}
MARKS = {"positive transfer": " ↑", "negative transfer": " ↓"}


def _budget_tag(budget: float) -> str:
    return f"b{budget:g}"


def _pct(budget: float) -> str:
    return f"{budget * 100:g}%"


# ------------------------------------------------------------------------------------------- report

@dataclass
class StudyReport:
    """What a study found, with where its files are; ``summary()`` is the table the CLI prints."""

    name: str
    output_dir: Path
    metric: str
    baseline: str
    arms: list[str]
    strategies: dict
    budgets: list[float]
    folds: int
    fold_note: str
    scores: dict  # arm -> budget tag -> metric -> [per-fold values]
    stats: dict  # arm -> budget tag -> metric -> describe_scores()
    comparisons: dict  # arm -> budget tag -> Comparison (not for the baseline)
    winner: str | None = None
    winner_fold: int | None = None  # study.winner=best_fold: the fold saved
    refit: dict | None = None  # study.winner=refit: the values and examples the saved model was trained with
    model_dir: Path | None = None
    files: dict = field(default_factory=dict)
    trained: int = 0
    skipped: int = 0
    seconds: float = 0.0
    n_examples: int = 0
    label_names: list = field(default_factory=list)  # the classes; text_regression: the target's name
    budget_sizes: dict = field(default_factory=dict)  # budget tag -> mean training examples per fold
    task: str = ""
    fold_metrics: list = field(default_factory=lambda: ["accuracy", "f1", "loss"])  # each fold's numbers, in order
    higher_is_better: bool = True  # of ``metric``: False for loss, mse and mae
    searched: dict = field(default_factory=dict)  # arm -> the grid it searched ({}: none), hftl.study.search
    chosen: dict = field(default_factory=dict)  # arm -> budget tag -> [per-fold chosen values, {} if none]
    ranking: dict = field(default_factory=dict)  # study.rank_first: sources' scores, kept sources, arms not run
    references: list = field(default_factory=list)  # arms reported apart, with no verdict (a target-label oracle)

    @property
    def any_search(self) -> bool:
        return any(self.searched.values())

    def chosen_cell(self, arm: str, tag: str | None = None) -> str:
        """What ``arm`` chose over the folds at a budget, e.g. ``lr 0.001 ×3, 0.003 ×2``."""
        from hftl.study.search import describe_choices

        if not self.searched.get(arm):
            return "not searched"
        chosen = self.chosen.get(arm, {}).get(tag or self.full_budget, [])
        text = describe_choices(chosen)
        unsplit = sum(1 for c in chosen if not c)  # folds too small to hold out an inner split
        if unsplit:
            text = (text + "; " if chosen and unsplit < len(chosen) else "") + \
                f"configured values ×{unsplit} (too few examples to search)"
        return text

    @property
    def full_budget(self) -> str:
        return _budget_tag(max(self.budgets))

    @property
    def regression(self) -> bool:
        spec = TASKS.get(self.task)  # a report built without a task (task "") is not a regression
        return bool(spec and spec.regression)

    @property
    def examples_word(self) -> str:
        """What a label budget counts: labels of classes, or training examples with their targets."""
        return "examples" if self.regression else "labels"

    def what_is_predicted(self) -> str:
        """``3 classes``, or ``target 'score'`` for regression."""
        return f"target '{self.label_names[0]}'" if self.regression else f"{len(self.label_names)} classes"

    def folds_kind(self) -> str:
        return "folds" if self.regression else "stratified folds"

    def lower_note(self) -> str:
        """`` (lower is better)`` where the metric is a loss or an error, so a negative Δ reads as a gain."""
        return "" if self.higher_is_better else " (lower is better)"

    def verdict(self, arm: str, budget: float | None = None) -> str | None:
        """The verdict of ``arm`` against the baseline at ``budget`` (default: the largest)."""
        tag = _budget_tag(budget) if budget is not None else self.full_budget
        c = self.comparisons.get(arm, {}).get(tag)
        return c.verdict if c else None

    def table_rows(self, tag: str | None = None) -> list[dict]:
        tag = tag or self.full_budget
        rows = []
        # Reference arms (an oracle trained on target labels) come last, apart, with no verdict.
        for arm in [a for a in self.arms if a not in self.references] + [a for a in self.arms if a in self.references]:
            s = self.stats[arm][tag]
            c = self.comparisons.get(arm, {}).get(tag)
            rows.append({
                "arm": arm, "strategy": self.strategies[arm],
                **{m: s[m] for m in self.fold_metrics if m in s},
                "diff": c.mean_diff if c else None, "ci": (c.ci_low, c.ci_high) if c else None,
                "p": c.p_value if c else None, "p_t": c.p_t if c else None,
                "p_wilcoxon": c.p_wilcoxon if c else None,
                "verdict": c.verdict if c else ("ceiling (reported apart)" if arm in self.references else "baseline"),
            })
        return rows

    def markdown_table(self, tag: str | None = None) -> str:
        """The results table (one budget) as Markdown."""
        tag = tag or self.full_budget
        c0 = next((c[tag] for c in self.comparisons.values() if tag in c), None)
        conf = f"{c0.confidence:.0%} CI" if c0 else "CI"
        test = {"t": "p (paired t)", "corrected_t": "p (corrected t)", "wilcoxon": "p (Wilcoxon)"}[
            c0.test if c0 else "t"]
        columns = "".join(f" {METRIC_LABELS.get(m, m)} |" for m in self.fold_metrics)
        searched = self.any_search  # then each arm's choice per fold is part of the result
        lines = [f"| arm | strategy |{columns} Δ {self.metric} vs {self.baseline} [{conf}] "
                 f"| {test} | p (Wilcoxon) | verdict |" + (" chosen (inner split, per fold) |" if searched else ""),
                 "|---|---|" + "---|" * (len(self.fold_metrics) + 4 + searched)]

        def ms(arm: str, m: str) -> str:
            s = self.stats[arm][tag][m]
            return f"{s['mean']:.3f} ± {s['std']:.3f}"

        for r in self.table_rows(tag):
            if r["diff"] is None:
                diff = p = pw = "—"
            else:
                diff = f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
                p = _fmt_p(r["p"])
                pw = _fmt_p(r["p_wilcoxon"]) if r["p_wilcoxon"] is not None else "n/a"
            verdict = f"**{r['verdict']}**" if r["diff"] is not None else r["verdict"]
            cells = "".join(f" {ms(r['arm'], m)} |" for m in self.fold_metrics)
            chosen = f" {self.chosen_cell(r['arm'], tag)} |" if searched else ""
            lines.append(f"| {r['arm']} | {r['strategy']} |{cells} {diff} | {p} | {pw} | {verdict} |{chosen}")
        return "\n".join(lines)

    def budget_table(self) -> str:
        """Plain text: one row per label budget, one column per arm (mean ± sd, ↑/↓ when significant).

        Example:
            >>> print(report.budget_table())  # doctest: +SKIP
            labels per fold   scratch          finetune
            10 (10%)          0.397 ± 0.104    0.594 ± 0.080 ↑
        """
        width = max(19, *(len(a) + 2 for a in self.arms))
        lines = [(f"{self.examples_word} per fold".ljust(18) + "".join(a.ljust(width) for a in self.arms)).rstrip()]
        for b in self.budgets:
            tag = _budget_tag(b)
            size = self.budget_sizes.get(tag)
            row = (f"{size:.0f} ({_pct(b)})" if size is not None else _pct(b)).ljust(18)
            for a in self.arms:
                st = self.stats[a][tag][self.metric]
                c = self.comparisons.get(a, {}).get(tag)
                mark = MARKS.get(c.verdict, " =") if c else ""
                row += f"{st['mean']:.3f} ± {st['std']:.3f}{mark}".ljust(width)
            lines.append(row.rstrip())
        lines.append(f"({self.metric}{self.lower_note()} on held-out folds, mean ± sd over {self.folds} folds; "
                     "↑/↓/= : significantly "
                     f"better / worse / no significant difference vs {self.baseline}, {self._test_name()})")
        return "\n".join(lines)

    def _test_name(self) -> str:
        c = next((c for by in self.comparisons.values() for c in by.values()), None)
        if c is None:
            return ""
        name = {"t": "paired t-test", "corrected_t": "corrected t-test", "wilcoxon": "Wilcoxon"}[c.test]
        return f"{name}, alpha {1 - c.confidence:.2g}"

    def summary(self) -> str:
        """A plain-text summary: the table at the full budget, the verdicts and the files."""
        tag = self.full_budget
        w = max(22, *(len(a) + 2 for a in self.arms))
        head = f"{'arm':<{w}} {'strategy':<14} {self.metric + ' (mean ± sd)':<22} {'Δ vs ' + self.baseline:<28} " \
               f"{'p':<8} verdict"
        lines = [f"Study '{self.name}': {len(self.arms)} arms x {self.folds} folds"
                 + (f" x {len(self.budgets)} label budgets" if len(self.budgets) > 1 else "")
                 + f" on {self.n_examples} examples ({self.what_is_predicted()}); "
                   f"{self.trained} trained, {self.skipped} resumed from records, {self.seconds:.0f} s", head,
                 "-" * len(head)]
        if self.fold_note:
            lines.insert(1, f"note: {self.fold_note}")
        for r in self.table_rows(tag):
            s = self.stats[r["arm"]][tag][self.metric]
            diff = "—" if r["diff"] is None else f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
            p = "—" if r["p"] is None else _fmt_p(r["p"])
            lines.append(f"{r['arm']:<{w}} {r['strategy']:<14} {s['mean']:.3f} ± {s['std']:.3f}{'':<8} {diff:<28} "
                         f"{p:<8} {r['verdict']}")
        if self.any_search:
            lines.append("chosen on each training fold's inner split: " + "; ".join(
                f"{a} {self.chosen_cell(a, tag)}" for a in self.arms))
        if len(self.budgets) > 1:
            lines += ["", "By label budget:", self.budget_table()]
        if self.winner:
            lines.append(f"best arm: {self.winner}" + (f" (model: {self.model_dir})" if self.model_dir else ""))
        for label, path in self.files.items():
            lines.append(f"{label}: {path}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "metric": self.metric, "baseline": self.baseline, "arms": self.arms,
            "strategies": self.strategies, "label_budgets": self.budgets, "folds": self.folds,
            "fold_note": self.fold_note, "n_examples": self.n_examples, "label_names": self.label_names,
            "stats": self.stats,
            "comparisons": {a: {t: c.to_dict() for t, c in by.items()} for a, by in self.comparisons.items()},
            "winner": self.winner, "winner_fold": self.winner_fold, "refit": self.refit,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "files": {k: str(v) for k, v in self.files.items()},
            "trained": self.trained, "resumed": self.skipped, "seconds": round(self.seconds, 1),
            "budget_sizes": self.budget_sizes, "task": self.task, "higher_is_better": self.higher_is_better,
            "search": {a: {"grid": self.searched.get(a, {}), "chosen": self.chosen.get(a, {})} for a in self.arms},
            "ranking": self.ranking, "references": self.references,
        }


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ------------------------------------------------------------------------------------------- rendering

def write_plots(report: StudyReport, out: Path) -> list[Path]:
    """``metric_by_arm.png`` (mean ± sd with each fold's point) and, with budgets, ``sample_efficiency.png``.

    Uses Matplotlib's object API on the Agg canvas, so no global backend is switched (notebooks keep theirs).

    Example:
        >>> write_plots(report, Path("outputs/study"))  # doctest: +SKIP
        [PosixPath('outputs/study/metric_by_arm.png'), PosixPath('outputs/study/sample_efficiency.png')]
    """
    from matplotlib.figure import Figure

    metric = report.metric
    tag = report.full_budget
    colours = {"positive transfer": "#2e7d32", "negative transfer": "#c62828",
               "no significant difference": "#757575", "baseline": "#37474f", "ceiling": "#1565c0"}
    paths = []
    fig = Figure(figsize=(max(5.0, 1.3 * len(report.arms) + 2), 4.2), dpi=130, layout="constrained")
    ax = fig.subplots()
    means = [report.stats[a][tag][metric]["mean"] for a in report.arms]
    sds = [report.stats[a][tag][metric]["std"] for a in report.arms]
    verdicts = [report.verdict(a) or ("ceiling" if a in report.references else "baseline") for a in report.arms]
    x = np.arange(len(report.arms))
    ax.bar(x, means, yerr=sds, capsize=6, color=[colours[v] for v in verdicts], alpha=0.75, edgecolor="black")
    rng = np.random.default_rng(0)
    for i, arm in enumerate(report.arms):
        pts = report.scores[arm][tag][metric]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(pts)), pts, color="black", s=14, zorder=3)
    ax.set_xticks(x, [f"{a}\n{v}" if v not in ("baseline", "ceiling") else f"{a}\n({v})" for a, v in zip(report.arms, verdicts)],
                  fontsize=8)
    ax.set_ylabel(f"{metric} on held-out folds{report.lower_note()}")
    ax.set_title(f"{report.name}\n{metric} on held-out folds, mean ± sd over {report.folds} folds", fontsize=10)
    if metric == "accuracy" and report.label_names:
        chance = 1 / len(report.label_names)  # uniform guessing (balanced classes): "learned nothing"
        ax.axhline(chance, color="#9e9e9e", linestyle=":", linewidth=1)
        ax.annotate("chance", (len(report.arms) - 0.5, chance), xytext=(0, 2), textcoords="offset points",
                    ha="right", va="bottom", fontsize=7, color="#757575")
    lows = [m - s for m, s in zip(means, sds)] + [min(report.scores[a][tag][metric]) for a in report.arms]
    if metric == "accuracy" and report.label_names:
        lows.append(1 / len(report.label_names))
    if metric in ("accuracy", "f1"):  # shares in [0, 1]; losses, errors and correlations scale freely
        ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.02, max(m + s for m, s in zip(means, sds)) + 0.08))
    ax.grid(axis="y", alpha=0.3)
    path = out / "metric_by_arm.png"
    fig.savefig(path)
    paths.append(path)

    if len(report.budgets) > 1:
        fig = Figure(figsize=(6.4, 4.2), dpi=130, layout="constrained")
        ax = fig.subplots()
        for i, arm in enumerate(report.arms):
            ys = [report.stats[arm][_budget_tag(b)][metric]["mean"] for b in report.budgets]
            es = [report.stats[arm][_budget_tag(b)][metric]["std"] for b in report.budgets]
            shift = 1 + 0.025 * (i - (len(report.arms) - 1) / 2)  # side by side, so error bars stay readable
            ax.errorbar([100 * b * shift for b in report.budgets], ys, yerr=es, marker="o", capsize=4, label=arm,
                        linestyle="--" if arm == report.baseline else "-")
        ax.set_xscale("log")
        sizes = report.budget_sizes
        ax.set_xticks([100 * b for b in report.budgets],
                      [f"{_pct(b)}\n({sizes[_budget_tag(b)]:.0f})" if _budget_tag(b) in sizes else _pct(b)
                       for b in report.budgets])
        ax.minorticks_off()
        ax.set_xlabel("share of each training fold used (training examples per fold)" if report.regression
                      else "share of each training fold's labels used (labelled examples per fold)")
        ax.set_ylabel(f"{metric} on held-out folds{report.lower_note()}")
        ax.set_title(f"{report.name}\nsample efficiency: mean ± sd over {report.folds} folds", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / "sample_efficiency.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def _verdict_sentence(report: StudyReport) -> str:
    parts = []
    for arm in report.arms:
        c = report.comparisons.get(arm, {}).get(report.full_budget)
        if c:
            parts.append(f"**{arm}**: {c.verdict} ({report.metric} {c.mean_diff:+.3f}, {c.confidence:.0%} CI "
                         f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}], p = {_fmt_p(c.p_value)})")
    return "; ".join(parts) + "."


def card_section(report: StudyReport) -> str:
    """The study as it appears in the saved model's card: the table, the verdicts and what this model is.

    Example:
        >>> add_study_to_card(Path("outputs/study/model/README.md"), card_section(report))  # doctest: +SKIP
    """
    tag = report.full_budget
    s = report.stats[report.winner][tag][report.metric] if report.winner else None
    lines = [
        f"Cross-validated transfer study `{report.name}`: {len(report.arms)} arms on the same "
        f"{report.folds} {report.folds_kind()} of {report.n_examples} examples, compared with `{report.baseline}` by a "
        "paired test over the folds.",
        "",
        report.markdown_table(tag),
        "",
        "Verdicts: " + _verdict_sentence(report),
    ]
    if report.winner:
        lines += ["", f"This model is {saved_model(report)}; the arm's cross-validated {report.metric} is "
                      f"{s['mean']:.3f} ± {s['std']:.3f}."]
    if report.fold_note:
        lines += ["", f"Note: {report.fold_note}"]
    return "\n".join(lines)


def saved_model(report: StudyReport) -> str:
    """What OUTPUT_DIR/model is, in words (study.winner)."""
    if report.refit is None:
        return (f"fold {report.winner_fold} of the best arm, `{report.winner}` (not a retrain on all data: its "
                "metrics are on that fold's held-out examples)")
    r = report.refit
    return (f"the best arm, `{report.winner}`, trained again on the whole pool (study.winner=refit: "
            f"{r['num_train']} examples, {r['num_validation']} held out to validate it"
            + (f"; {describe_values(r['values'])}, the values its folds' inner searches scored best"
               if r["values"] else "")
            + "; its card's metrics are on those held-out examples)")


def add_study_to_card(readme: Path, section: str) -> None:
    """Put the study section into a model card (before 'How to use', as the card template places it).

    Example:
        >>> add_study_to_card(Path("outputs/run/README.md"), "| arm | accuracy |...")  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme)
    text = card.text
    block = f"## Transfer study\n\n{section}\n\n"
    if "## Transfer study" in text:  # a rerun replaces the old section
        start = text.index("## Transfer study")
        end = text.find("\n## ", start + 1)
        text = text[:start] + block + (text[end + 1:] if end != -1 else "")
    elif "## How to use" in text:
        i = text.index("## How to use")
        text = text[:i] + block + text[i:]
    else:
        text = text.rstrip() + "\n\n" + block
    card.text = text
    card.save(readme)


def render_markdown(report: StudyReport, cfg: StudyConfig, all_records: dict, sources: dict,
                    plots: list[Path]) -> str:
    """report.md: the verdicts first, then the table, the plots, what was run and every fold's numbers.

    Example:
        >>> Path("report.md").write_text(render_markdown(report, cfg, records, {}, plots))  # doctest: +SKIP
    """
    base = cfg.base
    tag = report.full_budget
    question = (f"Does adapting to the target domain beat `{report.baseline}` there?" if report.metric.startswith("target_")
                else "Does transfer beat training from scratch on this data?")
    lines = [f"# Transfer study: {report.name}", "", f"{question} {_verdict_sentence(report)}", ""]
    if report.metric.startswith("target_"):
        lines += [f"Scored on the target domain's held-out images ({report.metric}); every choice (epoch, search, the "
                  f"kept fold) was made on the source's held-out folds ({report.metric[len('target_'):]}), never on a "
                  "target label." + (f" {', '.join(report.references)}: trained on labelled target data, the "
                                     "ceiling, reported apart (no verdict, never chosen)." if report.references else ""),
                  ""]
    if report.fold_note:
        lines += [f"> **Note:** {report.fold_note}", ""]
    lines += [f"## Results ({_pct(max(report.budgets))} of each training fold)", "",
              report.markdown_table(tag), "",
              f"Mean ± sample standard deviation over {report.folds} folds; Δ is the arm minus `{report.baseline}`, "
              "paired by fold." + ("" if report.higher_is_better else f" Lower {report.metric} is better."), ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    if len(report.budgets) > 1:
        unit = report.examples_word
        lines += ["## Sample efficiency", "", f"{report.metric} (mean ± sd) by share of each training fold's {unit}:",
                  "", "| arm | " + " | ".join(f"{_pct(b)} ({report.budget_sizes.get(_budget_tag(b), 0):.0f} {unit})"
                                          for b in report.budgets) + " |",
                  "|---|" + "---|" * len(report.budgets)]
        for arm in report.arms:
            cells = []
            for b in report.budgets:
                st = report.stats[arm][_budget_tag(b)][report.metric]
                c = report.comparisons.get(arm, {}).get(_budget_tag(b))
                mark = MARKS.get(c.verdict, "") if c else ""
                cells.append(f"{st['mean']:.3f} ± {st['std']:.3f}{mark}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", f"↑ / ↓: significantly better / worse than `{report.baseline}` at that budget.", ""]

    subset = "a seeded random subset" if report.regression else "a seeded, stratified subset"
    splitter = "KFold" if report.regression else "StratifiedKFold"
    lines += ["## What was run", "",
              f"- Task: {base.task}; data: `{base.data.id}`"
              + (f" (classes {', '.join(map(str, base.data.classes))})" if base.data.classes else "")
              + f"; {report.n_examples} labelled examples, "
              + (f"target `{report.label_names[0]}`" if report.regression else f"{len(report.label_names)} classes")
              + (f" ({subset}: study.max_examples)" if cfg.study.max_examples else "")
              + ".",
              f"- Folds: {report.folds} {report.folds_kind()} (scikit-learn {splitter}, shuffled, seed "
              f"{cfg.study.seed}), the same for every arm; each fold trains on the other folds and is scored on "
              "its own held-out examples (the metric of the final epoch, so no fold is used to pick an epoch).",
              f"- Training budget per arm and fold (unless an arm overrides it): {_epochs(base.train)}, global "
              f"batch {base.train.global_batch_size}, peak lr {_lr(base.train.lr)}, {base.train.scheduler} schedule, "
              f"seed {base.train.seed} + fold index (the same for every arm).",
              _search_bullet(report, cfg),
              f"- Verdict: {cfg.study.test} test on {report.metric} at alpha {cfg.study.alpha:g} "
              f"({'paired t-test, scipy.stats.ttest_rel' if cfg.study.test == 't' else cfg.study.test}); "
              "Wilcoxon signed-rank where there are enough folds.",
              "", "| arm | strategy | starts from | epochs | lr | searched (nested, on the training fold) |",
              "|---|---|---|---|---|---|"]
    for arm in cfg.arms:
        c = arm.config
        start = f"`{c.model.id}`"
        if arm.strategy == "scratch":  # the id names the architecture; none of its weights are used
            start += " (architecture only, random init)"
        elif c.model.init_from:
            start += f" + the weights of `{c.model.init_from}`"
        lr = "searched" if "train.lr" in arm.grid and len(arm.candidates) > 1 else _lr(c.train.lr)
        epochs = c.train.epochs if c.train.epochs is not None else f"null (at least {c.train.min_steps} steps)"
        lines.append(f"| {arm.name} | {arm.strategy} | {start} | {epochs} | {lr} | "
                     f"{describe_grid(arm.grid)} |")
    lines += _search_lines(report, all_records)
    lines += _sources_lines(sources, report.metric if report.regression else "accuracy")
    lines += _ranking_lines(report.ranking)
    lines += ["", "## Saved model", ""]
    if report.model_dir:
        best = "highest" if report.higher_is_better else "lowest"
        lines.append(f"`{report.model_dir}`: {saved_model(report)}. That arm has the {best} mean {report.metric}; "
                     "the model is saved like any hftl run, and its card carries this study's table.")
    else:
        lines.append("None (study.winner=none).")
    metrics = report.fold_metrics
    columns = "".join(f" {METRIC_LABELS.get(m, m).removesuffix(' (macro)')} |" for m in metrics)
    searched = report.any_search
    lines += ["", "## Every fold", "", f"| arm | budget | fold | train | held-out |{columns} seconds |"
              + (" chosen | search seconds |" if searched else ""),
              "|---|---|---|---|---|" + "---|" * (len(metrics) + 1 + 2 * searched)]
    for (arm, budget), recs in all_records.items():
        for k in sorted(recs):
            r = recs[k]
            values = "".join(f" {r['metrics'][m]:.4f} |" for m in metrics)
            extra = ""
            if searched:
                search = r.get("search") or {}
                extra = f" {describe_values(r.get('chosen') or {})} | {search.get('seconds', 0):.1f} |"
            lines.append(f"| {arm} | {_pct(budget)} | {k} | {r['num_train']} | {r['num_validation']} |"
                         f"{values} {r['seconds']:.1f} |{extra}")
    lines += ["", "## How to read this", "",
              "- Each verdict compares an arm with the baseline fold by fold (paired), so differences between "
              "folds' difficulty cancel out.",
              "- *No significant difference* is not proof of equality: with few folds, small effects go undetected. "
              "Look at the confidence interval: it bounds the plausible effect.",
              "- Folds share training data, so the plain paired t-test is somewhat optimistic; "
              "`study.test=corrected_t` (Nadeau & Bengio) is the conservative alternative.",
              "", f"Made with hftl in {report.seconds:.0f} s ({report.trained} runs trained, {report.skipped} "
              "resumed from records)."]
    return "\n".join(lines) + "\n"


def _epochs(train) -> str:
    """A configured budget, or what train.epochs null means (enough passes for train.min_steps steps)."""
    if train.epochs is not None:
        return f"{train.epochs} epoch{'s' if train.epochs != 1 else ''}"
    return f"enough epochs for {train.min_steps} optimizer steps and at least 3 (train.epochs null)"


def _lr(value: float | None) -> str:
    """A configured rate, or what train.lr null means (the network's default for how it starts)."""
    return "the network's default (train.lr null)" if value is None else f"{value:g}"


def _search_bullet(report: StudyReport, cfg: StudyConfig) -> str:
    if not report.any_search:
        return ("- Hyperparameters: every arm at its configured values (no search: study.search=false or one "
                "candidate per arm).")
    return (f"- Hyperparameters: each arm chose its own values per fold (and label budget) by {report.metric} on an "
            f"inner validation split of that fold's training examples ({_pct(cfg.study.search_validation)}, "
            "stratified, seeded, the same for every arm), then trained them on the whole training fold; the "
            "held-out fold was never used to choose (nested cross-validation). Ties go to the lower loss.")


def _search_lines(report: StudyReport, all_records: dict) -> list[str]:
    """Each searched arm's choice per fold, with the inner-split score of every candidate."""
    if not report.any_search:
        return []
    lines = ["", f"What each arm chose, fold by fold ({report.metric} of each candidate on the inner split; "
                 "the chosen one in bold):", "", "| arm | budget | fold | candidates |", "|---|---|---|---|"]
    for (arm, budget), recs in all_records.items():
        if not report.searched.get(arm):
            continue
        for k in sorted(recs):
            search = recs[k].get("search") or {}
            cells = []
            for c in search.get("candidates", []):
                text = f"{describe_values(c['values'])}: {c['metrics'][report.metric]:.3f}"
                cells.append(f"**{text}**" if c["values"] == search.get("chosen") else text)
            lines.append(f"| {arm} | {_pct(budget)} | {k} | {', '.join(cells) or 'one candidate: ' + describe_values(search.get('chosen') or {})} |")
    edges = sorted({arm for (arm, _), recs in all_records.items() for r in recs.values()
                    if (r.get("search") or {}).get("at_grid_edge")})
    if edges:
        lines += ["", f"Chosen at the end of its grid (the best value may lie beyond it; widen `study.search`): "
                      f"{', '.join(edges)}."]
    return lines


def _sources_lines(sources: dict, metric: str) -> list[str]:
    """The table of source models a study pretrained itself, with each one's validation ``metric``."""
    if not sources:
        return []
    lines = ["", "Source models the study pretrained itself (`pretrain:NAME`):", "",
             f"| source | from | data | classes | labels | epochs | its validation {metric} |",
             "|---|---|---|---|---|---|---|"]
    for name, r in sources.items():
        lines.append(f"| {name} | `{r['model']}` ({r['strategy']}) | `{r['data']}` | {', '.join(r['classes'])} | "
                     f"{'**shuffled**' if r['shuffle_labels'] else 'true'} | {r['epochs']} | "
                     f"{r['metrics'].get(metric, float('nan')):.3f} |")
    return lines


def _ranking_lines(ranking: dict) -> list[str]:
    """study.rank_first: each source's scores on the pool, which were kept, and the arms that did not run."""
    if not ranking:
        return []
    from hftl.transferability import SCORE_NAMES

    rows = ranking["sources"]
    shown = [n for n in SCORE_NAMES if any(n in r for r in rows)]
    lines = ["", f"Sources ranked before training (`study.rank_first: {ranking['k']}`, by LogME on the frozen "
                 "features of the whole pool; nothing was trained for this, but the scores saw every fold's labels, "
                 "so the choice of arms is not itself cross-validated):", "",
             "| source | arms | " + " | ".join(shown) + " | run |", "|---|---|" + "---|" * (len(shown) + 1)]
    for r in rows:
        cells = " | ".join(f"{r[n]:.4g}" if n in r else "n/a" for n in shown)
        lines.append(f"| `{r['candidate']}` | {', '.join(r['arms'])} | {cells} | "
                     f"{'yes' if r['candidate'] in ranking['kept'] else '**no**'} |")
    if ranking["dropped_arms"]:
        lines += ["", f"Arms not run: {', '.join(ranking['dropped_arms'])}."]
    return lines
