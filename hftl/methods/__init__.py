"""Ways to transfer, one module each, each with its own config section, in one registry.

A run (``hftl.run``) builds a :class:`Setup` (the model, its datasets, loss and predictions, as
the task gives them) and hands it to each method whose config section is set, in :data:`METHODS`
order. A method may wrap the model before the strategy prepares it (``before_strategy``:
multi-task heads) or change what the trainer sees after (``after_strategy``: the feature cache
trains the head on cached features; distillation adds the teacher's logits to each example).

- ``strategies`` (``strategy``): which weights train and how fast: linear probe, finetune, LP-FT,
  gradual unfreezing, partial freezing, LoRA, scratch. Always on; the task says which apply.
- ``multitask`` (``multitask``): one backbone, one head per label column.
- ``feature_cache`` (``strategy.cache_features``; LP-FT's probe): backbone features computed once;
  the solved probe (``strategy.probe_solver=lbfgs``).
- ``distill`` (``distill``): a teacher's softened predictions as extra targets.
- ``label_thresholds`` (multi-label tasks): a decision threshold per label, chosen on validation.
- ``domain_adapt`` (``domain_adapt``): a labelled source, an unlabelled target domain: AdaBN, CORAL, the
  labelled-target oracle; the target scored after training (``target_accuracy``).

Example:
    >>> from hftl.methods import METHODS
    >>> [m.name for m in METHODS]
    ['multitask', 'feature_cache', 'distill', 'label_thresholds', 'domain_adapt']
"""

from __future__ import annotations

from hftl.methods.base import Method, Setup
from hftl.methods.distill import Distillation
from hftl.methods.domain_adapt import DomainAdapt
from hftl.methods.feature_cache import FeatureCache
from hftl.methods.multitask import MultiTask
from hftl.methods.thresholds import LabelThresholds

__all__ = ["METHODS", "Method", "Setup", "active_methods", "register_method"]

METHODS: list[Method] = [MultiTask(), FeatureCache(), Distillation(), LabelThresholds(), DomainAdapt()]


def register_method(method: Method) -> Method:
    """Add a way to transfer (after the built-in ones); it runs on every run whose settings it ``applies`` to.

    Example:
        >>> register_method(MyMethod())  # doctest: +SKIP
    """
    if not isinstance(method, Method) or not method.name:
        raise TypeError("register_method takes a named hftl.methods.Method.")
    if any(m.name == method.name for m in METHODS):
        raise ValueError(f"A method named '{method.name}' is already registered.")
    METHODS.append(method)
    return method


def active_methods(cfg) -> list[Method]:
    """The registered methods this run's settings switch on, each checked, in order."""
    active = [m for m in METHODS if m.applies(cfg)]
    for m in active:
        m.check(cfg)
    return active
