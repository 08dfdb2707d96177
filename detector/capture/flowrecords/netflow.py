"""NetFlow v5 / v9 and IPFIX collector: UDP export datagrams -> FlowRecordBatch.

Where this stands: a source at the head of the flow-record path (see capture.flowrecords)::

    exporters --UDP--> NetflowCollector --datagrams--> NetflowParser --> FlowRecordBatch
                                                                          --> FlowWindowAggregator

The parser is stateful per exporter, as the protocols are. Templates (v9 template and options
template flow sets, IPFIX template and options template sets) are kept per (exporter
address, observation domain / v9 source id, template id); a template sent again with the
same fields is a refresh, with other fields it replaces the old one, IPFIX withdrawals remove
it. Sampling announced in options records (v9 SAMPLING_INTERVAL, IPFIX samplingPacketInterval
and samplingPacketSpace, samplingSize/Population, per selector/sampler id or for the whole
domain), in the data records themselves, or in the v5 header is applied to the counters: a
record says what the exporter estimates really passed, and its `sampling` column by how much
it was multiplied. Times are made absolute (v5/v9: from the header's uptime and clock; IPFIX:
absolute time fields, deltas from the export time, or sysUpTime plus systemInitTimeMilliseconds
from options records).

Speed: a Python step per datagram and per flow set (a few struct unpacks), never per record:
the records of one template are gathered over the whole batch of datagrams and read by one
numpy structured-array view (capture._netflow_templates, capture._netflow_records). Bad input is counted and logged
(rate-limited), never raised: malformed datagrams and flow sets, templates that do not
parse, records with impossible times. Data that arrives before its template (a collector
started after the exporter sent its templates) is BUFFERED, up to `max_pending_bytes` over all
exporters, and parsed when the template comes; what overflows the buffer is dropped and
counted (`flowsets_dropped_no_template`), and the records are whole only from its export
time on (`watched_from_ns`, as for exports never heard). A restart need not wait for the
templates: `state_dict` gives each exporter's templates and options (sampling, boot time)
for the daemon's checkpoint, and `load_state_dict` puts them back. Sequence numbers are checked per exporter and
domain: gaps (lost datagrams) and datagrams that arrive out of order are counted.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import structlog

from detector.capture.flowrecords._netflow_records import (
    MAX_SYSINIT_MS,
    DatagramFacts,
    gather,
    own_rate,
    record_columns,
    reverse_columns,
)
from detector.capture.flowrecords._netflow_templates import (
    Compiled,
    TemplateField,
    column,
    compile_template,
    fixed_records,
    template_records,
)
from detector.contracts import Exporter, FlowRecordBatch
from detector.errors import CaptureError

log = structlog.get_logger()

_V5_HEADER, _V5_RECORD, _V9_HEADER, _IPFIX_HEADER = 24, 48, 20, 16
# v5's fixed record as a template, so it is read by the same code as v9/IPFIX records
_V5_FIELDS = tuple(TemplateField(ie, ln) for ie, ln in (
    (8, 4), (12, 4), (15, 4), (10, 2), (14, 2), (2, 4), (1, 4), (22, 4), (21, 4), (7, 2), (11, 2),
    (210, 1), (6, 1), (4, 1), (5, 1), (16, 2), (17, 2), (9, 1), (13, 1), (210, 2),
))
_V5 = compile_template(_V5_FIELDS, options=False, v9_scope=False)
_PENDING_OVERHEAD = 64  # bytes a buffered flow set costs beyond its body: empty ones are not free
_MAX_SAMPLERS = 65536  # sampler ids remembered over all exporters


class _Throttle:
    """At most one log line per event key every `interval_s`; says how many it held back."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) > 10_000:  # keys include exporters: keep the table bounded
            self._last.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


@dataclass
class _Work:
    """One parse call's gathered data: per-datagram facts, and record runs per template."""

    version: list[int] = field(default_factory=list)
    export_ns: list[int] = field(default_factory=list)
    uptime_ms: list[int] = field(default_factory=list)
    exporter: list[int] = field(default_factory=list)
    header_rate: list[int] = field(default_factory=list)
    groups: dict[int, tuple[Compiled, list]] = field(default_factory=dict)  # id(c) -> (c, [(blob, n, meta, ordinal)])
    ordinal: int = 0
    malformed: int = 0  # datagrams with damage
    damaged: bool = False  # the current datagram

    def add_meta(self, version: int, export_ns: int, uptime_ms: int, exporter: int, rate: int) -> int:
        self.version.append(version)
        self.export_ns.append(export_ns)
        self.uptime_ms.append(uptime_ms)
        self.exporter.append(exporter)
        self.header_rate.append(rate)
        return len(self.version) - 1


class NetflowParser:
    """Datagrams -> FlowRecordBatch, keeping templates, sampling and sequence state per
    exporter. `parse(datagrams, addresses)` takes the payloads and their senders' addresses."""

    def __init__(
        self,
        default_sampling_rate: int = 1,
        max_templates: int = 4096,
        max_exporters: int = 1024,
        max_pending_bytes: int = 1 << 20,
        allowed_exporters: list[str] | None = None,
        max_clock_skew_s: float = 60.0,
        max_record_age_s: float = 8 * 86400.0,
        log_interval_s: float = 10.0,
        export_window_s: tuple[float, float] | None = None,
    ) -> None:
        if default_sampling_rate < 1:
            raise ValueError(f"default_sampling_rate must be at least 1, not {default_sampling_rate}")
        self.default_sampling_rate = default_sampling_rate  # for exporters that never say
        self.max_templates = max_templates
        self.max_exporters = max_exporters
        self.max_pending_bytes = max_pending_bytes
        self.allowed_exporters = list(allowed_exporters) if allowed_exporters else None
        self.max_clock_skew_s = max_clock_skew_s  # a record may end at most this long after its export
        self.max_record_age_s = max_record_age_s  # ... and start at most this long before it
        self.log_interval_s = log_interval_s
        # live: (ahead, behind) seconds a datagram's export time may be off the wall clock;
        # None for datagrams that were recorded (their export time is in the past)
        self.export_window_s = export_window_s
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in self.allowed_exporters or []]
        self._allowed_cache: dict[str, bool] = {}
        self._templates: OrderedDict[tuple[int, int, int], Compiled] = OrderedDict()
        self._compiled: dict[tuple, Compiled] = {}
        self._exporter_ids: dict[tuple[str, int], int] = {}
        self.exporters: dict[int, Exporter] = {}
        self._domain_rate: dict[int, float] = {}
        self._sampler_rate: dict[tuple[int, int], float] = {}
        self._sysinit_ms: dict[int, int] = {}
        self._sequence: dict[tuple[int, int], tuple[int, int]] = {}
        self._restored: set[tuple[int, int, int]] = set()  # templates a checkpoint gave, not yet sent again (load_state_dict)
        self._restored_options: set[int] = set()  # exporters whose sampling and boot time a checkpoint gave
        # the latest export time of an exporter's first datagram heard that was not its first
        # export: what it exported before was lost, so its records are whole only from then on
        self.watched_from_ns: int | None = None
        # the longest an exporter took to report a flow: a record's export time less its
        # start (a flow's first packet, or where its last export cut it). At a stop, the
        # windows that ended less than this before it may still be owed records
        self.reporting_lag_ns: int | None = None
        self._pending: deque[tuple[tuple[int, int, int], bytes, tuple[int, int, int, int, int]]] = deque()
        self._pending_keys: dict[tuple[int, int, int], int] = {}
        self._pending_bytes = 0
        self._throttle = _Throttle(log_interval_s)
        self.counters: dict[str, int] = dict.fromkeys((
            "datagrams", "datagrams_malformed", "datagrams_refused", "records", "options_records",
            "templates_added", "templates_refreshed", "templates_changed", "templates_withdrawn",
            "templates_evicted", "templates_malformed", "flowsets_waiting_template",
            "flowsets_dropped_no_template", "records_bad_time", "records_time_from_export",
            "records_without_addresses", "records_variable_length", "sequence_gaps",
            "datagrams_out_of_order", "datagrams_bad_export_time",
        ), 0)

    # ------------------------------------------------------------------ entry point
    def parse(self, datagrams: Sequence[bytes], addresses: Sequence[str]) -> FlowRecordBatch:
        work = _Work()
        for data, address in zip(datagrams, addresses, strict=False):
            self.counters["datagrams"] += 1
            work.damaged = False
            try:
                self._datagram(memoryview(data), address, work)
            except (struct.error, ValueError, IndexError) as exc:  # a length we did not check: still bad input
                self._malformed(work, address, f"unparsable: {exc.__class__.__name__}")
            if work.damaged:  # what parsed before the damage is kept; the datagram counts once
                work.malformed += 1
                self.counters["datagrams_malformed"] += 1
        return self.told(self._extract(work))

    def told(self, batch: FlowRecordBatch) -> FlowRecordBatch:
        """`batch` with what the exporters' datagrams told of the whole stream so far: from
        when its records are whole (watched_from_ns) and how late they come (reporting_lag_ns)."""
        batch.watched_from_ns, batch.reporting_lag_ns = self.watched_from_ns, self.reporting_lag_ns
        return batch

    def _malformed(self, work: _Work, address: str, reason: str) -> None:
        work.damaged = True
        held = self._throttle(f"malformed:{reason}")
        if held is not None:
            log.warning("netflow_datagram_malformed", exporter=address, reason=reason, similar_not_logged=held)

    def _exporter(self, address: str, domain: int) -> int | None:
        eid = self._exporter_ids.get((address, domain))
        if eid is not None:
            return eid
        if self._allowed:
            ok = self._allowed_cache.get(address)
            if ok is None:
                try:
                    ip = ipaddress.ip_address(address.split("%")[0])
                    ok = any(ip in net for net in self._allowed)
                except ValueError:
                    ok = False
                if len(self._allowed_cache) < 65536:
                    self._allowed_cache[address] = ok
            if not ok:
                return None
        if len(self._exporter_ids) >= self.max_exporters:
            return None
        eid = len(self._exporter_ids) + 1  # 0 is "no exporter" (log files)
        self._exporter_ids[(address, domain)] = eid
        name = address if domain == 0 else f"{address}/{domain}"
        self.exporters[eid] = Exporter(name=name, address=address, domain=domain)
        log.info("netflow_exporter_seen", exporter=address, observation_domain=domain, exporter_id=eid)
        return eid

    # ------------------------------------------------------------------ datagrams
    def _datagram(self, data: memoryview, address: str, work: _Work) -> None:
        if len(data) < 4:
            return self._malformed(work, address, "shorter than a header")
        version = (data[0] << 8) | data[1]
        if version == 5:
            return self._v5(data, address, work)
        if version == 9:
            return self._v9(data, address, work)
        if version == 10:
            return self._ipfix(data, address, work)
        return self._malformed(work, address, f"unknown version {version}")

    def _refused(self, address: str) -> None:
        self.counters["datagrams_refused"] += 1
        held = self._throttle(f"refused:{address}")
        if held is not None:
            log.warning("netflow_datagram_refused", exporter=address, reason="not an allowed exporter or too many exporters",
                        max_exporters=self.max_exporters, similar_not_logged=held)

    def _export_time_off(self, secs: int, address: str) -> bool:
        """True (the datagram is refused, counted and logged) when its export time is
        further from the wall clock than export_window_s allows: a forged or broken clock
        must not date its records, nor its templates' use, a month or ten years ahead."""
        if self.export_window_s is None:
            return False
        ahead_s, behind_s = self.export_window_s
        off_s = secs - time.time()
        if -behind_s <= off_s <= ahead_s:
            return False
        self.counters["datagrams_bad_export_time"] += 1
        held = self._throttle(f"export_time:{address}")
        if held is not None:
            log.warning("netflow_datagram_refused", exporter=address, reason="export time off the wall clock",
                        off_s=round(off_s, 1), max_ahead_s=ahead_s, max_behind_s=behind_s, similar_not_logged=held)
        return True

    def _v5(self, data: memoryview, address: str, work: _Work) -> None:
        if len(data) < _V5_HEADER:
            return self._malformed(work, address, "v5 header truncated")
        count, uptime, secs, nsecs, seq, engine_type, engine_id, sampling = struct.unpack_from("!HIIIIBBH", data, 2)
        if count == 0 or _V5_HEADER + count * _V5_RECORD > len(data):
            return self._malformed(work, address, "v5 record count does not match the datagram")
        exp = self._exporter(address, (engine_type << 8) | engine_id)
        if exp is None:
            return self._refused(address)
        if self._export_time_off(secs, address):
            return None
        rate = sampling & 0x3FFF  # the top two bits are the sampling mode
        meta = work.add_meta(5, secs * 1_000_000_000 + min(nsecs, 999_999_999), uptime, exp, rate if rate > 1 else 0)
        self._add_records(work, _V5, data[_V5_HEADER : _V5_HEADER + count * _V5_RECORD], count, meta)
        self._check_sequence(exp, 5, seq, count, secs)

    def _v9(self, data: memoryview, address: str, work: _Work) -> None:
        if len(data) < _V9_HEADER:
            return self._malformed(work, address, "v9 header truncated")
        _count, uptime, secs, seq, source_id = struct.unpack_from("!HIIII", data, 2)
        exp = self._exporter(address, source_id)
        if exp is None:
            return self._refused(address)
        if self._export_time_off(secs, address):
            return None
        meta = work.add_meta(9, secs * 1_000_000_000, uptime, exp, 0)
        self._sets(data, _V9_HEADER, exp, 9, meta, work, address)
        self._check_sequence(exp, 9, seq, 1, secs)

    def _ipfix(self, data: memoryview, address: str, work: _Work) -> None:
        if len(data) < _IPFIX_HEADER:
            return self._malformed(work, address, "IPFIX header truncated")
        length, secs, seq, domain = struct.unpack_from("!HIII", data, 2)
        if length < _IPFIX_HEADER or length > len(data):
            return self._malformed(work, address, "IPFIX message length does not match the datagram")
        exp = self._exporter(address, domain)
        if exp is None:
            return self._refused(address)
        if self._export_time_off(secs, address):
            return None
        meta = work.add_meta(10, secs * 1_000_000_000, 0, exp, 0)
        n_data = self._sets(data[:length], _IPFIX_HEADER, exp, 10, meta, work, address)
        self._check_sequence(exp, 10, seq, n_data, secs)

    def _sets(self, data: memoryview, pos: int, exp: int, version: int, meta: int, work: _Work, address: str) -> int:
        """Walk the flow sets; returns the data records found (-1 when some waited for a template)."""
        tmpl_id, opt_id = (0, 1) if version == 9 else (2, 3)
        n_data = 0
        end = len(data)
        while pos + 4 <= end:
            set_id, set_len = struct.unpack_from("!HH", data, pos)
            if set_len < 4 or pos + set_len > end:
                self._malformed(work, address, "flow set length exceeds the datagram")
                break
            body = data[pos + 4 : pos + set_len]
            if set_id == tmpl_id or set_id == opt_id:
                if not self._templates_in(body, exp, version, set_id == opt_id, work):
                    self.counters["templates_malformed"] += 1
                    self._malformed(work, address, "template set does not parse")
            elif set_id >= 256:
                n = self._data_set(work, (exp, version, set_id), body, meta)
                n_data = -1 if n < 0 or n_data < 0 else n_data + n
            pos += set_len
        return n_data

    # ------------------------------------------------------------------ templates
    def _templates_in(self, body: memoryview, exp: int, version: int, options: bool, work: _Work) -> bool:
        """Define (or withdraw) the templates of a template set; False when it is damaged
        (those before the damage still count)."""
        records, ok = template_records(body, version, options)
        for tid, fields in records:
            if fields is None:
                self._withdraw(exp, version, tid)
            else:
                self._define((exp, version, tid), fields, options, version == 9, work)
        return ok

    def _define(self, key: tuple[int, int, int], fields: tuple[TemplateField, ...], options: bool, v9_scope: bool, work: _Work) -> None:
        self._restored.discard(key)  # the exporter's own word now
        old = self._templates.get(key)
        if old is not None and old.fields == fields and old.options == options:
            self.counters["templates_refreshed"] += 1
            self._templates.move_to_end(key)
        else:
            c = self._install(key, fields, options, v9_scope)
            self.counters["templates_changed" if old is not None else "templates_added"] += 1
            if self._throttle(f"template:{key}") is not None:
                log.info("netflow_template_changed" if old is not None else "netflow_template_added",
                         exporter=self.exporters[key[0]].name, version=key[1], template_id=key[2], fields=len(fields),
                         options=options, record_bytes=c.record_len)
        if self._pending_keys.get(key):
            self._release_pending(key, work)

    def _install(self, key: tuple[int, int, int], fields: tuple[TemplateField, ...], options: bool, v9_scope: bool) -> Compiled:
        ck = (fields, options, v9_scope)
        c = self._compiled.get(ck)
        if c is None:
            if len(self._compiled) > 4 * self.max_templates:
                self._compiled.clear()
            c = self._compiled[ck] = compile_template(fields, options, v9_scope)
        self._templates[key] = c
        self._templates.move_to_end(key)
        while len(self._templates) > self.max_templates:
            self._restored.discard(self._templates.popitem(last=False)[0])
            self.counters["templates_evicted"] += 1
        return c

    def _withdraw(self, exp: int, version: int, tid: int) -> None:
        keys = [k for k in self._templates if k[0] == exp and k[1] == version and (k[2] == tid or tid in (2, 3))]
        for k in keys:
            del self._templates[k]
        self.counters["templates_withdrawn"] += len(keys)

    # ------------------------------------------------------------------ data sets
    def _data_set(self, work: _Work, key: tuple[int, int, int], body: memoryview, meta: int) -> int:
        c = self._templates.get(key)
        if c is None:
            self._wait_for_template(key, body, work, meta)
            return -1
        if c.record_len is None:
            blob, n = fixed_records(c, body)
            self.counters["records_variable_length"] += n
            return self._add_records(work, c, memoryview(blob), n, meta)
        n = len(body) // c.record_len  # what remains is padding
        return self._add_records(work, c, body[: n * c.record_len], n, meta)

    def _add_records(self, work: _Work, c: Compiled, blob: memoryview, n: int, meta: int) -> int:
        if n > 0 and c.fixed_len > 0:
            work.groups.setdefault(id(c), (c, []))[1].append((blob, n, meta, work.ordinal))
            work.ordinal += n
        return n

    def _wait_for_template(self, key: tuple[int, int, int], body: memoryview, work: _Work, meta: int) -> None:
        m = (work.version[meta], work.export_ns[meta], work.uptime_ms[meta], work.exporter[meta], work.header_rate[meta])
        self._pending.append((key, bytes(body), m))
        self._pending_keys[key] = self._pending_keys.get(key, 0) + 1
        self._pending_bytes += len(body) + _PENDING_OVERHEAD
        self.counters["flowsets_waiting_template"] += 1
        while self._pending_bytes > self.max_pending_bytes and self._pending:
            old_key, old_body, old_meta = self._pending.popleft()
            self._pending_bytes -= len(old_body) + _PENDING_OVERHEAD
            self._pending_keys[old_key] -= 1
            self.counters["flowsets_dropped_no_template"] += 1
            # its records are lost, as an export never heard: the flows in it ended before its
            # export, so the windows before then are not whole (a collector opened under a busy
            # exporter whose template refresh is minutes away)
            whole_from = self._whole_from(old_meta[1])
            held = self._throttle(f"dropped:{old_key[0]}")
            if held is not None:
                log.warning("netflow_flowsets_dropped", exporter=self.exporters[old_key[0]].name, template_id=old_key[2],
                            reason="no template came before the buffer filled", max_pending_bytes=self.max_pending_bytes,
                            whole_from=whole_from // 1_000_000_000, similar_not_logged=held)
        held = self._throttle(f"unknown_template:{key}")
        if held is not None:
            log.warning("netflow_template_unknown", exporter=self.exporters[key[0]].name, version=key[1], template_id=key[2],
                        action="buffered until the template arrives", pending_bytes=self._pending_bytes,
                        similar_not_logged=held)

    def _release_pending(self, key: tuple[int, int, int], work: _Work) -> None:
        keep: deque = deque()
        for entry in self._pending:
            if entry[0] != key:
                keep.append(entry)
                continue
            body, m = entry[1], entry[2]
            self._pending_bytes -= len(body) + _PENDING_OVERHEAD
            meta = work.add_meta(*m)
            self._data_set(work, key, memoryview(body), meta)
        self._pending = keep
        self._pending_keys.pop(key, None)

    def _check_sequence(self, exp: int, version: int, seq: int, n_records: int, export_s: int) -> None:
        """v9 counts export packets, v5 and IPFIX count records (IPFIX: before this message,
        though softflowd counts this one too: both are accepted)."""
        key = (exp, version)
        last = self._sequence.get(key)
        if last is None:
            self._first_heard(exp, version, seq, n_records, export_s)
        if last is not None and n_records >= 0 and last[1] >= 0:  # -1: some records waited for a template
            last_seq, last_n = last
            diff = (seq - last_seq) & 0xFFFFFFFF
            diff = diff - (1 << 32) if diff >= 1 << 31 else diff
            expected = (1,) if version == 9 else (last_n, n_records)
            if diff < 0 or (diff == 0 and 0 not in expected):
                self.counters["datagrams_out_of_order"] += 1
                held = self._throttle(f"order:{exp}")
                if held is not None:
                    log.warning("netflow_datagram_out_of_order", exporter=self.exporters[exp].name, sequence=seq,
                                previous=last_seq, similar_not_logged=held)
                return
            if diff > max(expected):
                self.counters["sequence_gaps"] += 1
                held = self._throttle(f"gap:{exp}")
                if held is not None:
                    log.warning("netflow_sequence_gap", exporter=self.exporters[exp].name, sequence=seq, previous=last_seq,
                                missing=diff - max(expected), unit="datagrams" if version == 9 else "records",
                                similar_not_logged=held)
        self._sequence[key] = (seq, n_records)

    def _first_heard(self, exp: int, version: int, seq: int, n_records: int, export_s: int) -> None:
        """An exporter's first datagram heard: its sequence number says whether it exported
        before (v5 counts flows and v9 export packets from 0, IPFIX data records from 0;
        softflowd starts v9 at 1 and counts an IPFIX message's own records). If it did, the
        collector opened while it was exporting (netad started or restarted, or the exporter
        was pointed here) and what it exported before was lost: the flows it had watched end
        before this export, so its records are whole from the export's time on
        (`watched_from_ns`, which the window stage reads as a live capture's opening). No
        record says which earlier windows they were missing from."""
        first = 1 if version == 9 else max(n_records, 0)
        if seq <= first:
            self._forget_restored(exp)
            return
        export_ns = self._whole_from(export_s * 1_000_000_000)
        log.info("netflow_exports_missed", exporter=self.exporters[exp].name, sequence=seq,
                 unit="datagrams" if version == 9 else "records", whole_from=export_ns // 1_000_000_000)

    def _whole_from(self, export_ns: int) -> int:
        """The records are whole only from `export_ns` on (the export time of a datagram
        whose earlier exports, or whose own records, were lost): watched_from_ns moves
        there, and never back. Live, never past now (a clock ahead would hide windows heard
        whole). Returns the time taken."""
        if self.export_window_s is not None:
            export_ns = min(export_ns, time.time_ns())
        self.watched_from_ns = max(self.watched_from_ns or export_ns, export_ns)
        return export_ns

    # ------------------------------------------------------------------ extraction
    def _extract(self, work: _Work) -> FlowRecordBatch:
        if not work.groups:
            return FlowRecordBatch.empty(malformed=work.malformed)
        exporter = np.asarray(work.exporter, dtype=np.int64)
        groups = list(work.groups.values())
        for c, runs in groups:  # options first: they say how to read the data
            if c.options:
                self._options(c, runs, exporter)
        facts = DatagramFacts(
            version=np.asarray(work.version, dtype=np.int64),
            export_ns=np.asarray(work.export_ns, dtype=np.int64),
            uptime_ms=np.asarray(work.uptime_ms, dtype=np.int64),
            exporter=exporter,
            header_rate=np.asarray(work.header_rate, dtype=np.float64),
            domain_rate=np.array([self._domain_rate.get(e, 0.0) for e in work.exporter], dtype=np.float64),
            sysinit_ms=np.array([self._sysinit_ms.get(e, -1) for e in work.exporter], dtype=np.int64),
        )
        parts: list[dict[str, np.ndarray]] = []
        for c, runs in groups:
            if c.options:
                continue
            arr, meta, order = gather(c, runs)
            cols, unknown_time = record_columns(c, arr, meta, facts, self._sampler_rate, self.default_sampling_rate)
            self.counters["records_time_from_export"] += unknown_time
            cols["order"] = order * 2
            parts.append(cols)
            if c.has("rev_packets") or c.has("rev_bytes"):
                parts.append(reverse_columns(c, arr, cols))
        if not parts:  # only options records came
            return FlowRecordBatch.empty(malformed=work.malformed)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        keep = self._plausible(merged)
        order = np.argsort(merged.pop("order")[keep], kind="stable")
        if keep.any():
            lag = int((merged["export_ns"][keep] - merged["start_ns"][keep]).max())
            self.reporting_lag_ns = max(self.reporting_lag_ns or 0, lag, 0)
        for key in ("export_ns", "rate"):
            merged.pop(key)
        out = {k: v[keep][order] for k, v in merged.items()}
        self.counters["records"] += int(order.shape[0])
        present = np.unique(out["exporter"]).tolist() if order.shape[0] else []
        return FlowRecordBatch.from_columns(out, malformed=work.malformed, exporters={e: self.exporters[e] for e in present})

    def _options(self, c: Compiled, runs: list, exporter: np.ndarray) -> None:
        """Options records: sampling rates (per sampler id or domain-wide), system init time."""
        arr, meta, _ = gather(c, runs)
        self.counters["options_records"] += int(arr.shape[0])
        rate = own_rate(c, arr)
        sampler = column(arr, c, "sampler_id")
        sysinit = column(arr, c, "sysinit_ms")
        exps = exporter[meta]
        for i in range(arr.shape[0]):  # options records are few: one per sampler per refresh
            e = int(exps[i])
            if rate is not None and rate[i] > 0:
                if sampler is not None:
                    if len(self._sampler_rate) >= _MAX_SAMPLERS:  # bounded, even for an exporter inventing ids
                        self._sampler_rate.clear()
                    self._sampler_rate[(e, int(sampler[i]))] = float(rate[i])
                else:
                    self._domain_rate[e] = float(rate[i])
            if sysinit is not None and 0 < sysinit[i] <= MAX_SYSINIT_MS:  # else no time it could be
                self._sysinit_ms[e] = int(sysinit[i])

    def _plausible(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Records with addresses, and times the export could have seen; the rest is counted."""
        no_addr = (cols["src_lo"] == 0) & (cols["src_hi"] == 0) & (cols["dst_lo"] == 0) & (cols["dst_hi"] == 0)
        exp_ns = cols["export_ns"]
        bad_time = (cols["end_ns"] > exp_ns + int(self.max_clock_skew_s * 1e9)) | (
            cols["start_ns"] < exp_ns - int(self.max_record_age_s * 1e9)
        )
        self.counters["records_without_addresses"] += int(no_addr.sum())
        bad = bad_time & ~no_addr
        if bad.any():
            self.counters["records_bad_time"] += int(bad.sum())
            held = self._throttle("bad_time")
            if held is not None:
                log.warning("netflow_records_dropped", reason="record times outside the export's clock window",
                            records=int(bad.sum()), max_clock_skew_s=self.max_clock_skew_s,
                            max_record_age_s=self.max_record_age_s, similar_not_logged=held)
        return ~(no_addr | bad_time)

    def stats(self) -> dict[str, int]:
        return {**self.counters, "templates": len(self._templates), "exporters": len(self.exporters),
                "pending_bytes": self._pending_bytes}

    # ------------------------------------------------------------------ across a restart
    def state_dict(self) -> dict[str, Any]:
        """What a restart needs to read its exporters' next datagrams at once: each exporter's
        templates and what its options records said (sampling rates, boot time), by its
        address and domain, as JSON; and how late they report (reporting_lag_ns), so that a
        stop soon after the restart lets go the windows they still owe records for, as the
        run before would have. Without the templates, a collector restarted under running
        exporters holds (and past `max_pending_bytes` drops) their data until each sends its
        templates again: every 16 datagrams for softflowd, minutes for a router (pmacct's
        nfacctd keeps them in its `nfacctd_templates_file` for the same reason)."""
        # one pass over each table (a checkpoint is taken after every window with incident
        # events: up to max_exporters times max_templates, or 65,536 samplers, must not be walked per exporter)
        templates: dict[int, list[dict]] = {}
        for (e, version, tid), c in self._templates.items():
            templates.setdefault(e, []).append({"version": version, "id": tid, "options": c.options,
                                                "fields": [[f.ie, f.length, f.enterprise, int(f.scope)] for f in c.fields]})
        samplers: dict[int, list[list]] = {}
        for (e, sid), rate in self._sampler_rate.items():
            samplers.setdefault(e, []).append([sid, rate])
        exporters = [{"address": address, "domain": domain, "templates": templates.get(eid, []), "samplers": samplers.get(eid, []),
                      "domain_rate": self._domain_rate.get(eid), "sysinit_ms": self._sysinit_ms.get(eid)}
                     for (address, domain), eid in self._exporter_ids.items()]
        return {"exporters": exporters, "reporting_lag_ns": self.reporting_lag_ns}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """state_dict's exporters back, as if each had just sent them; returns the templates
        put back. Raises ValueError (nothing kept) when `state` is not state_dict's form.
        An exporter's own templates replace them as they come; one that shows by its
        sequence number that it has started afresh voids all it said before
        (_forget_restored). Exporters not allowed (`allowed_exporters`) are left out."""
        try:
            entries = [(str(e["address"]), int(e["domain"]),
                        [(int(t["version"]), int(t["id"]), bool(t["options"]),
                          tuple(TemplateField(int(ie), int(ln), int(ent), bool(scope)) for ie, ln, ent, scope in t["fields"]))
                         for t in e["templates"]],
                        [(int(sid), float(rate)) for sid, rate in e["samplers"]],
                        None if e["domain_rate"] is None else float(e["domain_rate"]),
                        None if e["sysinit_ms"] is None else int(e["sysinit_ms"]))
                       for e in state["exporters"]]
            lag = state.get("reporting_lag_ns")
            if lag is not None and (not isinstance(lag, int) or isinstance(lag, bool) or lag < 0):
                raise ValueError(f"reporting_lag_ns {lag!r} is no duration in ns")
            for _, _, templates, *_ in entries:  # compiled here, so a field list that cannot be read refuses it all
                for version, _, options, fields in templates:
                    if (fields, options, version == 9) not in self._compiled:
                        self._compiled[(fields, options, version == 9)] = compile_template(fields, options, version == 9)
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise ValueError(f"not a NetFlow parser's state: {exc!r}") from None
        if lag is not None:
            self.reporting_lag_ns = max(self.reporting_lag_ns or 0, lag)
        restored = 0
        for address, domain, templates, samplers, domain_rate, sysinit_ms in entries:
            eid = self._exporter(address, domain)
            if eid is None:
                continue
            for version, tid, options, fields in templates:
                self._install((eid, version, tid), fields, options, version == 9)
                self._restored.add((eid, version, tid))
                restored += 1
            for sid, rate in samplers:
                self._sampler_rate[(eid, sid)] = rate
            if domain_rate is not None:
                self._domain_rate[eid] = domain_rate
            if sysinit_ms is not None:
                self._sysinit_ms[eid] = sysinit_ms
            self._restored_options.add(eid)
        return restored

    def _forget_restored(self, exp: int) -> None:
        """An exporter first heard at its first export has just started: the templates and
        options a checkpoint gave for it were its last run's. Those its first datagram did
        not define again go, with its sampling and boot time (its datagrams say them again;
        data that comes first waits for them, as on a fresh collector)."""
        keys = [k for k in self._restored if k[0] == exp]
        for k in keys:
            self._templates.pop(k, None)
            self._restored.discard(k)
        if exp in self._restored_options:
            self._restored_options.discard(exp)
            self._domain_rate.pop(exp, None)
            self._sysinit_ms.pop(exp, None)
            for k in [k for k in self._sampler_rate if k[0] == exp]:
                del self._sampler_rate[k]
        if keys:
            log.info("netflow_restored_templates_dropped", exporter=self.exporters[exp].name, templates=len(keys),
                     reason="the exporter started afresh")


# --------------------------------------------------------------------------------------


class NetflowCollector:
    """Iterator of FlowRecordBatch from a UDP socket that exporters send to.

    A batch is handed on when it holds `batch_records` records or every `poll_s`, whichever
    comes first; while nothing arrives an EMPTY batch comes every `poll_s`, so the daemon
    keeps its clock. Iteration ends within `poll_s` once `stop` is set. Raises CaptureError
    at construction when the address cannot be bound. Receive-buffer overflows (the kernel
    dropped datagrams: we fell behind) are read from /proc/net/udp and logged.
    """

    def __init__(self, bind_address: str = "0.0.0.0", port: int = 2055, buffer_mb: int = 16,
                 batch_records: int = 65536, poll_s: float = 0.2, parser: NetflowParser | None = None) -> None:
        self.bind_address = bind_address
        self.port = port
        self.buffer_mb = buffer_mb
        self.batch_records = batch_records
        self.poll_s = poll_s
        self.parser = parser if parser is not None else NetflowParser()
        self.kind = "live"  # as the daemon's sources say (service._sources.Source)
        self.rereads = False  # a datagram is read once
        self.stop = False
        self.kernel_drops = 0
        self._v6 = ":" in bind_address
        family = socket.AF_INET6 if self._v6 else socket.AF_INET
        self._sock: socket.socket | None = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._set_buffer(buffer_mb * 1024 * 1024)
            self._sock.bind((bind_address, port))
        except OSError as exc:
            self._sock.close()
            self._sock = None
            raise CaptureError(f"netflow collector: cannot bind UDP {bind_address}:{port}: {exc.strerror or exc}") from None
        self._sock.setblocking(False)
        self.address = self._sock.getsockname()[:2]
        self.identity = {"type": "netflow", "address": str(self.address[0]), "port": str(self.address[1])}
        self._inode = os.fstat(self._sock.fileno()).st_ino
        self._last_drops_s = time.monotonic()
        log.info("netflow_collector_bound", address=self.address[0], port=self.address[1])

    def _set_buffer(self, size: int) -> None:
        assert self._sock is not None
        try:  # as root (CAP_NET_ADMIN) past net.core.rmem_max: exporters send in bursts
            self._sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def __iter__(self) -> Iterator[FlowRecordBatch]:
        if self._sock is None:
            raise CaptureError("netflow collector: the socket is closed")
        try:
            yield from self._batches()
        finally:
            self.close()

    def _batches(self) -> Iterator[FlowRecordBatch]:
        assert self._sock is not None
        sock = self._sock
        parts: list[FlowRecordBatch] = []
        pending = 0
        deadline = time.monotonic() + self.poll_s
        while not self.stop:
            datagrams, senders = [], []
            while len(datagrams) < 4096:
                try:
                    data, sender = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                datagrams.append(data)
                senders.append(sender[0])
            if self._v6 and senders:  # an IPv4 exporter seen through a dual-stack socket: its IPv4 address
                senders = [a[7:] if a.startswith("::ffff:") and "." in a else a for a in senders]
            if datagrams:
                batch = self.parser.parse(datagrams, senders)
                if len(batch) or batch.malformed:
                    parts.append(batch)
                    pending += len(batch)
            now = time.monotonic()
            if pending >= self.batch_records or now >= deadline:
                yield FlowRecordBatch.concat(parts) if parts else self.parser.told(FlowRecordBatch.empty())
                parts, pending = [], 0
                deadline = now + self.poll_s
                self._poll_drops()
                continue
            if not datagrams:
                select.select([sock], [], [], max(0.0, deadline - now))
        if parts:
            yield FlowRecordBatch.concat(parts)

    def _poll_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_drops_s < 1.0:
            return
        self._last_drops_s = now
        drops = _udp_socket_drops(self._inode)
        if drops is not None and drops != self.kernel_drops:
            log.warning("netflow_drops_changed", kernel_drops=drops, new_kernel_drops=drops - self.kernel_drops)
            self.kernel_drops = drops

    def stats(self) -> dict[str, int]:
        if self._sock is not None:
            self._poll_drops(force=True)
        return {**self.parser.stats(), "kernel_drops": self.kernel_drops}

    def close(self) -> None:
        if self._sock is not None:
            self._poll_drops(force=True)
            self._sock.close()
            self._sock = None

    def __enter__(self) -> NetflowCollector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _udp_socket_drops(inode: int) -> int | None:
    """The kernel's drop counter of our UDP socket (last column of /proc/net/udp[6])."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) >= 13 and parts[9] == str(inode):
                        return int(parts[-1])
        except (OSError, StopIteration, ValueError):
            continue
    return None

