"""Exit codes of the command line, in one place: only CLI entry points use this module.
78 (EX_CONFIG) for a bad config, rule file, truth file or model bundle; 66 (EX_NOINPUT)
for an unreadable capture."""

from __future__ import annotations

import functools
import sys

import click

from detector.errors import CaptureError, ConfigError, ModelError

EX_CONFIG = 78
EX_NOINPUT = 66


def errors_to_exit_codes(fn):
    """Turn netad's own errors into a one-line message on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ModelError) as exc:
            click.echo(f"netad: {exc}", err=True)
            sys.exit(EX_CONFIG)
        except CaptureError as exc:
            click.echo(f"netad: {exc}", err=True)
            sys.exit(EX_NOINPUT)

    return wrapper
