"""Exception types of the library. The CLI turns each into one `Error: ...` line and exit 1."""


class CharRNNError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(CharRNNError):
    """A config file or value is invalid."""


class DataError(CharRNNError):
    """A corpus or text cannot be read or used."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, corrupt, foreign or cannot be written."""


class TrainingError(CharRNNError):
    """Training cannot continue (e.g. the loss became NaN)."""


class RunLockedError(CharRNNError):
    """Another process is training into the same run directory."""


class ExportError(CharRNNError):
    """A model cannot be exported: a missing package, an output that must not be replaced."""
