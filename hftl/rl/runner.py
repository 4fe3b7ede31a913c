"""Running an RL transfer study: the source agent, every arm over every seed (recorded, resumable), the analysis.

:func:`run_rl_study` reads the config (:mod:`hftl.rl.config`), trains (or loads) the source agent,
screens the target (does the source already solve it?), then trains each arm on the target for
each seed, recording its learning curve. Each finished seed leaves a small record in ``records/``
whose key is everything that decides its result: a rerun with the same config skips it, so a
killed study resumes from the seeds it finished. The measures are computed from the recorded
curves (:mod:`hftl.rl.measures`), so changing only the threshold retrains nothing.

Example:
    >>> report = run_rl_study("recipes/configs/rl/cartpole_pole_length.yaml", ["study.seeds=3"])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from hftl.rl.config import (
    ARM_TEXT,
    MEASURES,
    RLArm,
    RLStudyConfig,
    load_rl_study_config,
    rl_study_config_from_dict,
)
from hftl.rl.measures import compare, curve_measures, summarise
from hftl.rl.report import RLStudyReport, write_report

logger = logging.getLogger(__name__)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def arm_ppo(cfg: RLStudyConfig, arm: RLArm):
    """The PPO settings an arm trains with: the study's, with the arm's entropy coefficient and widths."""
    ppo = copy.deepcopy(cfg.ppo)
    if arm.ent_coef is not None:
        ppo.ent_coef = arm.ent_coef
    if arm.net_arch is not None:
        ppo.net_arch = list(arm.net_arch)
    return ppo


def train_arm(cfg: RLStudyConfig, arm: RLArm, source, seed: int):
    """Train one arm for one seed on the target: (agent, learning curve, what was transferred or distilled).

    Example:
        >>> agent, curve, info = train_arm(cfg, cfg.arms[1], source, seed=0)  # doctest: +SKIP
        >>> curve["steps"][:3]  # doctest: +SKIP
        [0, 1024, 2048]
    """
    from hftl.rl.agents import TRANSFERS, make_mixed_vec_env, new_agent
    from hftl.rl.distill import distill
    from hftl.rl.evaluate import curve_callback, evaluate_policy

    s, target = cfg.study, cfg.target_env
    ppo = arm_ppo(cfg, arm)
    mixed = make_mixed_vec_env([cfg.source_env, target], ppo.n_envs, seed) if arm.kind == "multitask" else None
    agent = new_agent(ppo, target, seed, vec_env=mixed)
    info: dict = {}
    if arm.kind in TRANSFERS:
        info["transfer"] = TRANSFERS[arm.kind](source, agent)
    curve: dict = {"steps": [], "returns": [], "std": []}

    def point(steps: int) -> None:
        returns = evaluate_policy(agent.policy, target, s.eval_episodes)
        curve["steps"].append(steps)
        curve["returns"].append(float(np.mean(returns)))
        curve["std"].append(float(np.std(returns)))

    offset = 0
    if arm.kind == "distill":
        point(0)  # the student before distillation: its jumpstart is that of a fresh agent
        info["distill"] = distill(agent, source, arm.distill_steps, arm.distill_rounds, arm.distill_epochs,
                                  arm.distill_lr, batch_size=cfg.ppo.batch_size, seed=seed, on_round=point)
        offset = info["distill"]["steps"]
    agent.learn(s.timesteps - offset, callback=curve_callback(target, s.eval_every, s.eval_episodes, offset, curve))
    if arm.kind == "multitask":  # one net for both variants: how it does on the other one too
        info["multitask"] = {"return_on_source": float(np.mean(evaluate_policy(agent.policy, cfg.source_env,
                                                                                s.eval_episodes))),
                             "variants": [cfg.source_env.to_dict(), target.to_dict()]}
    return agent, curve, info


class _RLStudy:
    """One study's state through its steps (source, screening, seeds, analysis, files)."""

    def __init__(self, cfg: RLStudyConfig):
        self.cfg = cfg
        self.s = cfg.study
        self.out = cfg.output_dir
        self.records = self.out / "records"
        self.trained = 0
        self.skipped = 0

    # -- the source ------------------------------------------------------------------------------
    def source_key(self) -> str:
        src = dataclasses.asdict(self.cfg.source)
        if src["agent"]:
            path = Path(src["agent"])
            src["agent_mtime"] = path.stat().st_mtime if path.exists() else None
        return _hash({"source": src, "ppo": self.cfg.ppo.to_dict()})

    def source(self):
        """The source agent (trained here, reloaded from its record, or the one source.agent points at)."""
        from hftl.rl.agents import new_agent
        from hftl.rl.evaluate import evaluate_policy
        from hftl.rl.outputs import load_agent, save_agent

        src, folder = self.cfg.source, self.out / "source"
        self.key = self.source_key()
        record = _read_json(self.records / "source.json")
        if src.agent:
            # The user named this file: an SB3 zip is a pickle and is read only because they pointed at it.
            agent = load_agent(src.agent, self.cfg.source_env, allow_pickle=True)
        elif record and record.get("key") == self.key and (folder / "policy.safetensors").is_file():
            self.skipped += 1
            self.source_info = record
            return load_agent(folder, self.cfg.source_env)
        else:
            started = time.perf_counter()
            agent = new_agent(self.cfg.ppo, self.cfg.source_env, src.seed)
            agent.learn(src.timesteps)
            self.trained += 1
            seconds = time.perf_counter() - started
        on_source = evaluate_policy(agent.policy, self.cfg.source_env, self.s.eval_episodes)
        on_target = evaluate_policy(agent.policy, self.cfg.target_env, self.s.eval_episodes)
        record = {"key": self.key, "env": self.cfg.source_env.to_dict(), "agent": src.agent,
                  "timesteps": None if src.agent else src.timesteps, "seed": src.seed,
                  "return_on_source": float(np.mean(on_source)), "return_on_target": float(np.mean(on_target)),
                  "std_on_target": float(np.std(on_target)),
                  "seconds": None if src.agent else round(seconds, 2)}
        if not src.agent:
            save_agent(folder, agent, {"env": self.cfg.source_env.to_dict(), "ppo": self.cfg.ppo.to_dict(),
                                       "arm": "source", "source_env": None, "study": self.name, "seed": src.seed,
                                       "timesteps": src.timesteps, "mean_reward": record["return_on_source"],
                                       "std_reward": float(np.std(on_source)), "episodes": self.s.eval_episodes,
                                       "hardware": _hardware(), "train_seconds": seconds})
            record["agent_dir"] = str(folder)
        _write_json_atomic(self.records / "source.json", record)
        self.source_info = record
        return agent

    @property
    def name(self) -> str:
        return self.s.name or self.out.name

    # -- one seed of one arm -----------------------------------------------------------------------
    def run_key(self, arm: RLArm, seed: int) -> str:
        s = self.s
        return _hash({"arm": arm.to_dict(), "ppo": self.cfg.ppo.to_dict(), "target": self.cfg.target_env.to_dict(),
                      "source": self.key if arm.kind not in ("scratch", "multitask") else None, "seed": seed,
                      "timesteps": s.timesteps, "eval_every": s.eval_every, "eval_episodes": s.eval_episodes})

    def run_seed(self, arm: RLArm, k: int, source) -> dict:
        from hftl.rl.outputs import save_agent

        seed = self.s.seed + k
        key = self.run_key(arm, seed)
        path = self.records / f"{arm.name}__seed{k}.json"
        record = _read_json(path)
        if record and record.get("key") == key:
            self.skipped += 1
            return record
        started = time.perf_counter()
        agent, curve, info = train_arm(self.cfg, arm, source, seed)
        seconds = time.perf_counter() - started
        self.trained += 1
        folder = self.out / "runs" / arm.name / f"seed{k}"
        save_agent(folder, agent, {
            "env": self.cfg.target_env.to_dict(), "ppo": arm_ppo(self.cfg, arm).to_dict(), "arm": arm.name,
            "arm_text": ARM_TEXT[arm.kind], "source_env": None if arm.kind in ("scratch", "multitask") else
            self.cfg.source_env.to_dict(), "study": self.name, "seed": seed, "timesteps": curve["steps"][-1],
            "mean_reward": curve["returns"][-1], "std_reward": curve["std"][-1], "episodes": self.s.eval_episodes,
            "hardware": _hardware(), "train_seconds": seconds, **info})
        record = {"key": key, "arm": arm.name, "kind": arm.kind, "seed": seed, "curve": curve, **info,
                  "seconds": round(seconds, 2), "agent_dir": str(folder),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(path, record)
        return record

    # -- the whole study ---------------------------------------------------------------------------
    def run(self) -> RLStudyReport:
        import torch
        from tqdm.auto import tqdm

        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.s.torch_threads)  # small MLPs: more threads only add overhead
        try:
            source = self.source()
            records: dict = {}
            with tqdm(total=len(self.cfg.arms) * self.s.seeds, desc="rl study", unit="run", dynamic_ncols=True) as bar:
                for arm in self.cfg.arms:
                    records[arm.name] = []
                    for k in range(self.s.seeds):
                        bar.set_description(f"arm {arm.name} seed {k + 1}/{self.s.seeds}")
                        records[arm.name].append(self.run_seed(arm, k, source))
                        last = records[arm.name][-1]["curve"]["returns"][-1]
                        logger.info("%s seed %d: final return %.1f", arm.name, k, last)
                        bar.update(1)
        finally:
            torch.set_num_threads(threads)
        report = self.analyse(records)
        report.seconds = time.perf_counter() - started
        write_report(report, self.cfg, records)
        _write_json_atomic(self.out / "study.json", {**report.to_dict(), "config": self.cfg.raw, "runs": records})
        return report

    def analyse(self, records: dict) -> RLStudyReport:
        s, threshold = self.s, self.cfg.threshold
        measures = {arm: {m: [] for m in MEASURES} for arm in records}
        for arm, recs in records.items():
            for r in recs:
                for m, v in curve_measures(r["curve"]["steps"], r["curve"]["returns"], threshold).items():
                    measures[arm][m].append(v)
        summaries = {arm: {m: summarise(m, v, s.alpha, s.bootstrap, s.seed) for m, v in by.items()}
                     for arm, by in measures.items()}
        comparisons = {arm: {m: compare(measures[arm][m], measures[s.baseline][m], m, alpha=s.alpha,
                                        resamples=s.bootstrap, permutations=s.permutations, seed=s.seed, arm=arm,
                                        baseline=s.baseline) for m in MEASURES}
                       for arm in records if arm != s.baseline}
        return RLStudyReport(
            name=self.name, output_dir=self.out, arms=list(records), kinds={a.name: a.kind for a in self.cfg.arms},
            baseline=s.baseline, metric=s.metric, threshold=threshold, seeds=s.seeds, timesteps=s.timesteps,
            source_env=self.cfg.source_env.describe(), target_env=self.cfg.target_env.describe(),
            source=self.source_info, measures=measures, summaries=summaries, comparisons=comparisons,
            trained=self.trained, skipped=self.skipped, hardware=_hardware())


def _hardware() -> str:
    from hftl.cards import hardware

    return hardware()


def run_rl_study(config: RLStudyConfig | str | Path | dict | None, overrides: list[str] | None = None) -> RLStudyReport:
    """Run an RL transfer study; returns its :class:`~hftl.rl.report.RLStudyReport`.

    ``config`` is a YAML path, a mapping of its shape or an :class:`RLStudyConfig`. A rerun with the
    same config skips every finished seed (resume).

    Example:
        >>> report = run_rl_study("recipes/configs/rl/cartpole_pole_length.yaml", ["study.seeds=3"])  # doctest: +SKIP
        >>> report.verdict("parameter")  # doctest: +SKIP
        'positive transfer'
    """
    from hftl.config import parse_overrides
    from hftl.rl.config import _merge

    if isinstance(config, RLStudyConfig):
        cfg = config if not overrides else rl_study_config_from_dict(_merge(config.raw, parse_overrides(overrides)))
    elif isinstance(config, dict):
        cfg = rl_study_config_from_dict(_merge(config, parse_overrides(overrides or [])))
    else:
        cfg = load_rl_study_config(config, overrides)
    return _RLStudy(cfg).run()
