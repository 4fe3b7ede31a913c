"""Mean return over N episodes, and the learning curve of a run (an evaluation every so many steps).

Evaluation runs the N episodes side by side (one batched forward pass per step), with deterministic
actions and episode seeds ``seed, seed + 1, ...``, so every arm and every point of a curve is scored
on the same start states: differences between arms are the agents', not the draw of episodes.

Example:
    >>> returns = evaluate_policy(agent.policy, EnvConfig("CartPole-v1", {"length": 1.0}), episodes=10)  # doctest: +SKIP
    >>> float(np.mean(returns))  # doctest: +SKIP
    500.0
"""

from __future__ import annotations

import numpy as np

from hftl.rl.deps import require
from hftl.rl.envs import EVAL_SEED, EnvConfig, make_env


def evaluate_policy(policy, env: EnvConfig, episodes: int = 10, seed: int = EVAL_SEED,
                    deterministic: bool = True) -> list[float]:
    """The return of each of ``episodes`` episodes of ``policy`` (an SB3 policy) on the variant.

    Example:
        >>> evaluate_policy(agent.policy, EnvConfig("CartPole-v1"), episodes=3)  # doctest: +SKIP
        [500.0, 500.0, 500.0]
    """
    envs = [make_env(env) for _ in range(episodes)]
    try:
        obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
        returns = np.zeros(episodes)
        active = list(range(episodes))
        was_training = policy.training
        policy.set_training_mode(False)
        while active:
            actions, _ = policy.predict(np.stack([obs[i] for i in active]), deterministic=deterministic)
            still = []
            for i, action in zip(active, actions):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += float(reward)
                if not (terminated or truncated):
                    still.append(i)
            active = still
        policy.set_training_mode(was_training)
    finally:
        for e in envs:
            e.close()
    return returns.tolist()


def curve_callback(env: EnvConfig, every: int, episodes: int, offset: int = 0, curve: dict | None = None):
    """An SB3 callback that records ``curve`` = {steps: [...], returns: [...]} while PPO learns.

    It evaluates before the first rollout (the jumpstart, when ``offset`` is 0), at the start of each
    rollout once ``every`` more steps have passed (the policy changes only between rollouts), and after
    the last one. ``offset`` adds the target steps spent before PPO started (a distilled student's).

    Example:
        >>> cb = curve_callback(EnvConfig("CartPole-v1"), every=1024, episodes=10)  # doctest: +SKIP
        >>> agent.learn(4096, callback=cb); cb.curve["steps"]  # doctest: +SKIP
        [0, 1024, 2048, 3072, 4096]
    """
    require()
    from stable_baselines3.common.callbacks import BaseCallback

    class _Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.curve = curve if curve is not None else {"steps": [], "returns": [], "std": []}
            self.next = offset

        def _record(self) -> None:
            at = offset + self.num_timesteps
            if self.curve["steps"] and self.curve["steps"][-1] == at:
                return
            returns = evaluate_policy(self.model.policy, env, episodes)
            self.curve["steps"].append(at)
            self.curve["returns"].append(float(np.mean(returns)))
            self.curve["std"].append(float(np.std(returns)))
            self.next = at + every

        def _on_training_start(self) -> None:
            if offset == 0 or not self.curve["steps"]:
                self._record()

        def _on_rollout_start(self) -> None:
            if offset + self.num_timesteps >= self.next:
                self._record()

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self._record()

    return _Curve()


def evaluate_agent(path, env: EnvConfig | None = None, episodes: int = 10, allow_pickle: bool = False,
                   seed: int = EVAL_SEED, render: str | None = None) -> dict:
    """Mean return of a saved agent over ``episodes`` episodes (what ``hftl rl-eval`` prints).

    ``env`` defaults to the variant the agent was trained on (its config.json). ``render`` (a .gif or
    .mp4 path; the ``render`` extra) also writes the first episode's frames there
    (:func:`hftl.rl.render.render_episode`).

    Example:
        >>> evaluate_agent("outputs/rl_study/runs/parameter/seed0", episodes=10)["mean_reward"]  # doctest: +SKIP
        500.0
    """
    from hftl.errors import ConfigError
    from hftl.rl.outputs import agent_config, load_agent

    if render is not None:
        from hftl.rl.render import check_render

        check_render(render)  # a missing extra fails before the agent is loaded and evaluated
    if env is None:
        recorded = agent_config(path).get("env")
        if recorded is None:
            raise ConfigError(f"'{path}' records no environment (no config.json): give one, e.g. env=CartPole-v1.")
        env = EnvConfig(**recorded)
    agent = load_agent(path, env, allow_pickle=allow_pickle)
    returns = evaluate_policy(agent.policy, env, episodes, seed)
    result = {"env": env.describe(), "episodes": episodes, "mean_reward": float(np.mean(returns)),
              "std_reward": float(np.std(returns))}
    if render is not None:
        from hftl.rl.render import render_episode

        result["render"] = render_episode(agent.policy, env, render, seed=seed)
    return result


EVAL_KEYS = ("env", "physics", "episodes", "seed")


def eval_command(path, overrides: list[str], allow_pickle: bool = False, render: str | None = None) -> dict:
    """``hftl rl-eval AGENT env=ID physics.length=1.0 episodes=N seed=S [--render episode.gif]``: the mean return.

    The environment starts as the variant the agent was trained on; ``env=`` names another id (with
    its default physics) and ``physics.NAME=`` changes one parameter on top. ``render`` writes the
    first episode as a GIF or MP4.

    Example:
        >>> eval_command("outputs/agent", ["physics.length=1.0", "episodes=20"])["episodes"]  # doctest: +SKIP
        20
    """
    from hftl.config import parse_overrides
    from hftl.errors import ConfigError
    from hftl.rl.outputs import agent_config

    given = parse_overrides(overrides)
    unknown = [k for k in given if k not in EVAL_KEYS]
    if unknown:
        raise ConfigError(f"Unknown rl-eval key '{unknown[0]}'. Valid keys: {', '.join(EVAL_KEYS)} "
                          "(e.g. env=CartPole-v1 physics.length=1.0 episodes=20).")
    episodes = given.get("episodes", 10)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be a whole number of 1 or more, not {episodes!r}.")
    physics = given.get("physics", {})
    if not isinstance(physics, dict):
        raise ConfigError("physics is set one parameter at a time: physics.length=1.0.")
    recorded = agent_config(path).get("env")
    if "env" in given:
        env = EnvConfig(str(given["env"]), dict(physics))
    elif recorded is not None:
        env = EnvConfig(recorded["id"], {**recorded.get("physics", {}), **physics})
    else:
        raise ConfigError(f"'{path}' records no environment (no config.json): give one, e.g. env=CartPole-v1.")
    return evaluate_agent(path, env, episodes, allow_pickle, seed=int(given.get("seed", EVAL_SEED)), render=render)
