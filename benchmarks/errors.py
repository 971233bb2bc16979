"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class AmortbenchError(Exception):
    """Base class: the message names the file, field or value at fault and what to do."""


class ConfigError(AmortbenchError):
    """A configuration value is unknown, missing or out of range."""


class DataError(AmortbenchError):
    """A dataset file is missing, corrupt or in an unexpected format."""


class TrainingDiverged(AmortbenchError):
    """The training loss became NaN or infinite; the last good checkpoint was kept."""
