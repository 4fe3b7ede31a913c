"""Transfer between reinforcement-learning environments: PPO agents moved from a source variant to a target.

A study (``hftl rl-study CONFIG``, or ``hftl study CONFIG`` with an RL config) trains a source agent
on one environment variant (e.g. CartPole with its default pole), then compares ways of starting on
a target variant (a longer pole) with training from scratch, over many seeds, by the measures of
Taylor & Stone (2009): jumpstart, steps to a return threshold, area under the learning curve, final
return; IQMs with bootstrap intervals, a permutation test and a verdict per arm.

One part per module: :mod:`~hftl.rl.deps` (the ``rl`` extra, imported on first use),
:mod:`~hftl.rl.envs` (environments and their physics), :mod:`~hftl.rl.config` (the study config),
:mod:`~hftl.rl.agents` (PPO and the transfer arms), :mod:`~hftl.rl.distill` (DAgger-style policy
distillation), :mod:`~hftl.rl.evaluate` (mean return, learning curves), :mod:`~hftl.rl.measures`
(the measures and their statistics), :mod:`~hftl.rl.runner` (the study, resumable),
:mod:`~hftl.rl.report` (table, report.md, plot) and :mod:`~hftl.rl.outputs` (agent folders in SB3's
layout, read back without unpickling). Importing this package imports neither gymnasium nor
stable-baselines3.

Example:
    >>> from hftl.rl import run_rl_study
    >>> report = run_rl_study("recipes/configs/rl/cartpole_pole_length.yaml", ["study.seeds=3"])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

__all__ = ["evaluate_agent", "load_agent", "load_rl_study_config", "run_rl_study"]


def __getattr__(name: str):
    # Lazy, as hftl's own __init__: the heavy parts (torch, gymnasium, SB3) load when first used.
    if name == "run_rl_study":
        from hftl.rl.runner import run_rl_study

        return run_rl_study
    if name == "load_rl_study_config":
        from hftl.rl.config import load_rl_study_config

        return load_rl_study_config
    if name == "load_agent":
        from hftl.rl.outputs import load_agent

        return load_agent
    if name == "evaluate_agent":
        from hftl.rl.evaluate import evaluate_agent

        return evaluate_agent
    raise AttributeError(f"module 'hftl.rl' has no attribute '{name}'")
