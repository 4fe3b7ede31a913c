"""PPO agents (stable-baselines3) and the ways an agent on the target starts from the source agent.

- **scratch**: a fresh PPO agent.
- **parameter**: every weight of the source's policy and value networks, with a fresh optimizer.
  When the observation or action spaces differ, it names each layer that cannot transfer (and the
  shapes) and suggests ``partial``.
- **partial**: the shared trunk (SB3's ``mlp_extractor`` and any feature extractor) copied where its
  shapes fit; the action and value heads (``action_net``, ``value_net``, ``log_std``) fresh. With a
  different observation size the first trunk layer stays fresh and the rest is copied.
- **policy**: the source agent continues as it is: its weights and its optimizer state (Adam's
  moments), optionally with a larger entropy coefficient, since a converged, low-entropy policy can
  stop exploring in a changed environment.

Each transfer returns what it copied, so tests (and the card) can say where the weights came from.

Example:
    >>> source = new_agent(PPOConfig(), EnvConfig("CartPole-v1"), seed=0)  # doctest: +SKIP
    >>> target = new_agent(PPOConfig(), EnvConfig("CartPole-v1", {"length": 1.0}), seed=1)  # doctest: +SKIP
    >>> transfer_partial(source, target)["fresh"]  # doctest: +SKIP
    ['action_net.bias', 'action_net.weight', 'value_net.bias', 'value_net.weight']
"""

from __future__ import annotations

from hftl.errors import ConfigError
from hftl.rl.config import PPOConfig
from hftl.rl.deps import require
from hftl.rl.envs import EnvConfig, env_factory

HEADS = ("action_net.", "value_net.", "log_std")  # what partial transfer leaves fresh


def make_vec_env(env: EnvConfig, n_envs: int, seed: int):
    """SB3's vector env of ``n_envs`` copies of the variant (Monitor-wrapped, seeded ``seed + i``)."""
    require()
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    return sb3_make_vec_env(env_factory(env), n_envs=n_envs, seed=seed)


def make_mixed_vec_env(envs: list[EnvConfig], n_envs: int, seed: int):
    """One vector env whose ``n_envs`` copies cycle through ``envs`` (multi-task: every variant in every rollout).

    Example:
        >>> vec = make_mixed_vec_env([EnvConfig("CartPole-v1"), EnvConfig("CartPole-v1", {"length": 1.0})], 8, 0)  # doctest: +SKIP
    """
    require()
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from hftl.rl.envs import make_env

    spaces = set()
    for variant in envs:
        env = make_env(variant)
        spaces.add((str(env.observation_space), str(env.action_space)))
        env.close()
    if len(spaces) > 1:
        raise ConfigError(f"Multi-task training needs the same observation and action spaces in every variant; got "
                          f"{sorted(spaces)}. Use the partial arm for variants whose spaces differ.")
    order = [envs[i % len(envs)] for i in range(n_envs)]
    vec = DummyVecEnv([lambda v=v: Monitor(make_env(v)) for v in order])
    vec.seed(seed)
    return vec


def ppo_kwargs(ppo: PPOConfig, ent_coef: float | None = None, net_arch: list | None = None) -> dict:
    """PPO's constructor arguments from the config (rl_zoo3's ``lin_`` schedules as SB3's LinearSchedule).

    Example:
        >>> ppo_kwargs(PPOConfig())["n_steps"]  # doctest: +SKIP
        32
    """
    import torch
    from stable_baselines3.common.utils import LinearSchedule

    def schedule(value: float, kind: str):
        # LinearSchedule(v, 0, 1) is rl_zoo3's linear_schedule(v): v * progress_remaining. A class, not a lambda,
        # so model.save stores it without pickling code.
        return LinearSchedule(value, 0.0, 1.0) if kind == "linear" else value

    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[ppo.activation]
    return dict(n_steps=ppo.n_steps, batch_size=ppo.batch_size, n_epochs=ppo.n_epochs, gamma=ppo.gamma,
                gae_lambda=ppo.gae_lambda, learning_rate=schedule(ppo.learning_rate, ppo.lr_schedule),
                clip_range=schedule(ppo.clip_range, ppo.clip_schedule),
                ent_coef=ppo.ent_coef if ent_coef is None else ent_coef, vf_coef=ppo.vf_coef,
                max_grad_norm=ppo.max_grad_norm,
                policy_kwargs={"net_arch": list(net_arch or ppo.net_arch), "activation_fn": activation})


def new_agent(ppo: PPOConfig, env: EnvConfig, seed: int, ent_coef: float | None = None,
              net_arch: list | None = None, vec_env=None):
    """A fresh SB3 PPO agent (MlpPolicy, CPU) on ``ppo.n_envs`` copies of the variant.

    Example:
        >>> agent = new_agent(PPOConfig(), EnvConfig("CartPole-v1"), seed=0)  # doctest: +SKIP
    """
    _, sb3 = require()
    vec_env = vec_env if vec_env is not None else make_vec_env(env, ppo.n_envs, seed)
    return sb3.PPO("MlpPolicy", vec_env, seed=seed, device="cpu", verbose=0, **ppo_kwargs(ppo, ent_coef, net_arch))


def _mismatches(source_state: dict, target_state: dict) -> list[str]:
    """Layers whose shapes differ (or that only one side has), as ``name: source (4, 64) vs target (6, 64)``."""
    out = []
    for name in sorted(set(source_state) | set(target_state)):
        s, t = source_state.get(name), target_state.get(name)
        if s is None or t is None:
            out.append(f"{name}: only in the {'target' if s is None else 'source'}")
        elif s.shape != t.shape:
            out.append(f"{name}: source {tuple(s.shape)} vs target {tuple(t.shape)}")
    return out


def _space_note(source, target) -> str:
    notes = []
    if source.observation_space.shape != target.observation_space.shape:
        notes.append(f"observations {source.observation_space} vs {target.observation_space}")
    if str(source.action_space) != str(target.action_space):
        notes.append(f"actions {source.action_space} vs {target.action_space}")
    return f" (the spaces differ: {'; '.join(notes)})" if notes else ""


def transfer_parameters(source, target) -> dict:
    """Copy every weight of the source policy (actor and critic) into ``target``; its optimizer stays fresh.

    Example:
        >>> transfer_parameters(source, target)["copied"][:1]  # doctest: +SKIP
        ['action_net.bias']
    """
    src, dst = source.policy.state_dict(), target.policy.state_dict()
    bad = _mismatches(src, dst)
    if bad:
        raise ConfigError(f"Parameter transfer needs the same network on both sides{_space_note(source, target)}; "
                          f"these layers cannot transfer: {'; '.join(bad)}. Use the partial arm (shared trunk, "
                          "fresh heads) instead.")
    target.policy.load_state_dict(src)
    return {"copied": sorted(src), "skipped": [], "fresh": []}


def transfer_partial(source, target) -> dict:
    """Copy the trunk layers whose shapes fit; leave the action and value heads (and those that do not fit) fresh.

    Example:
        >>> transfer_partial(source, target)["skipped"]  # doctest: +SKIP
        []
    """
    src, dst = source.policy.state_dict(), target.policy.state_dict()
    copied, skipped, fresh = [], [], []
    # A layer moves as a whole: the bias of a first layer whose weight does not fit (another observation size)
    # would be meaningless next to a fresh weight.
    layers: dict[str, list[str]] = {}
    for name in dst:
        layers.setdefault(name.rsplit(".", 1)[0], []).append(name)
    for names in layers.values():
        if names[0].startswith(HEADS):
            fresh += names
        elif all(n in src and src[n].shape == dst[n].shape for n in names):
            for n in names:
                dst[n].copy_(src[n])  # state_dict tensors share storage with the parameters
            copied += names
        else:
            skipped += names
    if not copied:
        raise ConfigError(f"Partial transfer found no trunk layer of the same shape{_space_note(source, target)}: "
                          "nothing would transfer. Compare the ppo.net_arch of the source and the target.")
    return {"copied": sorted(copied), "skipped": sorted(skipped), "fresh": sorted(fresh)}


def transfer_policy(source, target) -> dict:
    """The source agent as it is: every weight and the optimizer's state (Adam's moments and step counts).

    Example:
        >>> transfer_policy(source, target)["optimizer"]  # doctest: +SKIP
        True
    """
    copied = transfer_parameters(source, target)
    target.policy.optimizer.load_state_dict(source.policy.optimizer.state_dict())
    return {**copied, "optimizer": True}


TRANSFERS = {"parameter": transfer_parameters, "partial": transfer_partial, "policy": transfer_policy}
