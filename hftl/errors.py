"""The errors a user can cause. Each message names the thing that is wrong and the way out.

The CLI prints these as one line (no traceback); notebooks see ordinary exceptions.

Example:
    >>> from hftl.errors import ConfigError
    >>> isinstance(ConfigError("bad key"), HftlError)
    True
"""


class HftlError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in hftl."""


class ConfigError(HftlError, ValueError):
    """A config key that does not exist, a value of the wrong type, or fields that do not fit together."""


class DataError(HftlError, ValueError):
    """Data that cannot be found or read: a missing folder, a missing column, no usable examples."""


class ModelNotFoundError(HftlError, FileNotFoundError):
    """A model reference that resolves to nothing (unknown id, offline and not cached, empty folder)."""


class UnsafeWeightsError(HftlError):
    """Weights stored as pickle, which can run code when loaded; refused unless the user opts in."""


class CheckpointError(HftlError):
    """Nothing to resume from, or a checkpoint that does not match the run."""


class OutputError(HftlError, OSError):
    """The run's outputs (model, checkpoint, cache) could not be written: a full disk, a read-only folder."""


class NonFiniteLossError(HftlError, FloatingPointError):
    """The loss or gradient became NaN/inf; the run stopped before the weights were touched."""


class HubError(HftlError):
    """A push or pull that cannot go ahead (no token, malformed repo id, server failure)."""
