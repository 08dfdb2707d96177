"""Errors that library code raises; only the CLI entry point turns them into exit codes."""


class NetadError(Exception):
    """Base of netad's own errors."""


class ConfigError(NetadError):
    """A configuration or rule file is invalid. The message names the file, line and key
    (e.g. "configs/x.yaml:12: sinks[2].url: unknown scheme 'ftp'"); the CLI exits 78."""


class ModelError(NetadError):
    """A model bundle cannot be used: missing, corrupt, or trained on another feature schema."""


class CheckpointError(NetadError):
    """A checkpoint is there but cannot be used (unreadable, or its structure is wrong): the
    daemon moves it aside and starts fresh."""


class TrainingDataError(NetadError):
    """The training input cannot make a model (too short, no benign windows of a class): the
    CLI exits 65 (EX_DATAERR)."""


class CaptureError(NetadError):
    """A source cannot be opened or read (missing file, unknown link type, no permission)."""


class OutputError(NetadError):
    """What a command was to write cannot be written (a full disk, no permission, a read-only
    file system), found only once there is something to write: the CLI exits 73 (EX_CANTCREAT)."""

