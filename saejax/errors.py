"""The one exception family users see for bad input.

Every check on user input (config values, data files, batches) raises a subclass of
`SaejaxError` with a one-line message naming the culprit (config field, file, shape, step).
`experiments/train.py` turns it into a single ``error: ...`` line and exit status 1.
"""


class SaejaxError(ValueError):
    """Bad user input; the message names the config field, file, shape or step at fault."""


class ConfigError(SaejaxError):
    """A config value is unknown, out of range, or inconsistent with another."""


class DataError(SaejaxError):
    """A data file or batch is missing, malformed, or holds non-finite values."""


class WorkdirError(SaejaxError):
    """The workdir cannot be used: another run holds it, or a file in it cannot be written (a read-only
    folder, a full disk, a permission)."""
