"""The ``rl`` extra: gymnasium and stable-baselines3, imported on first use, or one clear error.

``import hftl`` (and ``import hftl.rl``) never imports them: a user without the extra can use the
rest of hftl, and one who reaches for an RL feature gets one line naming the fix.

Example:
    >>> gym, sb3 = require()  # doctest: +SKIP
    >>> sb3.PPO  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from hftl.errors import ConfigError

INSTALL = "pip install 'hftl[rl]'"


def require():
    """``(gymnasium, stable_baselines3)``, or a ConfigError that names ``pip install 'hftl[rl]'``.

    Example:
        >>> gym, sb3 = require()  # doctest: +SKIP
    """
    modules = []
    for name in ("gymnasium", "stable_baselines3"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise ConfigError(f"Reinforcement learning needs {name.replace('_', '-')}, which is not installed: "
                              f"{INSTALL}.") from None
    return tuple(modules)
