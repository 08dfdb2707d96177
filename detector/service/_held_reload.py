"""A SIGHUP (reload) that comes while a role starts: remembered, not fatal.

Its default action ends the process, and a role takes seconds to start (torch's import)
before its Lifecycle installs the handlers. `hold()` is the first thing `netad run` does
(this module imports nothing heavy); the Lifecycle `take()`s what was held when it installs
its handlers, and the role reloads between its first batches."""

from __future__ import annotations

import signal
import threading

_HELD = threading.Event()


def hold() -> None:
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _HELD.set())


def take() -> bool:
    """Whether a SIGHUP came since `hold()` (once)."""
    held = _HELD.is_set()
    _HELD.clear()
    return held
