"""Exit codes of the command line, in one place: only CLI entry points use this module.
78 (EX_CONFIG) for a bad config, rule file, truth file, model bundle or state directory;
66 (EX_NOINPUT) for an unreadable capture; 65 (EX_DATAERR) for training input that cannot
make a model (too short a capture)."""

from __future__ import annotations

import functools
import sys

import click

from detector.errors import CaptureError, ConfigError, ModelError, TrainingDataError

EX_CONFIG = 78
EX_NOINPUT = 66
EX_DATAERR = 65


class InputFile(click.Path):
    """An input file option (a capture, a conn.log): one that is missing or unreadable exits
    66 (EX_NOINPUT), as documented, with click's message; click itself would exit 2."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, readable=True)

    def fail(self, message: str, param: click.Parameter | None = None, ctx: click.Context | None = None):  # type: ignore[override]
        hint = f"{param.get_error_hint(ctx)}: " if param is not None and ctx is not None else ""
        click.echo(f"netad: {hint}{message}", err=True)
        sys.exit(EX_NOINPUT)


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
        except TrainingDataError as exc:
            click.echo(f"netad: {exc}", err=True)
            sys.exit(EX_DATAERR)

    return wrapper
