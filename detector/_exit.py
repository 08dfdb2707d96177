"""Exit codes of the command line, in one place: only CLI entry points use this module.
78 (EX_CONFIG) for a bad config, rule file, truth file, model bundle or state directory;
66 (EX_NOINPUT) for an unreadable capture; 65 (EX_DATAERR) for training input that cannot
make a model (too short a capture); 73 (EX_CANTCREAT) for output that cannot be written (a
model bundle; a full disk or quota, a read-only file system under any output)."""

from __future__ import annotations

import atexit
import errno
import functools
import os
import sys
import threading
from typing import NoReturn

import click

from detector.errors import CaptureError, ConfigError, ModelError, OutputError, TrainingDataError

EX_CONFIG = 78
EX_NOINPUT = 66
EX_DATAERR = 65
EX_CANTCREAT = 73
# errors only a write meets: a disk or a quota full, a read-only file system
_CANNOT_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


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
        except OutputError as exc:
            click.echo(f"netad: {exc}", err=True)
            sys.exit(EX_CANTCREAT)
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"netad: {where}cannot write: {exc.strerror or exc}", err=True)
            sys.exit(EX_CANTCREAT)

    return wrapper


def without_teardown(fn):
    """A one-shot command that ends without Python's interpreter teardown.

    After `netad score` has written and closed everything, the interpreter's teardown (every
    module's objects freed, then torch's, LLVM's and numba's C++ destructors) took 0.75 s of
    a 3 s run; it frees memory the process is about to give back anyway. What a normal exit
    does that matters is done here first: the click contexts close, the atexit handlers run
    (logging, temporary files, multiprocessing), stdout and stderr are flushed; then the
    process ends with the command's exit status. The exit is the normal one when the
    command raised, when a thread that a normal exit would wait for is still running, and
    when someone else's streams stand in for stdout or stderr (click's CliRunner, pytest's
    capture): the command is then running inside another program, which must go on.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        if not isinstance(code, int) or _threads_to_wait_for() or not _own_streams():
            sys.exit(code)
        _exit_now(code)

    return wrapper


def _threads_to_wait_for() -> bool:
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())


def _own_streams() -> bool:
    return sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__


def _exit_now(code: int) -> NoReturn:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        ctx.close()
        ctx = ctx.parent
    atexit._run_exitfuncs()  # what the interpreter would run first at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): Python's own exit gives 120
            code = code or 120
    os._exit(code)
