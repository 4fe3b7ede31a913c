"""Environments from a config: a gymnasium id plus changed physics (CartPole's pole, Acrobot's links, ...).

Classic-control constructors do not take their physics, so :func:`make_env` sets the values on the
unwrapped env after ``gymnasium.make`` and recomputes what the env derived from them at
construction (CartPole's ``total_mass`` and ``polemass_length``): otherwise a longer pole would
change only half of the equations. Each bad input is one :class:`~hftl.errors.ConfigError`: an
unknown id lists the close names, a parameter the env lacks lists the ones it has.

Example:
    >>> env = make_env(EnvConfig("CartPole-v1", {"length": 1.0}))  # doctest: +SKIP
    >>> env.unwrapped.length, env.unwrapped.polemass_length  # doctest: +SKIP
    (1.0, 0.1)
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass, field

from hftl.errors import ConfigError
from hftl.rl.deps import require

# Episode seeds of evaluations (and of a rendered episode): apart from the training envs' seeds (study seeds 0, 1, ...).
EVAL_SEED = 10_000

# The physics each classic-control env exposes, by its class name: config name -> attribute on the unwrapped env.
# Acrobot keeps them as upper-case class attributes; the config uses lower case like the others. Values that
# size the observation space (Acrobot's MAX_VEL_*, MountainCar's max_speed) are left out: changing them would
# change what the agent sees, not only the physics.
PHYSICS = {
    "CartPoleEnv": {k: k for k in ("gravity", "masscart", "masspole", "length", "force_mag", "tau")},
    "AcrobotEnv": {k.lower(): k for k in ("LINK_LENGTH_1", "LINK_LENGTH_2", "LINK_MASS_1", "LINK_MASS_2",
                                          "LINK_COM_POS_1", "LINK_COM_POS_2", "LINK_MOI")}
                  | {"dt": "dt", "torque_noise_max": "torque_noise_max"},
    "MountainCarEnv": {"gravity": "gravity", "force": "force"},
    "Continuous_MountainCarEnv": {"power": "power"},
    "PendulumEnv": {k: k for k in ("g", "m", "l", "dt", "max_torque")},
}


def _cartpole_derived(env) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


# What an env computed from its physics in __init__, recomputed after they change.
DERIVED = {"CartPoleEnv": _cartpole_derived}


@dataclass
class EnvConfig:
    """One environment variant: a gymnasium id and the physics changed from its defaults."""

    id: str = "CartPole-v1"
    physics: dict = field(default_factory=dict)

    def describe(self) -> str:
        """``CartPole-v1 (length=1.0)``: how reports and cards name the variant."""
        changed = ", ".join(f"{k}={v:g}" for k, v in sorted(self.physics.items()))
        return f"{self.id} ({changed})" if changed else f"{self.id} (default physics)"

    def to_dict(self) -> dict:
        return {"id": self.id, "physics": dict(self.physics)}


def check_env_id(env_id: str) -> None:
    """Raise a ConfigError for an id gymnasium does not know, listing the closest registered ids.

    Example:
        >>> check_env_id("CartPole-v9")  # doctest: +SKIP
        hftl.errors.ConfigError: Unknown environment 'CartPole-v9'. Close names: CartPole-v1, CartPole-v0. ...
    """
    gym, _ = require()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(str(env_id), list(gym.registry), n=4, cutoff=0.5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ConfigError(f"Unknown environment '{env_id}'.{hint} Use a gymnasium id such as CartPole-v1, Acrobot-v1 "
                      "or MountainCar-v0 (gymnasium.pprint_registry() lists them all).")


def physics_names(unwrapped) -> dict:
    """The physics parameters of an unwrapped env: its table entry, or (for other envs) its public numbers."""
    known = PHYSICS.get(type(unwrapped).__name__)
    if known is not None:
        return known
    return {k: k for k, v in sorted(vars(unwrapped).items())
            if not k.startswith("_") and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def apply_physics(unwrapped, physics: dict, env_id: str = "") -> None:
    """Set ``physics`` on an unwrapped env and recompute what it derived from them.

    Example:
        >>> apply_physics(gymnasium.make("CartPole-v1").unwrapped, {"length": 0.25})  # doctest: +SKIP
    """
    names = physics_names(unwrapped)
    for key, value in physics.items():
        if key not in names:
            raise ConfigError(f"Environment '{env_id or type(unwrapped).__name__}' has no physics parameter "
                              f"'{key}'. It has: {', '.join(names) or 'none'}.")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"Physics parameter '{key}' of '{env_id}' must be a number, not {value!r}.")
        setattr(unwrapped, names[key], float(value))
    derive = DERIVED.get(type(unwrapped).__name__)
    if derive is not None:
        derive(unwrapped)


def make_env(cfg: EnvConfig, render_mode: str | None = None):
    """A gymnasium env of this variant (``gymnasium.make`` plus the physics, on the unwrapped env).

    Example:
        >>> env = make_env(EnvConfig("CartPole-v1", {"length": 1.0}))  # doctest: +SKIP
        >>> env.unwrapped.total_mass  # doctest: +SKIP
        1.1
    """
    gym, _ = require()
    check_env_id(cfg.id)
    try:
        env = gym.make(cfg.id, render_mode=render_mode)
    except gym.error.Error as e:  # e.g. a registered env whose extra (box2d, mujoco) is not installed
        raise ConfigError(f"Environment '{cfg.id}' could not be made: {e}") from None
    apply_physics(env.unwrapped, cfg.physics, cfg.id)
    return env


def check_env(cfg: EnvConfig) -> None:
    """Make the env once and close it: a bad id or physics parameter fails here, before anything trains."""
    make_env(cfg).close()


def env_factory(cfg: EnvConfig):
    """A zero-argument callable making this variant (what SB3's vector envs take)."""
    return lambda: make_env(cfg)


def reward_threshold(env_id: str) -> float | None:
    """The return at which gymnasium calls the env solved (CartPole-v1: 475), when it has one."""
    gym, _ = require()
    return gym.spec(env_id).reward_threshold
