"""What an RL transfer study found: the table the CLI prints, report.md and the learning-curve plot.

Everything here reads an :class:`RLStudyReport` (filled by :mod:`hftl.rl.runner`); nothing trains
or computes a statistic. The verdict marks and wording are those of supervised studies
(:mod:`hftl.study.report`).

Example:
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hftl.rl.config import ARM_TEXT
from hftl.study.report import MARKS

LABELS = {"jumpstart": "jumpstart (return at step 0)", "steps": "steps to threshold", "auc": "AUC (mean return)",
          "final": "final return"}


def _num(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:,.{digits}f}"


def _steps(x: float) -> str:
    return "not reached" if math.isinf(x) else _num(x, 0)


@dataclass
class RLStudyReport:
    """An RL study's numbers: per arm and measure, the per-seed values, their summary and the comparison."""

    name: str
    output_dir: Path
    arms: list
    kinds: dict
    baseline: str
    metric: str
    threshold: float
    seeds: int
    timesteps: int
    source_env: str
    target_env: str
    source: dict  # the source agent's record: its return on the source and on the target before training
    measures: dict  # arm -> measure -> [per-seed values]; steps: None where the threshold was not reached
    summaries: dict  # arm -> measure -> ArmSummary
    comparisons: dict  # arm -> measure -> RLComparison (not for the baseline)
    trained: int = 0
    skipped: int = 0
    seconds: float = 0.0
    hardware: str = ""
    files: dict = field(default_factory=dict)

    @property
    def source_solves_target(self) -> bool:
        """The source agent already reaches the threshold on the target before any training: nothing to show."""
        return self.source.get("return_on_target", -math.inf) >= self.threshold

    @property
    def nobody_solved(self) -> bool:
        return all(self.summaries[a]["steps"].solved == 0 for a in self.arms)

    def verdict(self, arm: str, measure: str | None = None) -> str | None:
        c = self.comparisons.get(arm, {}).get(measure or self.metric)
        return c.verdict if c else None

    def warnings(self) -> list[str]:
        out = []
        if self.source_solves_target:
            out.append(f"The source agent already solves the target before any training (mean return "
                       f"{self.source['return_on_target']:.1f} ≥ threshold {self.threshold:g}): this target cannot show "
                       "how much transfer speeds learning up. Choose a target further from the source.")
        if self.nobody_solved:
            out.append(f"No arm reached the threshold {self.threshold:g} in any seed within {self.timesteps:,} steps: "
                       "steps to threshold shows failures only. Raise study.timesteps or lower study.threshold.")
        return out

    def summary(self) -> str:
        """Plain text: one row per arm (IQM of each measure, solved seeds, the verdict on the study's metric)."""
        head = f"{'arm':<16}{'jumpstart':>11}{'steps (solved)':>22}{'AUC':>9}{'final':>9}  verdict ({self.metric})"
        lines = [f"RL transfer study '{self.name}': {self.source_env} -> {self.target_env}, "
                 f"{self.seeds} seeds, {self.timesteps:,} steps", head]
        for arm in self.arms:
            s = self.summaries[arm]
            st = s["steps"]
            steps = f"{_steps(st.median)} ({st.solved}/{st.n})"
            verdict = self.verdict(arm) or "baseline"
            lines.append(f"{arm:<16}{_num(s['jumpstart'].iqm):>11}{steps:>22}{_num(s['auc'].iqm):>9}"
                         f"{_num(s['final'].iqm):>9}  {verdict}")
        lines.append(f"(IQM over seeds; steps: median, failures counted as not reached; threshold {self.threshold:g})")
        lines += [f"Warning: {w}" for w in self.warnings()]
        if self.files.get("report"):
            lines.append(f"Report: {self.files['report']}")
        return "\n".join(lines)

    def markdown_table(self) -> str:
        conf = "95%"
        lines = [f"| arm | kind | {LABELS['jumpstart']} | {LABELS['steps']}: solved, median [IQM] | {LABELS['auc']} | "
                 f"{LABELS['final']} | Δ {self.metric} vs {self.baseline} (IQM) [{conf} CI] | p (permutation) | verdict |",
                 "|---|---|---|---|---|---|---|---|---|"]
        def cell(x) -> str:
            return f"{_num(x.iqm)} [{_num(x.ci_low)}, {_num(x.ci_high)}]"

        for arm in self.arms:
            s = self.summaries[arm]
            st = s["steps"]
            steps = f"{st.solved}/{st.n}, {_steps(st.median)} [{_steps(st.iqm)}]"
            c = self.comparisons.get(arm, {}).get(self.metric)
            if c is None:
                diff, p, verdict = "—", "—", "baseline"
            else:
                diff = f"{_num(c.diff)} [{_num(c.ci_low)}, {_num(c.ci_high)}]"
                p, verdict = f"{c.p_value:.3g}", f"**{c.verdict}**"
            lines.append(f"| {arm} | {self.kinds[arm]} | {cell(s['jumpstart'])} | {steps} | {cell(s['auc'])} | "
                         f"{cell(s['final'])} | {diff} | {p} | {verdict} |")
        return "\n".join(lines)

    def verdict_table(self) -> str:
        """Every measure's verdict per arm (the study's metric decides; the others are shown for reading)."""
        lines = ["| arm | " + " | ".join(LABELS[m] for m in LABELS) + " |", "|---|" + "---|" * len(LABELS)]
        for arm in self.arms:
            if arm == self.baseline:
                continue
            cells = []
            for m in LABELS:
                c = self.comparisons[arm][m]
                cells.append(f"{c.verdict}{MARKS.get(c.verdict, '')} (p {c.p_value:.3g})")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"name": self.name, "arms": self.arms, "kinds": self.kinds, "baseline": self.baseline,
                "metric": self.metric, "threshold": self.threshold, "seeds": self.seeds, "timesteps": self.timesteps,
                "source_env": self.source_env, "target_env": self.target_env, "source": self.source,
                "measures": self.measures,
                "summaries": {a: {m: s.to_dict() for m, s in by.items()} for a, by in self.summaries.items()},
                "comparisons": {a: {m: c.to_dict() for m, c in by.items()} for a, by in self.comparisons.items()},
                "warnings": self.warnings(), "trained": self.trained, "skipped": self.skipped,
                "seconds": self.seconds, "hardware": self.hardware}


def plot_curves(report: RLStudyReport, records: dict, path: Path) -> Path:
    """learning_curves.png: each arm's IQM return over seeds against target steps, with the 25-75% band."""
    from matplotlib.figure import Figure

    from hftl.rl.measures import mean_curve

    fig = Figure(figsize=(6.4, 4.2), dpi=130, layout="constrained")
    ax = fig.subplots()
    end = max(r["curve"]["steps"][-1] for recs in records.values() for r in recs)
    grid = np.linspace(0, end, 101)
    for arm in report.arms:
        curves = [(r["curve"]["steps"], r["curve"]["returns"]) for r in records[arm]]
        centre, low, high = mean_curve(curves, grid)
        line, = ax.plot(grid, centre, label=arm, linestyle="--" if arm == report.baseline else "-")
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
    ax.axhline(report.threshold, color="#9e9e9e", linestyle=":", linewidth=1)
    ax.annotate("threshold", (end, report.threshold), xytext=(0, 2), textcoords="offset points", ha="right",
                va="bottom", fontsize=7, color="#757575")
    ax.set_xlabel("environment steps on the target")
    ax.set_ylabel("mean return (deterministic)")
    ax.set_title(f"{report.name}: {report.source_env} → {report.target_env}\nIQM over {report.seeds} seeds, "
                 "band: 25th-75th percentile", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def render_markdown(report: RLStudyReport, cfg, records: dict, plot: Path) -> str:
    """report.md: warnings and verdicts first, then the table, the plot, what was run and every seed's numbers."""
    src, s, ppo = report.source, cfg.study, cfg.ppo
    lines = [f"# RL transfer study: {report.name}", "",
             f"Source **{report.source_env}** → target **{report.target_env}**; {len(report.arms)} arms × "
             f"{report.seeds} seeds × {report.timesteps:,} target steps. Verdicts on {LABELS[report.metric]} vs "
             f"`{report.baseline}`: " + "; ".join(f"**{a}**: {report.verdict(a)}" for a in report.arms
                                                  if a != report.baseline) + ".", ""]
    lines += [f"> **Warning:** {w}" for w in report.warnings()] + ([""] if report.warnings() else [])
    lines += ["## Results", "", report.markdown_table(), "",
              "IQM (interquartile mean) over seeds with its percentile-bootstrap 95% interval; steps to threshold: "
              "how many seeds reached the threshold, the median and the IQM over all seeds, a failure counted as not "
              "reached (∞), never dropped. Δ is the arm's IQM minus the baseline's; p is a two-sided permutation test "
              "on the seeds' ranks.", "", f"![learning curves]({plot.name})", "",
              "Every measure's verdict (the study decides on its metric; the others are for reading):", "",
              report.verdict_table(), ""]
    how = (f"given: `{src.get('agent')}`" if src.get("agent") else
           f"PPO trained for {src.get('timesteps'):,} steps (seed {src.get('seed')}, {src.get('seconds')} s)")
    lines += ["## What was run", "",
              f"- Source agent: {how}; mean return {src['return_on_source']:.1f} on the source, "
              f"{src['return_on_target']:.1f} ± {src['std_on_target']:.1f} on the target before any training "
              "(the screening).",
              f"- Each arm trained {report.timesteps:,} target steps per seed, seeds {s.seed}..{s.seed + s.seeds - 1} "
              "(the same for every arm); evaluated every "
              f"{s.eval_every:,} steps on {s.eval_episodes} episodes (deterministic actions, the same episode seeds "
              f"for every arm and point); threshold {report.threshold:g}.",
              f"- PPO (stable-baselines3): {ppo.n_envs} envs × {ppo.n_steps} steps per rollout, batch {ppo.batch_size}, "
              f"{ppo.n_epochs} epochs, gamma {ppo.gamma}, GAE lambda {ppo.gae_lambda}, lr {ppo.learning_rate:g} "
              f"({ppo.lr_schedule}), clip {ppo.clip_range} ({ppo.clip_schedule}), ent_coef {ppo.ent_coef}, net "
              f"{ppo.net_arch} ({ppo.activation}).", "",
              "| arm | kind | how it starts | ent_coef |", "|---|---|---|---|"]
    for arm in cfg.arms:
        lines.append(f"| {arm.name} | {arm.kind} | {ARM_TEXT[arm.kind]} | "
                     f"{arm.ent_coef if arm.ent_coef is not None else ppo.ent_coef} |")
    lines += ["", "## Every seed", "", "| arm | seed | jumpstart | steps to threshold | AUC | final | seconds |",
              "|---|---|---|---|---|---|---|"]
    for arm in report.arms:
        for r, i in zip(records[arm], range(len(records[arm]))):
            m = {k: report.measures[arm][k][i] for k in LABELS}
            steps = "not reached" if m["steps"] is None else f"{m['steps']:,}"
            lines.append(f"| {arm} | {r['seed']} | {m['jumpstart']:.1f} | {steps} | {m['auc']:.1f} | "
                         f"{m['final']:.1f} | {r['seconds']:.1f} |")
    lines += ["", f"Made with hftl in {report.seconds:.0f} s on {report.hardware} ({report.trained} trainings, "
                  f"{report.skipped} resumed from records). Each seed's agent is in `runs/<arm>/seed<k>/` (SB3 zip, "
                  "safetensors, card)."]
    return "\n".join(lines) + "\n"


def write_report(report: RLStudyReport, cfg, records: dict) -> None:
    """Write learning_curves.png and report.md into the study's folder."""
    out = report.output_dir
    plot = plot_curves(report, records, out / "learning_curves.png")
    (out / "report.md").write_text(render_markdown(report, cfg, records, plot))
    report.files = {"report": out / "report.md", "plot": plot, "study.json": out / "study.json"}
