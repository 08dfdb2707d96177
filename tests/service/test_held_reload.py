"""A SIGHUP while a role starts (service._held_reload): held, never fatal, however many come."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# In a child process: hold(), then a storm of SIGHUPs from another thread while the main
# thread runs (each one's handler runs in the main thread, possibly inside another's), then
# take() once, as a Lifecycle does when it installs its own handlers.
_STORM = textwrap.dedent("""
    import os, signal, threading
    from detector.service import _held_reload as held
    held.hold()
    assert held.take() is False
    def storm():
        for _ in range(20000):
            os.kill(os.getpid(), signal.SIGHUP)
    sender = threading.Thread(target=storm)
    sender.start()
    while sender.is_alive():
        sum(range(100))
    sender.join()
    assert held.take() is True and held.take() is False
    print("held")
""")


def test_a_storm_of_sighups_while_starting_is_held_as_one_reload():
    done = subprocess.run([sys.executable, "-c", _STORM], capture_output=True, text=True, timeout=120)
    assert 0 == done.returncode, done.stderr
    assert "held" == done.stdout.strip()
