"""What every way to transfer shares: the Setup it changes and the Method interface (see hftl.methods).

Example:
    >>> class Nothing(Method):
    ...     name = "nothing"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Setup:
    """What a run trains, as the task built it; methods change it in turn before the Trainer starts."""

    cfg: object  # hftl.config.Config
    task: object  # hftl.tasks.base.Task
    data: object  # hftl.data.LabelledData
    model: object  # the TransferModel that is saved
    ref: object  # where its weights came from (hftl.refs.ModelRef)
    train_ds: object
    eval_ds: object
    collate: Callable | None
    loss_fn: Callable
    predictions: Callable | None
    strategy: object = None
    trained: object = None  # what the trainer trains: the model, or only its head on cached features
    train_cfg: object = None  # cfg.train, or a copy (a solved probe trains 0 epochs)
    score: Callable | None = None  # score(metric names, predictions, references) -> metrics; None: compute_metrics
    card_info: dict = field(default_factory=dict)


class Method:
    """One way to transfer: its name, its config section, when it applies, and its hooks on a Setup."""

    name = ""
    section = ""  # the config section that switches it on

    def applies(self, cfg) -> bool:
        return False

    def check(self, cfg) -> None:
        """Raise a ConfigError when the run's settings cannot be combined with this method."""

    def before_strategy(self, setup: Setup) -> None:
        """Change the model before the strategy freezes and wraps it."""

    def after_strategy(self, setup: Setup) -> None:
        """Change what the trainer sees (datasets, loss, the trained module)."""

    def after_fit(self, setup: Setup, trainer) -> dict | None:
        """Change the trained model before it is saved (the Trainer has fitted and scored it).

        May return metrics that join (or replace) the run's: what this method measured on the model as saved
        (domain adaptation: the target domain's scores)."""

    def write_outputs(self, folder, model, meta: dict, info: dict) -> None:
        """Write what this method adds to the output folder (after the model, its config and its card)."""
