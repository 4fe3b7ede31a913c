"""An RL transfer study's config: ``source:`` and ``target:`` environments, ``ppo:`` settings, ``study:`` arms and seeds.

Validated like hftl's other configs (``hftl.config``'s typed fields with help text; an unknown key
names itself and the valid ones), plus what only an RL study has: environment ids and physics
parameters are checked against gymnasium, and the evaluation interval against PPO's rollout size.

Example:
    >>> cfg = rl_study_config_from_dict({"target": {"env": "CartPole-v1", "physics": {"length": 1.0}},
    ...                                  "study": {"seeds": 3, "timesteps": 4096}})  # doctest: +SKIP
    >>> [a.name for a in cfg.arms]  # doctest: +SKIP
    ['scratch', 'parameter', 'partial', 'policy']
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hftl.config import _apply, _f, parse_overrides
from hftl.errors import ConfigError
from hftl.rl.envs import EnvConfig, check_env, reward_threshold

ARM_KINDS = ("scratch", "parameter", "partial", "policy", "distill", "multitask")
MEASURES = ("jumpstart", "steps", "auc", "final")  # Taylor & Stone (2009); steps: to reach the threshold
SECTIONS = ("source", "target", "ppo", "study")
# How each arm's agent starts on the target (report.md and the cards say it so).
ARM_TEXT = {"scratch": "a fresh PPO agent", "parameter": "all weights of the source agent, fresh optimizer",
            "partial": "shared trunk copied, fresh action and value heads",
            "policy": "the source agent continues as is (weights and optimizer state)",
            "distill": "a student trained to match the source's actions (DAgger, KL) on target states, then PPO",
            "multitask": "one fresh agent trained on the source and target variants at once (half the envs each)"}


@dataclass
class SourceConfig:
    env: str = _f("CartPole-v1", "Gymnasium id of the source environment.")
    physics: dict = _f({}, "Physics changed from the env's defaults, e.g. {length: 0.5} (CartPole's pole half-length).")
    timesteps: int = _f(50_000, "Environment steps the study trains its source agent for (PPO, the ppo: settings).")
    seed: int = _f(1000, "Seed of the source agent's training.")
    agent: str | None = _f(
        None, "Use this trained agent instead of training one: an hftl agent folder (read from safetensors) or an "
              "SB3 .zip. An SB3 zip is a pickle and can run code when loaded: point only at files you trust.")


@dataclass
class TargetConfig:
    env: str = _f("CartPole-v1", "Gymnasium id of the target environment.")
    physics: dict = _f({}, "Physics changed from the env's defaults, e.g. {length: 1.0}.")


@dataclass
class PPOConfig:
    """PPO's settings; the defaults are rl_zoo3's tuned CartPole-v1 hyperparameters."""

    n_envs: int = _f(8, "Parallel environments per agent (SB3 DummyVecEnv).")
    n_steps: int = _f(32, "Steps per environment per rollout (a rollout is n_envs * n_steps steps).")
    batch_size: int = _f(256, "Minibatch size of PPO's updates.")
    n_epochs: int = _f(20, "Passes over each rollout.")
    gamma: float = _f(0.98, "Discount factor.")
    gae_lambda: float = _f(0.8, "GAE lambda.")
    learning_rate: float = _f(0.001, "Adam learning rate (at the start, with lr_schedule: linear).")
    lr_schedule: str = _f("linear", "linear (to 0 over the run, rl_zoo3's lin_) or constant.")
    clip_range: float = _f(0.2, "PPO clip range (at the start, with clip_schedule: linear).")
    clip_schedule: str = _f("linear", "linear (to 0 over the run) or constant.")
    ent_coef: float = _f(0.0, "Entropy bonus coefficient.")
    vf_coef: float = _f(0.5, "Value loss coefficient.")
    max_grad_norm: float = _f(0.5, "Gradient clipping norm.")
    net_arch: list = _f([64, 64], "Hidden layer widths of the policy and value networks (SB3 MlpPolicy's default).")
    activation: str = _f("tanh", "Hidden activation: tanh (SB3's default) or relu.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RLStudySettings:
    arms: list = _f(
        ["scratch", "parameter", "partial", "policy"],
        "Arms to compare: scratch, parameter (all weights of the source), partial (shared trunk, fresh action and "
        "value heads), policy (the source agent continues as is, optimizer included), distill (a student matches "
        "the source's actions on states it visits in the target, then trains with PPO), multitask (one fresh agent "
        "trains on source and target variants at once, half the envs each: the budget counts both); or mappings "
        "{name, kind, ent_coef, net_arch, distill_steps, distill_rounds, distill_epochs, distill_lr}.")
    baseline: str = _f("scratch", "The arm the others are compared with.")
    seeds: int = _f(10, "Independent runs per arm (seed = study.seed + index, the same seeds for every arm).")
    seed: int = _f(0, "First seed.")
    timesteps: int = _f(20_000, "Environment steps each arm trains on the target, per seed.")
    eval_every: int = _f(1024, "Environment steps between evaluations (the learning curve); a multiple of "
                               "ppo.n_envs * ppo.n_steps.")
    eval_episodes: int = _f(10, "Episodes per evaluation (deterministic actions, the same episode seeds for every arm).")
    threshold: float | None = _f(None, "Return that counts as solved (steps to threshold); null: the env's "
                                       "reward_threshold (CartPole-v1: 475).")
    metric: str = _f("auc", "Measure the verdicts are decided on: jumpstart, steps, auc or final.")
    alpha: float = _f(0.05, "Significance level of the permutation tests; the bootstrap intervals are 1 - alpha.")
    bootstrap: int = _f(2000, "Bootstrap resamples for the IQM confidence intervals.")
    permutations: int = _f(20_000, "Random permutations of the test (exact when there are fewer arrangements).")
    torch_threads: int = _f(1, "torch threads while training (small MLPs run fastest on one).")
    output_dir: str = _f("outputs/rl_study", "Folder for report.md, study.json, the plot, records and agents.")
    name: str | None = _f(None, "Title of the report (default: the output folder's name).")


@dataclass
class RLArm:
    """One arm: how its agent starts on the target."""

    name: str
    kind: str
    ent_coef: float | None = None  # None: ppo.ent_coef. policy: raise it to keep a converged policy exploring
    net_arch: list | None = None  # distill: the student's hidden widths (None: ppo.net_arch)
    distill_steps: int = 2048  # distill: target steps of DAgger rollouts (counted in the budget)
    distill_epochs: int = 10  # distill: passes over the aggregated states after each rollout
    distill_lr: float = 0.001
    distill_rounds: int = 4  # distill: DAgger rounds the steps are split into

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RLStudyConfig:
    source: SourceConfig
    target: TargetConfig
    ppo: PPOConfig
    study: RLStudySettings
    arms: list[RLArm]
    raw: dict

    @property
    def source_env(self) -> EnvConfig:
        return EnvConfig(self.source.env, dict(self.source.physics))

    @property
    def target_env(self) -> EnvConfig:
        return EnvConfig(self.target.env, dict(self.target.physics))

    @property
    def output_dir(self) -> Path:
        return Path(self.study.output_dir)

    @property
    def threshold(self) -> float:
        return float(self.study.threshold)


def is_rl_config(data) -> bool:
    """Whether a study mapping is an RL study (it has ``target:``, ``source:`` or ``ppo:``), not a supervised one.

    Example:
        >>> is_rl_config({"target": {"env": "CartPole-v1"}}), is_rl_config({"base": {}, "study": {}})
        (True, False)
    """
    return isinstance(data, dict) and any(k in data for k in ("source", "target", "ppo"))


_ARM_KEYS = tuple(f.name for f in dataclasses.fields(RLArm))


def _parse_arm(entry, index: int) -> RLArm:
    if isinstance(entry, str):
        if entry not in ARM_KINDS:
            raise ConfigError(f"study.arms[{index}] '{entry}' is not an arm. Use one of {', '.join(ARM_KINDS)}, or a "
                              "mapping {name, kind, ...}.")
        return RLArm(entry, entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"study.arms[{index}] must be an arm name or a mapping, not {entry!r}.")
    unknown = [k for k in entry if k not in _ARM_KEYS]
    if unknown:
        raise ConfigError(f"Unknown key '{unknown[0]}' in study.arms[{index}]. Valid keys: {', '.join(_ARM_KEYS)}.")
    name = entry.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"study.arms[{index}] needs a name of letters, digits, _ or - (e.g. policy_explore).")
    kind = entry.get("kind", name)
    if kind not in ARM_KINDS:
        raise ConfigError(f"Arm '{name}' has kind '{kind}'. Valid kinds: {', '.join(ARM_KINDS)}.")
    arm = RLArm(name, kind)
    _apply(arm, {k: v for k, v in entry.items() if k not in ("name", "kind")}, prefix=f"study.arms[{index}].")
    return arm


def _validate(cfg: RLStudyConfig) -> None:
    s, ppo = cfg.study, cfg.ppo
    for what, env in (("source", cfg.source_env), ("target", cfg.target_env)):
        try:
            check_env(env)
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
    rollout = ppo.n_envs * ppo.n_steps
    if s.eval_every <= 0 or s.eval_every % rollout:
        raise ConfigError(f"study.eval_every ({s.eval_every}) must be a positive multiple of ppo.n_envs * ppo.n_steps "
                          f"({rollout}): PPO changes its policy once per rollout. E.g. study.eval_every={rollout * 4}.")
    if s.timesteps < s.eval_every:
        raise ConfigError(f"study.timesteps ({s.timesteps}) is shorter than study.eval_every ({s.eval_every}).")
    if s.seeds < 2:
        raise ConfigError(f"study.seeds must be at least 2 (got {s.seeds}); 10 is the usual minimum for a verdict.")
    if s.metric not in MEASURES:
        raise ConfigError(f"study.metric '{s.metric}' is not a measure. Use one of {', '.join(MEASURES)}.")
    if not 0 < s.alpha < 0.5:
        raise ConfigError(f"study.alpha must be between 0 and 0.5 (got {s.alpha}); 0.05 is usual.")
    if ppo.lr_schedule not in ("linear", "constant") or ppo.clip_schedule not in ("linear", "constant"):
        raise ConfigError("ppo.lr_schedule and ppo.clip_schedule are linear or constant.")
    if ppo.activation not in ("tanh", "relu"):
        raise ConfigError(f"ppo.activation '{ppo.activation}' is not tanh or relu.")
    if ppo.batch_size > rollout:
        raise ConfigError(f"ppo.batch_size ({ppo.batch_size}) exceeds a rollout ({rollout} steps).")
    if cfg.source.agent is None and cfg.source.timesteps < rollout:
        raise ConfigError(f"source.timesteps ({cfg.source.timesteps}) is shorter than one rollout ({rollout}).")
    names = [a.name for a in cfg.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"study.arms names must be unique; got {names}.")
    if len(cfg.arms) < 2 or s.baseline not in names:
        raise ConfigError(f"study.arms ({', '.join(names)}) must hold the baseline '{s.baseline}' and at least one "
                          "transfer arm, e.g. arms: [scratch, parameter, partial, policy].")
    for arm in cfg.arms:
        if arm.kind == "multitask" and ppo.n_envs < 2:
            raise ConfigError(f"Arm '{arm.name}' (multitask) needs ppo.n_envs of at least 2: half the envs run each "
                              "variant.")
        if arm.kind == "distill" and arm.distill_steps >= s.timesteps:
            raise ConfigError(f"Arm '{arm.name}': distill_steps ({arm.distill_steps}) must leave part of "
                              f"study.timesteps ({s.timesteps}) for PPO.")
    if s.threshold is None:
        s.threshold = reward_threshold(cfg.target.env)
        if s.threshold is None:
            raise ConfigError(f"'{cfg.target.env}' has no reward_threshold: set study.threshold (the return that "
                              "counts as solved).")


def rl_study_config_from_dict(data: dict) -> RLStudyConfig:
    """Validate a mapping of YAML's shape into an :class:`RLStudyConfig` (gymnasium checks the envs).

    Example:
        >>> cfg = rl_study_config_from_dict({"target": {"physics": {"length": 1.0}}})  # doctest: +SKIP
        >>> cfg.threshold  # doctest: +SKIP
        475.0
    """
    data = copy.deepcopy(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"An RL study config holds a mapping with the sections {', '.join(SECTIONS)}.")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"Unknown RL study config key '{key}'. Valid top-level keys: {', '.join(SECTIONS)}.")
    parts = {"source": SourceConfig(), "target": TargetConfig(), "ppo": PPOConfig(), "study": RLStudySettings()}
    for key, obj in parts.items():
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"The '{key}' section of an RL study config must be a mapping.")
        _apply(obj, section, prefix=f"{key}.")
    arms = [_parse_arm(e, i) for i, e in enumerate(parts["study"].arms)]
    cfg = RLStudyConfig(parts["source"], parts["target"], parts["ppo"], parts["study"], arms, {})
    _validate(cfg)
    cfg.raw = {k: dataclasses.asdict(v) for k, v in parts.items()}
    cfg.raw["study"]["arms"] = [a.to_dict() for a in arms]
    return cfg


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_rl_study_config(path: str | Path | None, overrides: list[str] | None = None) -> RLStudyConfig:
    """Load an RL study YAML and apply dotted overrides (``study.seeds=3``, ``target.physics.length=0.25``).

    Example:
        >>> cfg = load_rl_study_config("recipes/configs/rl/cartpole_pole_length.yaml", ["study.seeds=3"])  # doctest: +SKIP
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"RL study config '{path}' does not exist. See recipes/configs/rl/ for an example.")
        from hftl.config import read_yaml

        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"RL study config '{path}' must hold a mapping with the sections {', '.join(SECTIONS)}.")
    return rl_study_config_from_dict(_merge(data, parse_overrides(overrides or [])))
