"""A SIGHUP (reload) that comes while a role starts: remembered, not fatal.

Its default action ends the process, and a role takes seconds to start (torch's import)
before its Lifecycle installs the handlers. `hold()` is the first thing `netad run` does
(this module imports nothing heavy); the Lifecycle `take()`s what was held when it installs
its handlers, and the role reloads between its first batches.

The handler only sets a flag: it takes no lock. It once set a threading.Event, whose `set()`
holds the Event's lock while it notifies; a SIGHUP that came in that moment ran the handler
again inside it, which waited for that lock, and every further SIGHUP (a storm of them, 20 ms
apart, as the daemon's test sends) nested one more wait until the interpreter's recursion
limit ended the process."""

from __future__ import annotations

import signal

_held = False


def _on_sighup(_signum: int, _frame: object) -> None:
    global _held
    _held = True


def hold() -> None:
    signal.signal(signal.SIGHUP, _on_sighup)


def take() -> bool:
    """Whether a SIGHUP came since `hold()` (once). The Lifecycle calls it after installing
    its own handler, so no SIGHUP can come between the reading and the clearing here."""
    global _held
    held, _held = _held, False
    return held
