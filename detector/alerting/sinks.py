"""Sinks: where incidents leave netad for the SOC's pipelines (files, syslog, Splunk, webhooks).

Where it stands: the very end of the flow. The incident lifecycle hands each IncidentEvent to
a SinkSet; the SinkSet hands it to every Sink; a Sink is one format (formats.py) plus one
transport (_transport.py, _syslog.py, _http.py), chosen by URL (build_sink).

Delivery guarantee (DESIGN.md, "Nothing is lost"): with a spool directory, publish() writes
the event durably to spool_dir/<sink name>/ (see _spool.py) and returns; a background thread
per sink delivers the spool in order and removes an event only after the transport accepted
it. A failing endpoint makes that one sink back off exponentially (capped) while the others go
on, as Zeek's log writers do; an outage of any length only delays delivery, a crash or restart
resumes from the spool, oldest first. Duplicates after a crash are possible and carry the same
event_id, which is what SIEMs deduplicate on.

Without a spool directory (offline commands), and always for the local jsonl and stdout
sinks, delivery is synchronous: a file write is flushed and fsynced before publish returns,
which is as durable as a spool on the same disk would be. A local sink whose file cannot take
an event (a full disk) holds it in memory, with those after it, and writes them in order once
it can: at the next event, at the daemon's heartbeat, or as the sink stops; what it still
holds then is lost, and named.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from detector.alerting._spool import Spool, SpoolBusyError, SpoolRecordError
from detector.alerting._transport import DeliveryError, EndpointError, ReaderGone, RejectedError, Transport
from detector.alerting._transport import unwritable as unwritable  # check-config's, with the sinks' own check
from detector.alerting._urls import SinkSpec, parse_sink_url, redact_url
from detector.contracts import IncidentEvent
from detector.errors import ConfigError

log = structlog.get_logger()

Encoder = Callable[[IncidentEvent], bytes]

_SYNC_ATTEMPTS = 3  # network sinks without a spool: a short retry, then the event is counted failed
_MEMORY_EVENTS = 1024  # queued events also kept in memory; beyond that they are read back from disk
_STILL_FAILING_LOG_S = 60.0  # how often an ongoing outage is logged again


class _Pending:
    """An event waiting for delivery: its spool sequence number (None if the spool could not
    be written) and, for the first _MEMORY_EVENTS in the queue, the event itself."""

    __slots__ = ("seq", "event", "event_id")

    def __init__(self, seq: int | None, event: IncidentEvent | None) -> None:
        self.seq, self.event = seq, event
        self.event_id: str | None = event.event_id if event is not None else None


class Sink:
    """One format + one transport. publish() never blocks on the endpoint when spooled."""

    def __init__(self, *, name: str, url: str, transport: Transport, encoder: Encoder, spool: Spool | None,
                 backoff_s: float, backoff_max_s: float) -> None:
        self.name = name
        self.url = url  # may hold a token: log display_url instead
        self.display_url = redact_url(url)
        self._transport = transport
        self._encoder = encoder
        self._spool = spool
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._held: deque[IncidentEvent] = deque()  # a local sink's events its file could not take yet
        self.reader_gone = False  # stdout's reader closed it: nothing more can be written there
        self._delivered = self._failed = self._retries = self._dead_lettered = 0
        self._disabled = False
        self._closed = self._stopping = self._kick = False
        self._isolate = 0  # entries left to send one at a time after a batch was rejected
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._last_failure_log = 0.0
        self._random = random.Random()
        self._thread: threading.Thread | None = None
        backlog = 0
        if spool is not None:
            self._pending.extend(_Pending(seq, None) for seq in spool.backlog())
            backlog = len(self._pending)  # counted before the sender may start on it
            self._thread = threading.Thread(target=self._run, name=f"netad-sink-{name}", daemon=True)
            self._thread.start()
        log.info("sink_started", sink=name, url=self.display_url, spooled=spool is not None, backlog=backlog)

    # ---------------------------------------------------------------- the pipeline's side

    @property
    def stats(self) -> dict[str, int | bool]:
        with self._cond:
            return {
                "delivered": self._delivered,
                "failed": self._failed,  # events given up on: dead-lettered, or lost without a spool
                "backlog": len(self._pending) + len(self._held),
                "disabled": self._disabled,
                "retries": self._retries,  # failed delivery attempts
                "dead_lettered": self._dead_lettered,
            }

    def publish(self, event: IncidentEvent) -> None:
        """Take one event. Spooled: durable on disk when this returns, delivered later."""
        if self._closed:
            raise RuntimeError(f"sink {self.name} is closed")
        if self._spool is None:
            self._deliver_now(event)
            return
        seq: int | None
        try:
            seq = self._spool.append(event)
        except (OSError, TypeError, ValueError) as exc:
            # disk full, read-only, an unserialisable value: keep it in memory rather than lose it
            seq = None
            log.error("spool_write_failed", sink=self.name, event_id=event.event_id, error=repr(exc))
        with self._cond:
            keep = seq is None or len(self._pending) < _MEMORY_EVENTS
            self._pending.append(_Pending(seq, event if keep else None))
            self._cond.notify_all()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Ask for an immediate delivery attempt and wait until nothing is pending; False if
        events are still pending when timeout_s runs out (they stay spooled), or as soon as
        that attempt fails on a disabled sink: an endpoint that refuses everything (bad token,
        wrong path) will not change its mind within a shutdown's timeout."""
        if self._thread is None:
            self.write_held()
            return not self._held
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._kick = True
            failures_before = self._retries
            self._cond.notify_all()
            while self._pending and (self._thread is not None and self._thread.is_alive()):
                if self._disabled and self._retries > failures_before:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return not self._pending

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within timeout_s, then stop. What is left stays in
        the spool for the next run."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._closed:
                return
            self._closed = True
        if self._thread is None:
            self.write_held()
            self._lose_held()
            self._transport.close()
            log.info("sink_closed", sink=self.name, delivered=self._delivered, failed=self._failed)
            return
        self.flush(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        # A send in progress gets a moment to finish; the thread releases the transport and
        # the spool lock itself, so nothing is pulled from under it.
        self._thread.join(max(0.05, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("sink_close_timed_out", sink=self.name, backlog=len(self._pending))
        log.info("sink_closed", sink=self.name, delivered=self._delivered, failed=self._failed,
                 backlog=len(self._pending))

    # ---------------------------------------------------------------- without a spool

    def _deliver_now(self, event: IncidentEvent) -> None:
        if self._transport.local:
            with self._send_lock:
                self._held.append(event)
                self._write_held()
            return
        try:
            record = self._encoder(event)
        except Exception as exc:  # an encoder bug on odd input must not stop the pipeline
            self._give_up(event.event_id, f"encoding failed: {exc!r}")
            return
        delay_s = self._backoff_s
        for attempt in range(_SYNC_ATTEMPTS):
            try:
                with self._send_lock:  # a transport serves one caller at a time
                    self._transport.send([record])
            except RejectedError as exc:
                self._give_up(event.event_id, str(exc))
                return
            except DeliveryError as exc:
                with self._cond:
                    self._retries += 1
                if attempt + 1 == _SYNC_ATTEMPTS:
                    self._give_up(event.event_id, str(exc))
                    return
                time.sleep(min(delay_s, self._backoff_max_s))
                delay_s *= 2
            else:
                with self._cond:
                    self._delivered += 1
                return

    def write_held(self) -> None:
        """Write what a local sink holds, oldest first (the daemon's heartbeat: a disk freed in
        a quiet hour does not wait for the next incident)."""
        if self._held:
            with self._send_lock:
                self._write_held()

    def _write_held(self) -> None:
        """Under _send_lock. Each held event in turn, until the file refuses one: that one and
        those after it stay held, in order, up to _MEMORY_EVENTS; beyond, the newest are given up."""
        written = 0
        while self._held and not self.reader_gone:
            event = self._held[0]
            try:
                record = self._encoder(event)
            except Exception as exc:  # an encoder bug on odd input must not stop the pipeline
                self._held.popleft()
                self._give_up(event.event_id, f"encoding failed: {exc!r}")
                continue
            try:
                self._transport.send([record])
            except ReaderGone as exc:
                self.reader_gone = True
                log.warning("sink_reader_gone", sink=self.name, error=str(exc), held=len(self._held),
                            reason="no later event can be written to it")
                break
            except DeliveryError as exc:
                self._on_write_failed(exc)
                break
            self._held.popleft()
            written += 1
        with self._cond:
            self._delivered += written
        while len(self._held) > _MEMORY_EVENTS:
            self._give_up(self._held.pop().event_id, f"not written, and {_MEMORY_EVENTS} events already wait in memory")
        if written and not self._held and self._failing_since is not None:
            log.info("sink_recovered", sink=self.name, outage_s=round(time.monotonic() - self._failing_since, 3),
                     failed_attempts=self._failed_attempts, written=written)
            self._failing_since, self._failed_attempts = None, 0

    def _on_write_failed(self, exc: DeliveryError) -> None:
        now = time.monotonic()
        with self._cond:
            self._retries += 1
        self._failed_attempts += 1
        if self._failing_since is None:
            self._failing_since = self._last_failure_log = now
            log.error("sink_write_failed", sink=self.name, error=str(exc), held=len(self._held),
                      reason="kept in memory; written in order at the next event, the heartbeat or the sink's stop")
        elif now - self._last_failure_log >= _STILL_FAILING_LOG_S:
            self._last_failure_log = now
            log.warning("sink_write_still_failing", sink=self.name, error=str(exc), held=len(self._held),
                        failed_attempts=self._failed_attempts, outage_s=round(now - self._failing_since, 3))

    def _lose_held(self) -> None:
        """As a local sink stops: what its file never took is lost, said so, each by its event_id."""
        lost = [event.event_id for event in self._held]
        self._held.clear()
        if lost:
            with self._cond:
                self._failed += len(lost)
            # a reader that closed stdout chose to (`| head`); a file that refused its lines did not
            said = log.warning if self.reader_gone else log.error
            why = "its reader had closed it" if self.reader_gone else "a full disk?"
            said("sink_events_lost", sink=self.name, events=len(lost), event_ids=lost,
                 reason=f"not written before the sink stopped ({why})")

    def _give_up(self, event_id: str, reason: str) -> None:
        with self._cond:
            self._failed += 1
        log.error("sink_event_failed", sink=self.name, event_id=event_id, reason=reason)

    # ---------------------------------------------------------------- the delivery thread

    def _run(self) -> None:
        delay_s = self._backoff_s
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    if self._stopping:  # close() already allowed the drain it could
                        return
                    limit = 1 if self._isolate else self._transport.batch_max
                    batch = list(itertools.islice(self._pending, limit))
                entries, records = self._prepare(batch)
                if not records:
                    continue
                try:
                    self._transport.send(records)
                except RejectedError as exc:
                    self._on_rejected(entries, exc)
                    continue
                except Exception as exc:
                    # DeliveryError is the expected case; anything else is a transport bug,
                    # which must not end delivery for good: it is logged and retried the same way.
                    failure = exc if isinstance(exc, DeliveryError) else DeliveryError(repr(exc))
                    if failure is not exc:
                        log.error("sink_transport_raised", sink=self.name, error=repr(exc))
                    self._wait(self._on_failure(failure, delay_s))
                    delay_s = min(delay_s * 2, self._backoff_max_s)
                    continue
                self._on_delivered(entries)
                delay_s = self._backoff_s
        finally:
            self._transport.close()
            if self._spool is not None:
                self._spool_what_memory_holds()
                self._spool.close()

    def _spool_what_memory_holds(self) -> None:
        """As the sink stops: the events still pending that the spool could not take when they
        came (a full disk: publish kept them in memory) are written to it now, for the next run;
        those it still cannot take are lost, and said so, each by its event_id."""
        assert self._spool is not None
        with self._cond:
            held = [entry for entry in self._pending if entry.seq is None and entry.event is not None]
        lost = []
        for entry in held:
            try:
                entry.seq = self._spool.append(entry.event)  # type: ignore[arg-type]
            except (OSError, TypeError, ValueError):
                lost.append(entry.event_id)
        if lost:
            with self._cond:
                self._failed += len(lost)
            log.error("sink_events_lost", sink=self.name, events=len(lost), event_ids=lost,
                      reason="neither delivered nor written to the spool (a full disk?) before the sink stopped")
        elif held:
            log.info("sink_events_spooled", sink=self.name, events=len(held),
                     reason="kept in memory when the spool could not be written; the next run delivers them")

    def _prepare(self, batch: list[_Pending]) -> tuple[list[_Pending], list[bytes]]:
        """Load and encode a batch; what cannot be read or encoded is dead-lettered here."""
        entries, records = [], []
        for entry in batch:
            event = entry.event
            if event is None:
                assert self._spool is not None and entry.seq is not None
                try:
                    event = self._spool.load(entry.seq)
                except SpoolRecordError as exc:
                    self._dead_letter(entry, f"unreadable spool record: {exc}")
                    continue
                entry.event_id = event.event_id
            try:
                records.append(self._encoder(event))
            except Exception as exc:  # one odd event must not block the queue behind it
                self._dead_letter(entry, f"encoding failed: {exc!r}")
                continue
            entries.append(entry)
        return entries, records

    def _on_delivered(self, entries: list[_Pending]) -> None:
        if self._spool is not None:
            try:
                self._spool.ack([e.seq for e in entries if e.seq is not None])
            except OSError as exc:  # delivered all the same; a restart would send them again
                log.error("spool_ack_failed", sink=self.name, error=str(exc))
        with self._cond:
            for entry in entries:
                self._pending.remove(entry)  # identity; they are at the head of the queue
            self._delivered += len(entries)
            self._isolate = max(0, self._isolate - len(entries))
            backlog = len(self._pending)
            self._cond.notify_all()
        if self._failing_since is not None:
            outage_s = round(time.monotonic() - self._failing_since, 3)
            event = "sink_enabled" if self._disabled else "sink_recovered"
            log.info(event, sink=self.name, outage_s=outage_s, failed_attempts=self._failed_attempts, backlog=backlog)
            with self._cond:
                self._disabled = False
            self._failing_since, self._failed_attempts = None, 0

    def _on_rejected(self, entries: list[_Pending], exc: RejectedError) -> None:
        if len(entries) > 1:  # find the culprit: the same records again, one at a time
            with self._cond:
                self._isolate = len(entries)
            log.warning("sink_batch_rejected", sink=self.name, events=len(entries), error=str(exc))
            return
        self._dead_letter(entries[0], str(exc))
        with self._cond:
            self._isolate = max(0, self._isolate - 1)

    def _on_failure(self, exc: DeliveryError, delay_s: float) -> float:
        """Count and log a failed attempt; the seconds to wait before the next one."""
        now = time.monotonic()
        endpoint_broken = isinstance(exc, EndpointError)
        with self._cond:
            self._retries += 1
            backlog = len(self._pending)
            newly_disabled = endpoint_broken and not self._disabled
            self._disabled = self._disabled or endpoint_broken
            self._cond.notify_all()  # a flush() waiting on a disabled sink stops waiting
        self._failed_attempts += 1
        if endpoint_broken:  # retrying soon cannot help; slowly, in case someone fixes it
            wait_s = self._backoff_max_s
        else:
            wait_s = min(max(delay_s, exc.retry_after_s or 0.0), self._backoff_max_s)
            wait_s *= self._random.uniform(0.8, 1.0)  # senders that failed together spread out
        if newly_disabled:
            log.error("sink_disabled", sink=self.name, reason=str(exc), retry_in_s=round(wait_s, 3), backlog=backlog)
        if self._failing_since is None:
            self._failing_since = self._last_failure_log = now
            if not newly_disabled:
                log.warning("sink_delivery_failed", sink=self.name, error=str(exc), retry_in_s=round(wait_s, 3),
                            backlog=backlog)
        elif now - self._last_failure_log >= _STILL_FAILING_LOG_S:
            self._last_failure_log = now
            log.warning("sink_delivery_still_failing", sink=self.name, error=str(exc), backlog=backlog,
                        failed_attempts=self._failed_attempts, outage_s=round(now - self._failing_since, 3))
        return wait_s

    def _wait(self, delay_s: float) -> None:
        """Sleep between attempts; flush() and close() cut it short."""
        end = time.monotonic() + delay_s
        with self._cond:
            while not self._stopping and not self._kick:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._kick = False

    def _dead_letter(self, entry: _Pending, reason: str) -> None:
        where = None
        if self._spool is not None and entry.seq is not None:
            try:
                where = str(self._spool.dead_letter(entry.seq))
            except OSError as exc:
                reason = f"{reason}; moving it to dead/ failed: {exc}"
        log.error("event_dead_lettered", sink=self.name, event_id=entry.event_id, reason=reason, kept_at=where)
        with self._cond:
            self._pending.remove(entry)
            self._failed += 1
            self._dead_lettered += 1
            self._cond.notify_all()


class SinkSet:
    """What the daemon holds: every event goes to every sink; one sink's trouble is its own."""

    def __init__(self, sinks: list[Sink]) -> None:
        seen: set[str] = set()
        for sink in sinks:
            if sink.name in seen:
                raise ConfigError(f"sinks: two sinks are named {sink.name!r}; give one a different name")
            seen.add(sink.name)
        self.sinks = list(sinks)

    def __iter__(self) -> Iterator[Sink]:
        return iter(self.sinks)

    def __len__(self) -> int:
        return len(self.sinks)

    def publish(self, event: IncidentEvent) -> None:
        for sink in self.sinks:
            try:
                sink.publish(event)
            except Exception as exc:  # a sink's fault must not cost the other sinks the event
                log.error("sink_publish_failed", sink=sink.name, event_id=event.event_id, error=repr(exc))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """All sinks drained within one shared deadline (they deliver in parallel)."""
        deadline = time.monotonic() + timeout_s
        results = [sink.flush(max(0.0, deadline - time.monotonic())) for sink in self.sinks]
        return all(results)

    def close(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        for sink in self.sinks:
            sink.close(max(0.0, deadline - time.monotonic()))

    def write_held(self) -> None:
        """Local sinks write what a full disk made them hold (Sink.write_held)."""
        for sink in self.sinks:
            sink.write_held()

    def stats(self) -> dict[str, dict[str, int | bool]]:
        return {sink.name: sink.stats for sink in self.sinks}


def sink_clashes(wanted: list[tuple[str, str | None]], scores: Path | None) -> list[tuple[int | None, str]]:
    """What `run` refuses in the sinks together, each URL valid on its own: (the index of the
    sink, or None for outputs.scores, and why). Two sinks of one name (a URL names its sink
    where `name:` does not) would share the spool the name is given (SinkSet refused them
    too, after building them, and check-config had not seen it). Two jsonl sinks on one file
    would write each event into it twice, and outputs.scores on a jsonl sink's file would mix window scores into the
    incident events a SIEM reads from it. URLs that do not parse are left to _sink_name."""
    out: list[tuple[int | None, str]] = []
    names: dict[str, int] = {}
    files: dict[Path, int] = {}
    for i, (url, name) in enumerate(wanted):
        try:
            spec = parse_sink_url(url, name=name)
        except ConfigError:
            continue
        spec.transport.close()
        if spec.name in names:
            out.append((i, f"named {spec.name!r}, as sinks[{names[spec.name]}] is (a URL names its sink where `name:` "
                           "does not): two sinks of one name would share one spool and deliver each event twice; remove "
                           "one, or give one a `name:`"))
        names.setdefault(spec.name, i)
        path = spec.file.resolve() if spec.file is not None else None
        if path is not None and path in files:
            out.append((i, f"writes {path}, as sinks[{files[path]}] does: each event would be written there twice"))
        if path is not None:
            files.setdefault(path, i)
    if scores is not None and scores.resolve() in files:
        out.append((None, f"{scores} is the file of sinks[{files[scores.resolve()]}] (jsonl): the window scores would be "
                          "mixed into the incident events read from it; give them a file of their own"))
    return out


def build_sink(url: str, *, spool_dir: Path | None = None, name: str | None = None) -> Sink:
    """A started sink for `url` (see _urls.py for the forms). With spool_dir, network sinks
    spool to spool_dir/<name>/ and deliver in the background; the name defaults to one
    derived from the URL, stable across restarts. ConfigError("sinks: <url>: <reason>")."""
    spec: SinkSpec = parse_sink_url(url, name=name)
    try:
        spec.transport.open()
    except OSError as exc:
        raise ConfigError(f"sinks: {redact_url(url)}: cannot open for writing: {exc.strerror or exc}") from None
    spool = None
    if spool_dir is not None and not spec.transport.local:
        directory = Path(spool_dir) / spec.name
        try:
            spool = Spool(directory)
        except SpoolBusyError as exc:
            raise ConfigError(f"sinks: {redact_url(url)}: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"sinks: {redact_url(url)}: cannot use spool {directory}: {exc}") from None
    return Sink(name=spec.name, url=url, transport=spec.transport, encoder=spec.encoder, spool=spool,
                backoff_s=spec.backoff_s, backoff_max_s=spec.backoff_max_s)
