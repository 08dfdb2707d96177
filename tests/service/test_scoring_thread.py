"""With capture workers the Scoring stage runs on its own thread (ScoringThread): calls run
in the order handed over, `settle` waits for them, a full queue holds the caller back, and
an error raised there reaches the caller's thread instead of vanishing with the thread."""

from __future__ import annotations

import threading

import pytest

from detector.service.scoring import ScoringThread


def test_calls_run_in_order_on_their_own_thread_and_settle_waits_for_them():
    ran: list[tuple[int, str]] = []
    lane = ScoringThread(depth=2)
    for i in range(50):
        lane.submit(lambda i=i: ran.append((i, threading.current_thread().name)))
    lane.settle()
    assert [i for i, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"netad-scoring"}


def test_a_full_queue_holds_the_caller_back():
    release = threading.Event()
    lane = ScoringThread(depth=2)
    lane.submit(release.wait)  # the thread takes it and waits
    lane.submit(lambda: None)
    lane.submit(lambda: None)  # the queue is full now
    caller = threading.Thread(target=lane.submit, args=(lambda: None,))
    caller.start()
    caller.join(timeout=0.5)
    held = caller.is_alive()
    release.set()
    caller.join(timeout=30)
    lane.settle()
    assert held
    assert not caller.is_alive()


def test_an_error_reaches_the_caller_and_the_calls_after_it_are_dropped():
    ran: list[int] = []
    lane = ScoringThread(depth=8)

    def fail() -> None:
        raise ValueError("scorer broke")

    lane.submit(ran.append, 1)
    lane.submit(fail)
    lane.submit(ran.append, 2)  # queued behind the error: dropped
    with pytest.raises(ValueError, match="scorer broke"):
        lane.settle()
    assert ran == [1]
    lane.submit(ran.append, 3)  # raised once; the thread goes on
    lane.settle()
    assert ran == [1, 3]
