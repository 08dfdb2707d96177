"""Errors that library code raises; only the CLI entry point turns them into exit codes."""


class NetadError(Exception):
    """Base of netad's own errors."""


class ConfigError(NetadError):
    """A configuration or rule file is invalid. The message names the file, line and key
    (e.g. "configs/x.yaml:12: sinks[2].url: unknown scheme 'ftp'"); the CLI exits 78."""


class ModelError(NetadError):
    """A model bundle cannot be used: missing, corrupt, or trained on another feature schema."""


class CaptureError(NetadError):
    """A source cannot be opened or read (missing file, unknown link type, no permission)."""
