"""Fair arms: each study arm chooses its own hyperparameters on the training fold alone (nested CV).

A study that trains every arm at one learning rate compares a tuned arm with an untuned one: a
scratch baseline that never learned makes transfer look good, a fine-tune at a probe's rate makes
it look bad. So, per arm, per label budget and per outer fold, the study holds out an *inner
validation split* of that fold's training examples, trains each candidate of a small grid on the
rest, picks the best by ``study.metric`` on the inner split (ties: the lower loss, then the first
candidate), and only then trains the chosen values on the whole training fold and scores them on
the outer held-out fold. The outer fold is never seen before that final score: nested
cross-validation.

What is searched, per arm:

- ``study.search: true`` (the default): the arm's strategy's grid, :data:`DEFAULT_GRIDS`. A
  strategy class may declare its own as a class attribute ``study_search`` (a mapping of dotted
  config keys to values; ``{}`` searches nothing, e.g. a probe that already chooses its L2
  strength itself), which wins over the table.
- ``study.search: {lr: [1e-4, 1e-3]}`` (or dotted keys: ``train.lr``, ``train.weight_decay``,
  ``strategy.layer_decay``, ...): that grid for every arm; several keys make their product.
- ``study.search: false``: no search (every arm at its configured values, as before).
- An arm mapping may carry its own ``search:`` (true, false or a grid), which wins for that arm.

A grid of one candidate is not a search: the arm trains that value directly, exactly as an
unsearched arm configured with it would.

Example:
    >>> grid = resolve_grid(True, "scratch")
    >>> grid
    {'train.lr': [0.0003, 0.001, 0.003, 0.01]}
    >>> [c for c in candidates(grid)][:2]
    [{'train.lr': 0.0003}, {'train.lr': 0.001}]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from hftl.config import TrainConfig
from hftl.errors import ConfigError, DataError

# Log grids (about half a decade apart) around the rates each strategy usually wants with AdamW:
# a fresh network the highest, a pretrained backbone the lowest (its features are easy to destroy),
# a head alone on frozen features higher again. Four values keep a 5-fold study at about 4x the
# cost of the unsearched one (4 inner trainings on 80% of a fold, then the chosen one on all of it).
FINETUNE_GRID = {"train.lr": [3e-5, 1e-4, 3e-4, 1e-3]}
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "scratch": {"train.lr": [3e-4, 1e-3, 3e-3, 1e-2]},
    "finetune": FINETUNE_GRID,
    "gradual_unfreeze": FINETUNE_GRID,
    "partial": FINETUNE_GRID,
    "lora": {"train.lr": [1e-4, 3e-4, 1e-3, 3e-3]},
    "linear_probe": {"train.lr": [1e-3, 1e-2, 1e-1]},
}
SEARCH_HELP = ("Per-arm hyperparameter search on an inner validation split of each training fold (nested CV; the "
               "outer held-out fold is never used to choose): true uses each strategy's default grid (learning "
               "rate), a mapping such as {lr: [0.0001, 0.001]} or {train.lr: [...], train.weight_decay: [...]} "
               "searches that grid for every arm (an arm's own search: key wins), false trains each arm at its "
               "configured values.")
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def _flatten(grid: dict, prefix: str = "") -> dict:
    """``{train: {lr: [...]}}`` (a CLI override's shape) -> ``{"train.lr": [...]}``."""
    out: dict = {}
    for key, value in grid.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def parse_search(value: Any, where: str) -> bool | dict:
    """Check a ``search:`` value: true, false, or a grid of dotted config keys to lists of values.

    A bare name of a ``train`` field (``lr``, ``weight_decay``) means ``train.<name>``.

    Example:
        >>> parse_search({"lr": [0.001, 0.01]}, "study.search")
        {'train.lr': [0.001, 0.01]}
    """
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be true, false or a grid such as {{lr: [0.0001, 0.001]}}, not {value!r}.")
    grid: dict = {}
    for key, values in _flatten(value).items():
        dotted = f"train.{key}" if "." not in key and key in TRAIN_KEYS else key
        if "." not in dotted:
            raise ConfigError(f"{where} key '{key}' is not a config key; use a dotted base key such as train.lr, "
                              "train.weight_decay or strategy.layer_decay.")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key} must be a non-empty list of values to try, e.g. [0.0001, 0.001].")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{where}.{key} lists a value twice: {values}.")
        grid[dotted] = list(values)
    return grid


def resolve_grid(search: bool | dict, strategy: str) -> dict[str, list]:
    """The grid an arm searches: its own or the study's, or its strategy's default; ``{}`` when off.

    Example:
        >>> resolve_grid(False, "finetune"), resolve_grid({"train.lr": [0.01]}, "finetune")
        ({}, {'train.lr': [0.01]})
    """
    if search is False:
        return {}
    if isinstance(search, dict):
        return search
    from hftl.methods.strategies import STRATEGIES as STRATEGY_CLASSES

    declared = getattr(STRATEGY_CLASSES.get(strategy), "study_search", None)
    if declared is not None:  # the strategy says what matters for it (possibly nothing)
        return {k: list(v) for k, v in declared.items()}
    # A strategy without its own grid (a new one, e.g. LP-FT) trains a backbone: the fine-tune grid.
    return copy_grid(DEFAULT_GRIDS.get(strategy, FINETUNE_GRID))


def copy_grid(grid: dict) -> dict:
    return {k: list(v) for k, v in grid.items()}


def candidates(grid: dict[str, list]) -> list[dict]:
    """Every combination of a grid, in a fixed order (the first key varies slowest); ``[{}]`` for no grid.

    Example:
        >>> candidates({"train.lr": [0.1, 0.01], "train.weight_decay": [0.0, 0.1]})[1]
        {'train.lr': 0.1, 'train.weight_decay': 0.1}
    """
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] or [{}]


def nested(values: dict) -> dict:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}`` (the shape a config override takes)."""
    out: dict = {}
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def read_value(cfg, dotted: str) -> Any:
    """The value a resolved config holds at a dotted key (so a YAML string "1e-4" reads back as 0.0001)."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def inner_split(train_idx: list[int], strata, fraction: float, seed) -> tuple[list[int], list[int]]:
    """Split a training fold into (inner train, inner validation), stratified and seeded.

    Each stratum (class) puts ``round(fraction * count)`` of its examples into the inner
    validation split, at least one when it has two or more and never all of them, so every class
    that can be is on both sides. Only ``train_idx`` is split: the outer held-out fold is not an
    argument, so it cannot leak in.

    Example:
        >>> inner_split(list(range(10)), [0] * 5 + [1] * 5, 0.2, seed=0)
        ([0, 1, 3, 4, 5, 6, 7, 8], [2, 9])
    """
    idx = np.asarray(train_idx, dtype=int)
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for c in np.unique(strata[idx]):
        members = rng.permutation(idx[strata[idx] == c])
        n = len(members)
        take = min(n - 1, max(1, round(fraction * n))) if n >= 2 else 0
        held += members[:take].tolist()
    held_set = set(held)
    inner_train = sorted(int(i) for i in idx if int(i) not in held_set)
    if not held or not inner_train:
        raise DataError(
            f"A training fold of {len(idx)} examples is too small to hold out an inner validation split for the "
            "hyperparameter search. Add examples, raise the label budget, or set study.search=false."
        )
    return inner_train, sorted(int(i) for i in held)


def choose(results: list[dict], metric: str, higher_is_better: bool) -> int:
    """Index of the best candidate: best ``metric`` on the inner split, then the lower loss, then the first.

    A candidate whose metric is not finite (a diverged run) is never chosen over a finite one.

    Example:
        >>> choose([{"accuracy": 0.5, "loss": 1.0}, {"accuracy": 0.5, "loss": 0.8}], "accuracy", True)
        1
    """
    sign = 1.0 if higher_is_better else -1.0

    def rank(i: int) -> tuple:
        m = results[i]
        value = m.get(metric, float("nan"))
        loss = m.get("loss", float("nan"))
        return (-(sign * value) if math.isfinite(value) else math.inf,
                loss if math.isfinite(loss) else math.inf, i)

    return min(range(len(results)), key=rank)


def short(key: str) -> str:
    """``train.lr`` -> ``lr`` for tables (the section is clear from the key)."""
    return key.split(".")[-1]


def describe_choices(chosen: list[dict]) -> str:
    """Per-fold choices in a table cell: ``lr 0.001 ×3, 0.003 ×2``; ``—`` when nothing was searched.

    Example:
        >>> describe_choices([{"train.lr": 0.001}, {"train.lr": 0.003}, {"train.lr": 0.001}])
        'lr 0.001 ×2, 0.003 ×1'
    """
    chosen = [c for c in chosen if c]
    if not chosen:
        return "—"
    keys = list(chosen[0])
    parts = []
    for key in keys:
        counts: dict = {}
        for c in chosen:
            counts[c.get(key)] = counts.get(c.get(key), 0) + 1
        parts.append(f"{short(key)} " + ", ".join(f"{_fmt(v)} ×{n}" for v, n in counts.items()))
    return "; ".join(parts)


def describe_values(values: dict) -> str:
    """One candidate's values: ``lr 0.001, weight_decay 0.1``; ``—`` for none.

    Example:
        >>> describe_values({"train.lr": 0.001})
        'lr 0.001'
    """
    return ", ".join(f"{short(k)} {_fmt(v)}" for k, v in values.items()) or "—"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_grid(grid: dict) -> str:
    """``lr {0.0003, 0.001, 0.003}`` for the report; ``not searched`` for an empty grid."""
    if not grid:
        return "not searched"
    return "; ".join(f"{short(k)} {{{', '.join(_fmt(v) for v in vs)}}}" for k, vs in grid.items())
