"""Zeek conn.log reader: a growing (or finished) conn.log -> FlowRecordBatch, with the DNS
answers of the dns.log beside it and the long connections of the conn_long.log beside it.

Where this stands: a source at the head of the flow-record path (see capture.flowrecords),
for sites that already run Zeek::

    conn.log      (TSV or JSON) --> ZeekConnLog --> FlowRecordBatch --> FlowWindowAggregator
    conn_long.log (TSV or JSON) -------^  (the parts of long connections: LongConnections)
    dns.log       (TSV or JSON) -------^  (.answers: DnsAnswers, for the peer history)

The dns.log is read as capture.packets._dns reads answers off the wire (DnsLogParser), in
step with the conn.log's record times when replayed and as Zeek appends to it when
followed, by the same file reading (rotation, truncation, resume) as the conn.log. The
long-connections log (Zeek's long-connections package, or activecm's open_conn.log) is read
the same way, its lines merged into the conn.log's by time; each is counted as the part of
its connection since the line before (LongConnections).

Both of Zeek's log formats are read: TSV with its `#fields` header (the separator, unset
and empty markers are taken from the header; extra columns such as IoT-23's labels are
ignored; a header that appears again, after a rotation or in concatenated logs, replaces the
old one) and JSON lines (flat "id.orig_h" keys or nested "id" objects, epoch or ISO 8601
timestamps). A `.gz` file is read whole.

Each connection becomes up to two unidirectional records, so that Zeek and NetFlow give the
same rows for the same traffic: originator -> responder (orig_pkts, orig_ip_bytes) and, when
the responder sent anything, responder -> originator (resp_pkts, resp_ip_bytes), both over
[ts, ts + duration]. The OR-ed TCP flags of each direction come from Zeek's `history`
(upper case: originator, lower case: responder; S = SYN, H = SYN+ACK, A = ACK, F = FIN,
R = RST; Q, SYN with FIN or RST, gives SYN): a connection attempt never answered ("S") is a record with
SYN and no ACK, as an exporter would report it. ICMP: Zeek logs the type as orig_p and its
counterpart type as resp_p; they become the records' sport (type) as in PacketBatch.

Speed: lines are split for a whole chunk at once and columns converted by numpy; addresses,
protocols and histories are parsed once per distinct value. Following a live log (`follow`)
reads what Zeek appends, notices rotation (the path now names another inode: the old file
is read to its end first) and truncation (the file got shorter: read again from the top),
and hands on an EMPTY batch every `poll_s` while nothing comes, so the daemon keeps its
clock. `position()` is where the reading stands (the file's device and inode, and the offset
after the last whole line handed on); `reading_point(before)` is where a restart picks up:
the last such position where every record handed on had ended before the windows not yet
closed, whose records are so read again and those windows built whole. `resume_at` takes
it back: the same file, at least as
long, is read on from that offset (what Zeek wrote while netad was down is scored). A file
rotated since is looked for beside the path (Zeek renames what it rotates there, or into a
folder there such as log-queue/): found, it is read on from the offset, then the new file
from its top; not found (compressed, moved away, deleted), the new file is read from its top
and the warning says the rest of the old one is not read. A file truncated since is read
from its top (all of it is newer than the position).
A live record that ends past our clock (plus `max_clock_skew_s`) is dropped and counted.
Lines that do not parse are counted in `malformed`, never raised.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import itertools
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import structlog

from detector.capture.names import MAX_ANSWERS, registered
from detector.contracts import V4_MAPPED_LO_PREFIX, DnsAnswers, Exporter, FlowRecordBatch, addr_to_pair
from detector.errors import CaptureError

log = structlog.get_logger()

# conn.log's columns when a file has no header (Zeek with LogAscii::include_meta=F)
DEFAULT_FIELDS = tuple(("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto service duration orig_bytes resp_bytes "
                        "conn_state local_orig local_resp missed_bytes history orig_pkts orig_ip_bytes resp_pkts "
                        "resp_ip_bytes tunnel_parents").split())
# dns.log's, likewise
DNS_FIELDS = tuple(("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto trans_id rtt query qclass qclass_name qtype "
                    "qtype_name rcode rcode_name AA TC RD RA Z answers TTLs rejected").split())
_REQUIRED = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
_PROTO = {b"tcp": 6, b"udp": 17, b"icmp": 1, b"sctp": 132}
# history letters (upper case: originator) -> TCP flags; Q is SYN with FIN or RST: only SYN is sure
_ORIG_FLAGS = {"S": 0x02, "H": 0x12, "A": 0x10, "F": 0x01, "R": 0x04, "Q": 0x02}
_ADDR_CACHE_MAX = 1 << 16
_MAX_DURATION_S = 10 * 365 * 86400.0  # longer is a damaged line (and would overflow int64 ns)


class _LogParser:
    """Complete lines of one Zeek log -> what a subclass makes of them; keeps the TSV header
    (separator, set separator, unset marker, fields) between calls."""

    default_fields: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.lines = 0  # data lines read, malformed ones included
        self.malformed = 0
        self.reset()

    def reset(self) -> None:
        """A new file starts (rotation, truncation): its header comes again."""
        self.separator, self.set_separator, self.unset = b"\t", b",", b"-"
        self.fields: list[str] = list(self.default_fields)
        self.json: bool | None = None  # decided by the first data line

    def feed(self, chunk: bytes) -> Any:
        """Parse complete lines (the caller keeps a trailing partial line for later)."""
        parts = []
        malformed_before = self.malformed
        if chunk.startswith(b"#") or b"\n#" in chunk:
            run: list[bytes] = []
            for line in chunk.split(b"\n"):
                if line.startswith(b"#"):
                    if run:
                        parts.append(self._data(b"\n".join(run)))
                        run = []
                    self._header(line)
                elif line:
                    run.append(line)
            if run:
                parts.append(self._data(b"\n".join(run)))
        else:
            parts.append(self._data(chunk))
        return self._joined(parts, self.malformed - malformed_before)

    def _header(self, line: bytes) -> None:
        key, _, value = line.partition(b" " if line.startswith(b"#separator") else self.separator)
        if key == b"#separator":
            try:  # written escaped: "\x09"
                self.separator = value.strip().decode("unicode_escape").encode("latin-1") or b"\t"
            except (UnicodeDecodeError, UnicodeEncodeError):
                self.malformed += 1
        elif key == b"#set_separator":
            self.set_separator = value or b","
        elif key == b"#unset_field":
            self.unset = value
        elif key == b"#fields":
            self.fields = [f.decode("utf-8", "replace") for f in value.split(self.separator)]
            self.json = False

    def _data(self, text: bytes) -> Any:
        raise NotImplementedError

    def _joined(self, parts: list[Any], malformed: int) -> Any:
        raise NotImplementedError


@dataclass
class Connections:
    """Parsed conn.log lines, one row per connection (what a line says of it), before they
    become records: `uid` is Zeek's connection id (b"" where the log has none). Counts are
    what the line says: a conn_long.log line's are the connection's totals so far
    (LongConnections makes them the part since the line before)."""

    uid: np.ndarray  # bytes
    start_ns: np.ndarray
    end_ns: np.ndarray
    o_hi: np.ndarray
    o_lo: np.ndarray
    r_hi: np.ndarray
    r_lo: np.ndarray
    o_port: np.ndarray
    r_port: np.ndarray
    proto: np.ndarray
    orig_pkts: np.ndarray
    resp_pkts: np.ndarray
    orig_ip_bytes: np.ndarray
    resp_ip_bytes: np.ndarray
    o_flags: np.ndarray
    r_flags: np.ndarray
    continued: np.ndarray  # bool: a later part of a connection counted before (LongConnections)
    malformed: int = 0

    def __len__(self) -> int:
        return int(self.start_ns.shape[0])

    @classmethod
    def empty(cls, malformed: int = 0) -> Connections:
        cols = {f.name: np.zeros(0, np.uint64 if f.name.endswith(("_hi", "_lo")) else np.int64)
                for f in fields(cls) if f.name not in ("uid", "continued", "malformed")}
        return cls(uid=np.zeros(0, np.bytes_), **cols, continued=np.zeros(0, bool), malformed=malformed)

    @classmethod
    def concat(cls, parts: list[Connections]) -> Connections:
        kept = [p for p in parts if len(p)]
        malformed = sum(p.malformed for p in parts)
        if not kept:
            return cls.empty(malformed)
        if len(kept) == 1:
            return replace(kept[0], malformed=malformed)
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in kept]) for f in fields(cls) if f.name != "malformed"},
                   malformed=malformed)

    def take(self, rows: np.ndarray) -> Connections:
        return Connections(**{f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name != "malformed"})

    @property
    def _answered(self) -> np.ndarray:
        return (self.resp_pkts > 0) | (self.resp_ip_bytes > 0)

    @property
    def n_records(self) -> int:
        """How many records these connections make (records())."""
        return len(self) + int(self._answered.sum())

    def records(self) -> FlowRecordBatch:
        """Each connection as up to two unidirectional records (the module's docstring):
        originator -> responder, then responder -> originator where it sent anything."""
        n = len(self)
        rev = self._answered
        fwd_i, rev_i = np.arange(n), np.flatnonzero(rev)
        # forward then reverse of each connection, in log order
        order = np.argsort(np.concatenate([fwd_i * 2, rev_i * 2 + 1]), kind="stable")

        def both(a_fwd: np.ndarray, a_rev: np.ndarray) -> np.ndarray:
            return np.concatenate([a_fwd[fwd_i], a_rev[rev_i]])[order]

        icmp = (self.proto == 1) | (self.proto == 58)  # no code in conn.log: 0
        out = {
            "start_ns": both(self.start_ns, self.start_ns),
            "end_ns": both(self.end_ns, self.end_ns),
            "src_hi": both(self.o_hi, self.r_hi),
            "src_lo": both(self.o_lo, self.r_lo),
            "dst_hi": both(self.r_hi, self.o_hi),
            "dst_lo": both(self.r_lo, self.o_lo),
            "sport": both(self.o_port, self.r_port) & 0xFFFF,
            "dport": both(np.where(icmp, 0, self.r_port), np.where(icmp, 0, self.o_port)) & 0xFFFF,
            "proto": both(self.proto, self.proto),
            "packets": np.maximum(both(self.orig_pkts, self.resp_pkts), 0),
            "bytes": np.maximum(both(self.orig_ip_bytes, self.resp_ip_bytes), 0),
            "tcp_flags": both(self.o_flags, self.r_flags),
            "continued": both(self.continued, self.continued),
        }
        return FlowRecordBatch.from_columns(out, malformed=self.malformed)


class ConnLogParser(_LogParser):
    """Complete conn.log (or conn_long.log) lines -> Connections."""

    default_fields = DEFAULT_FIELDS

    def __init__(self) -> None:
        super().__init__()
        self._addr: dict[bytes, tuple[int, int]] = {}
        self._history: dict[bytes, tuple[int, int]] = {}

    def _joined(self, parts: list[Connections], malformed: int) -> Connections:
        conns = Connections.concat(parts)
        conns.malformed = malformed
        return conns

    # ------------------------------------------------------------------ TSV
    def _data(self, text: bytes) -> Connections:
        text = text.strip(b"\n")
        if not text:
            return Connections.empty()
        if self.json is None:
            self.json = text.lstrip().startswith(b"{")
        self.lines += text.count(b"\n") + 1
        if self.json:
            return self._json(text)
        index: dict[str, int] = {}
        for i, f in enumerate(self.fields):  # IoT-23 joins its label columns with spaces
            for name in f.split():
                index.setdefault(name, i)
        if any(name not in index for name in _REQUIRED):
            self.malformed += text.count(b"\n") + 1
            return Connections.empty()
        wanted = {name: i for name, i in index.items() if name in _WANTED}
        cols = _split_columns(text + b"\n", self.separator, len(self.fields), wanted)
        if cols is None:  # some lines have the wrong number of fields: keep the others
            sep, nf = self.separator, len(self.fields)
            lines = text.split(b"\n")
            kept = [t for t in (ln.split(sep) for ln in lines) if len(t) == nf]
            self.malformed += sum(1 for ln in lines if ln) - len(kept)
            if not kept:
                return Connections.empty()
            cols = {name: np.array([t[i] for t in kept], dtype=np.bytes_) for name, i in wanted.items()}
        return self._connections(cols)

    # ------------------------------------------------------------------ JSON
    def _json(self, text: bytes) -> Connections:
        lines = [ln for ln in text.split(b"\n") if ln.strip()]
        try:  # one parse for the whole chunk; line by line only when some line is bad
            objs = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            objs = []
            for ln in lines:
                try:
                    objs.append(json.loads(ln))
                except ValueError:
                    self.malformed += 1
        good = []
        for obj in objs:
            if not isinstance(obj, dict):
                self.malformed += 1
                continue
            nested = obj.get("id")
            if isinstance(nested, dict):
                for k, v in nested.items():
                    obj[f"id.{k}"] = v
            good.append(obj)
        if not good:
            return Connections.empty()
        cols: dict[str, np.ndarray] = {}
        for name in _WANTED:
            values = list(map(dict.get, good, itertools.repeat(name, len(good))))  # no Python step per line
            if name in _TEXT_FIELDS:
                cols[name] = _text_array(values)
            else:
                try:  # JSON numbers (None becomes NaN: unset)
                    cols[name] = np.array(values, dtype=np.float64)
                except (ValueError, TypeError):  # ISO 8601 times, numbers as strings
                    cols[name] = np.array([_json_value(name, v) for v in values], dtype=np.bytes_)
        return self._connections(cols)

    # ------------------------------------------------------------------ columns -> connections
    def _connections(self, cols: dict[str, np.ndarray]) -> Connections:
        n = cols["ts"].shape[0]
        bad = np.zeros(n, dtype=bool)
        ts, b = _numbers(cols["ts"], self.unset, np.float64)
        bad |= b | (np.isnan(cols["ts"]) if cols["ts"].dtype.kind == "f" else cols["ts"] == self.unset)
        dur = np.zeros(n)
        if "duration" in cols:
            dur, b = _numbers(cols["duration"], self.unset, np.float64)
            bad |= b
        start_ns = np.rint(ts * 1e6).astype(np.int64) * 1000  # Zeek writes microseconds
        end_ns = start_ns + np.rint(np.clip(dur, 0, _MAX_DURATION_S) * 1e6).astype(np.int64) * 1000
        o_hi, o_lo, b1 = self._addresses(cols["id.orig_h"])
        r_hi, r_lo, b2 = self._addresses(cols["id.resp_h"])
        o_port, b3 = _numbers(cols["id.orig_p"], self.unset, np.int64)
        r_port, b4 = _numbers(cols["id.resp_p"], self.unset, np.int64)
        bad |= b1 | b2 | b3 | b4
        proto = np.zeros(n, dtype=np.int64)
        for value in np.unique(cols["proto"]).tolist():
            proto[cols["proto"] == value] = _PROTO.get(value.lower(), 0)
        v6 = (o_hi != 0) | ((o_lo >> np.uint64(32)) != np.uint64(0xFFFF))
        proto = np.where((proto == 1) & v6, 58, proto)
        counts = {}
        for name in ("orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes"):
            counts[name] = np.zeros(n, np.int64)
            if name in cols:
                counts[name], b = _numbers(cols[name], self.unset, np.int64)
                bad |= b
        o_flags = np.zeros(n, dtype=np.int64)
        r_flags = np.zeros(n, dtype=np.int64)
        if "history" in cols:
            for value in np.unique(cols["history"]).tolist():
                of, rf = self._flags(value)
                sel = cols["history"] == value
                o_flags[sel], r_flags[sel] = of, rf
        tcp = proto == 6
        o_flags, r_flags = np.where(tcp, o_flags, 0), np.where(tcp, r_flags, 0)
        uid = cols["uid"] if "uid" in cols else np.full(n, b"", dtype=np.bytes_)
        uid = np.where(uid == self.unset, b"", uid)
        n_bad = int(bad.sum())
        self.malformed += n_bad
        conns = Connections(uid, start_ns, end_ns, o_hi, o_lo, r_hi, r_lo, o_port, r_port, proto, counts["orig_pkts"],
                            counts["resp_pkts"], counts["orig_ip_bytes"], counts["resp_ip_bytes"], o_flags, r_flags,
                            np.zeros(n, dtype=bool))
        return conns.take(np.flatnonzero(~bad)) if n_bad else conns

    def _addresses(self, col: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Address text -> (hi, lo) columns and where it did not parse. Dotted quads are
        parsed by numpy; anything else (IPv6, odd text) once per distinct value."""
        hi, lo, ok = _parse_ipv4(col)
        rest = np.flatnonzero(~ok)
        bad = np.zeros(col.shape[0], dtype=bool)
        if rest.shape[0]:
            uniq, inverse = np.unique(col[rest], return_inverse=True)
            u_hi = np.zeros(uniq.shape[0], dtype=np.uint64)
            u_lo = np.zeros(uniq.shape[0], dtype=np.uint64)
            u_bad = np.zeros(uniq.shape[0], dtype=bool)
            for j, text in enumerate(uniq.tolist()):
                pair = self._addr.get(text)
                if pair is None:
                    try:
                        pair = addr_to_pair(text.decode("ascii").split("%")[0])
                    except (ValueError, UnicodeDecodeError):
                        u_bad[j] = True
                        continue
                    if len(self._addr) >= _ADDR_CACHE_MAX:
                        self._addr.clear()
                    self._addr[text] = pair
                u_hi[j], u_lo[j] = pair
            hi[rest], lo[rest], bad[rest] = u_hi[inverse], u_lo[inverse], u_bad[inverse]
        return hi, lo, bad

    def _flags(self, history: bytes) -> tuple[int, int]:
        cached = self._history.get(history)
        if cached is None:
            text = history.decode("latin-1")
            orig = resp = 0
            for ch in text:
                if ch in _ORIG_FLAGS:
                    orig |= _ORIG_FLAGS[ch]
                elif ch.upper() in _ORIG_FLAGS:
                    resp |= _ORIG_FLAGS[ch.upper()]
            cached = (orig, resp)
            if len(self._history) < 4096:
                self._history[history] = cached
        return cached


class DnsLogParser(_LogParser):
    """Complete dns.log lines -> DnsAnswers, as capture.packets._dns reads them off the wire:
    for each successful response (`rcode` 0), each of its `answers` that is an address (an
    A or AAAA record: the CNAME names and TXT texts among them are not), at most MAX_ANSWERS,
    with the client (`id.orig_h`), the time (`ts`, the query's) and the registered domain of
    `query`. mDNS and LLMNR (responder port 5353, 5355) are not a resolver's answers. A line
    that does not parse is counted in `malformed`, never raised."""

    default_fields = DNS_FIELDS

    def __init__(self) -> None:
        super().__init__()
        self._addr: dict[str, tuple[int, int] | None] = {}

    def _joined(self, parts: list[DnsAnswers], malformed: int) -> DnsAnswers:
        return DnsAnswers.concat(parts)

    def _data(self, text: bytes) -> DnsAnswers:
        lines = [ln for ln in text.strip(b"\n").split(b"\n") if ln.strip()]
        if not lines:
            return DnsAnswers.empty()
        if self.json is None:
            self.json = lines[0].lstrip().startswith(b"{")
        self.lines += len(lines)
        rows = self._json_rows(lines) if self.json else self._tsv_rows(lines)
        out: list[tuple[int, int, int, int, int, int]] = []
        names: dict[int, str] = {}
        for ts, client, port, query, rcode, answers in rows:
            try:
                ts_ns = round(float(_json_value("ts", ts)) * 1e6) * 1000  # Zeek writes microseconds
                c = self._pair(client) if client is not None else None
                if c is None or not -9e18 < ts_ns < 9e18:
                    raise ValueError(client)
            except (ValueError, OverflowError):
                self.malformed += 1
                continue
            if str(rcode) != "0" or str(port) in ("5353", "5355") or not query or not answers:
                continue
            domain, name = registered(query)
            if domain and name:
                names[domain] = name
            found = 0
            for answer in answers:
                pair = self._pair(answer)
                if pair is not None:
                    out.append((ts_ns, *c, *pair, domain))
                    found += 1
                    if found == MAX_ANSWERS:
                        break
        if not out:
            return DnsAnswers.empty()
        cols = list(zip(*out, strict=True))
        return DnsAnswers(np.array(cols[0], np.int64), *(np.array(c, np.uint64) for c in cols[1:]), names=names)

    def _tsv_rows(self, lines: list[bytes]) -> Iterator[tuple[Any, ...]]:
        index = {f: i for i, f in enumerate(self.fields)}
        if any(f not in index for f in ("ts", "id.orig_h", "query", "answers")):
            self.malformed += len(lines)
            return
        n, unset, sets = len(self.fields), self.unset, self.set_separator
        i_ts, i_client, i_query, i_answers = index["ts"], index["id.orig_h"], index["query"], index["answers"]
        i_port, i_rcode = index.get("id.resp_p"), index.get("rcode")
        for line in lines:
            t = line.split(self.separator)
            if len(t) != n:
                self.malformed += 1
                continue
            answers = t[i_answers]
            query = t[i_query]
            yield (t[i_ts].decode("latin-1"), t[i_client].decode("latin-1"),
                   t[i_port].decode("latin-1") if i_port is not None else "",
                   "" if query in (unset, b"(empty)") else query.decode("utf-8", "replace"),
                   t[i_rcode].decode("latin-1") if i_rcode is not None else "0",
                   [] if answers in (unset, b"(empty)") else answers.decode("latin-1").split(sets.decode("latin-1")))

    def _json_rows(self, lines: list[bytes]) -> Iterator[tuple[Any, ...]]:
        for ln in lines:
            try:
                obj = json.loads(ln)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                self.malformed += 1
                continue
            nested = obj.get("id") if isinstance(obj.get("id"), dict) else {}
            answers = obj.get("answers")
            client = obj.get("id.orig_h", nested.get("orig_h"))
            yield (obj.get("ts"), client if isinstance(client, str) else None, obj.get("id.resp_p", nested.get("resp_p")),
                   obj.get("query") if isinstance(obj.get("query"), str) else "", obj.get("rcode", 0),
                   [a for a in answers if isinstance(a, str)] if isinstance(answers, list) else [])

    def _pair(self, text: str) -> tuple[int, int] | None:
        """An address's (hi, lo), or None for text that is not one (a name, a TXT string)."""
        if text in self._addr:
            return self._addr[text]
        pair = None
        if 2 <= len(text) <= 45 and not text.strip("0123456789abcdefABCDEF.:"):
            try:
                pair = addr_to_pair(text)
            except ValueError:
                pair = None
        if len(self._addr) >= _ADDR_CACHE_MAX:
            self._addr.clear()
        self._addr[text] = pair
        return pair


_WANTED = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "duration", "history",
           "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes")


_TEXT_FIELDS = ("uid", "id.orig_h", "id.resp_h", "proto", "history")


def _text_array(values: list[Any]) -> np.ndarray:
    """JSON values as a bytes array, None as the unset marker."""
    try:  # the common case (ASCII text) in two numpy calls
        return np.array(["-" if v is None else v for v in values], dtype=np.str_).astype(np.bytes_)
    except (UnicodeEncodeError, ValueError, TypeError):
        return np.array([_as_bytes(v) for v in values], dtype=np.bytes_)


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b"-"
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "replace") if isinstance(value, str) else str(value).encode()


def _json_value(name: str, value: Any) -> bytes:
    """A JSON field as the TSV text it would be, so both formats share one conversion."""
    if value is None:
        return b"-"
    if name == "ts" and isinstance(value, str) and "T" in value:
        try:
            stamp = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value.encode("utf-8", "replace")
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=_dt.UTC)
        return f"{stamp.timestamp():.6f}".encode()
    if isinstance(value, float):
        return f"{value:.6f}".encode()
    return str(value).encode()


def _split_columns(text: bytes, sep: bytes, n_fields: int, wanted: dict[str, int]) -> dict[str, np.ndarray] | None:
    """TSV lines (each ending in a newline) -> the wanted columns as bytes arrays, by numpy
    over the raw bytes: separator positions give each field's start and end, and a column is
    gathered as a (lines, width) byte matrix viewed as fixed-width strings. None when the
    lines do not all have `n_fields` fields (the caller splits them one by one)."""
    if len(sep) != 1:
        return None
    buf = np.frombuffer(text, dtype=np.uint8)
    newline = buf == 10
    n_lines = int(newline.sum())
    pos = np.flatnonzero(newline | (buf == sep[0]))
    if n_lines == 0 or pos.shape[0] != n_lines * n_fields or not newline[pos[n_fields - 1 :: n_fields]].all():
        return None
    ends = pos.reshape(n_lines, n_fields)
    starts = np.empty_like(ends)
    starts[0, 0] = 0
    starts[1:, 0] = ends[:-1, -1] + 1
    starts[:, 1:] = ends[:, :-1] + 1
    out = {}
    for name, i in wanted.items():
        s, e = starts[:, i], ends[:, i]
        width = int((e - s).max())
        if width == 0:
            out[name] = np.zeros(n_lines, dtype="S1")
            continue
        idx = s[:, None] + np.arange(width)[None, :]
        chars = buf[np.minimum(idx, buf.shape[0] - 1)]
        chars[idx >= e[:, None]] = 0
        out[name] = np.ascontiguousarray(chars).view(f"S{width}").ravel()
    return out


def _parse_ipv4(col: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dotted-quad text (a bytes array) -> IPv4-mapped (hi, lo), vectorised over the
    characters; `ok` is False where the text is not a plain dotted quad."""
    n = col.shape[0]
    width = min(col.dtype.itemsize, 15)
    chars = np.zeros((n, 16), dtype=np.uint8)
    if n and col.dtype.itemsize:
        chars[:, :width] = np.frombuffer(col.tobytes(), dtype=np.uint8).reshape(n, -1)[:, :width]
    long = col.dtype.itemsize > 15
    ok = np.ones(n, dtype=bool) if not long else np.char.str_len(col) <= 15
    dot = chars == 46
    digit = (chars >= 48) & (chars <= 57)
    ok &= ((digit | dot | (chars == 0)).all(axis=1)) & (dot.sum(axis=1) == 3)
    octet = np.cumsum(dot, axis=1)
    value = np.zeros((n, 4), dtype=np.int64)
    length = np.zeros((n, 4), dtype=np.int64)
    rows = np.arange(n)
    for j in range(16):
        d = digit[:, j]
        o = np.minimum(octet[:, j], 3)
        cur = value[rows, o]
        value[rows, o] = np.where(d, cur * 10 + (chars[:, j].astype(np.int64) - 48), cur)
        length[rows, o] += d
    ok &= (length >= 1).all(axis=1) & (length <= 3).all(axis=1) & (value <= 255).all(axis=1)
    v4 = (value[:, 0] << 24) | (value[:, 1] << 16) | (value[:, 2] << 8) | value[:, 3]
    lo = np.where(ok, v4.astype(np.uint64) | V4_MAPPED_LO_PREFIX, np.uint64(0))
    return np.zeros(n, dtype=np.uint64), lo, ok


def _numbers(col: np.ndarray, unset: bytes, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A column of numbers as text (or floats, from JSON) -> values, unset/empty/NaN as 0,
    and where they did not parse or are out of range (then 0 too)."""
    if col.dtype.kind == "f":
        values = np.nan_to_num(col, nan=0.0, posinf=np.inf, neginf=-np.inf)
        bad = np.zeros(col.shape[0], dtype=bool)
    else:
        text = np.where((col == unset) | (col == b"") | (col == b"(empty)"), b"0", col)
        try:
            values, bad = text.astype(np.float64), np.zeros(col.shape[0], dtype=bool)
        except (ValueError, OverflowError):
            values = np.zeros(col.shape[0], dtype=np.float64)
            bad = np.zeros(col.shape[0], dtype=bool)
            for i, v in enumerate(text.tolist()):
                try:
                    values[i] = float(v)
                except (ValueError, OverflowError):
                    bad[i] = True
    # times (s) must fit int64 ns (years 1677..2262); counts must fit int64
    bad |= ~np.isfinite(values) | (np.abs(values) > (9e9 if dtype is np.float64 else 9e18))
    values = np.where(bad, 0.0, values)
    if dtype is not np.float64:
        if col.dtype.kind != "f":  # integers above 2^53 lose nothing that matters here
            values = np.trunc(values)
        return values.astype(dtype), bad
    return values, bad


# --------------------------------------------------------------------------------------


# pcap (µs and ns, either byte order) and pcapng's section header: the capture layer's own
# magics (capture.packets.pcap), which this layer may not import (pyproject's layers)
_CAPTURE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


def _refuse_a_capture(path: Path, file: IO[bytes]) -> None:
    """A pcap or pcapng capture given as a Zeek log is said as such: read as text, its lines
    were all malformed and training ended in "no windows to train on", naming home_net."""
    try:
        head = file.peek(4)[:4]  # type: ignore[attr-defined]  # BufferedReader and GzipFile both peek
    except OSError:
        return  # a damaged gzip: the read says so
    if head in _CAPTURE_MAGICS:
        file.close()
        raise CaptureError(f"{path}: a pcap or pcapng capture, not a Zeek log: give it with --pcap (source.type pcap)")


def _renamed(path: Path, at: dict) -> Path | None:
    """The file a position (device, inode) is in, found renamed beside `path`: in its directory
    or a directory in it (Zeek renames a log it rotates there, conn.2026-12-07-09-00-00.log, or
    into log-queue/ before zeek-archiver takes it). None where it is not there: compressed
    (a new file), moved elsewhere, or deleted."""
    wanted = (at.get("device"), at.get("inode"))

    def listed(folder: str | Path) -> list[os.DirEntry]:
        with os.scandir(folder) as entries:
            return list(entries)

    try:
        entries = listed(path.parent)
        entries += [e for d in entries if d.is_dir(follow_symlinks=False) for e in listed(d.path)]
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and (entry.stat(follow_symlinks=False).st_dev, entry.inode()) == wanted:
                return Path(entry.path)
    except OSError:
        return None
    return None


class _ZeekFile:
    """One Zeek log file read in whole lines through a parser (see the module's docstring):
    opened, resumed from a position, followed across rotation and truncation."""

    def __init__(self, path: Path, parser: _LogParser, empty: Callable[[], Any], follow: bool, read_bytes: int,
                 from_end: bool = False, resume_at: dict | None = None) -> None:
        self.path = path
        self.parser = parser
        self.empty = empty
        self.follow = follow
        self.read_bytes = read_bytes
        self.rotations = 0
        self.truncations = 0
        self._file: IO[bytes] | None = None
        self._inode: tuple[int, int] | None = None
        self._pos = 0
        self._partial = b""
        self._open(initial=True, resume_at=resume_at, from_end=from_end)

    def _open(self, initial: bool = False, resume_at: dict | None = None, from_end: bool = False) -> None:
        try:
            if self.path.suffix == ".gz" and not self.follow:
                self._file = gzip.open(self.path, "rb")
                self._inode = None
            else:
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open while following
                st = os.fstat(self._file.fileno())
                self._inode = (st.st_dev, st.st_ino)
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open the Zeek log: {exc.strerror or exc}") from None
        if initial:
            _refuse_a_capture(self.path, self._file)
        self._pos = 0
        self._partial = b""
        self.parser.reset()
        if not initial or self._inode is None:
            return
        if resume_at is not None:
            self._resume(resume_at)
        elif from_end:
            self._skip_to_end()

    def position(self) -> dict[str, int] | None:
        """Where a restart picks up: the file and the offset after the last whole line
        handed on. None for a gzip file (read whole, never resumed)."""
        if self._inode is None:
            return None
        return {"device": self._inode[0], "inode": self._inode[1], "offset": self._pos - len(self._partial)}

    def _resume(self, at: dict) -> None:
        assert self._file is not None and self._inode is not None
        size = os.fstat(self._file.fileno()).st_size
        offset = at.get("offset")
        if self.follow and (at.get("device"), at.get("inode")) != self._inode and isinstance(offset, int):
            rotated = _renamed(self.path, at)
            if rotated is not None:
                self._read_rotated_first(rotated, offset)
                return
        if (at.get("device"), at.get("inode")) != self._inode or not isinstance(offset, int) or not 0 <= offset <= size:
            rotated_away = (at.get("device"), at.get("inode")) != self._inode
            log.warning("zeek_log_resumed_from_top", path=str(self.path), size=size,
                        reason=("rotated since the checkpoint, and the file it was in is not beside it (moved away, "
                                "compressed or deleted): what Zeek wrote to it past the position is not read"
                                if rotated_away else "truncated since the checkpoint: all of it is newer"))
            return
        self._read_header()
        self._file.seek(offset)
        self._pos = offset
        log.info("zeek_log_resumed", path=str(self.path), offset=offset, backlog_bytes=size - offset)

    def _read_rotated_first(self, rotated: Path, offset: int) -> None:
        """The file the checkpoint's position is in was rotated away while netad was down
        (renamed beside the path, as Zeek rotates): read on in it from the position, then, at
        its end, the path's new file from its top (at_end: a rotation)."""
        assert self._file is not None
        try:
            old = open(rotated, "rb")  # noqa: SIM115 - kept open while read
        except OSError as exc:
            log.warning("zeek_log_resumed_from_top", path=str(self.path), rotated=str(rotated),
                        reason=f"the file it was in cannot be opened: {exc.strerror or exc}")
            return
        st = os.fstat(old.fileno())
        if offset > st.st_size:
            old.close()
            log.warning("zeek_log_resumed_from_top", path=str(self.path), rotated=str(rotated),
                        reason="the file it was in is shorter than the position")
            return
        self._file.close()
        self._file, self._inode = old, (st.st_dev, st.st_ino)
        self._read_header()
        self._file.seek(offset)
        self._pos = offset
        log.info("zeek_log_resumed_in_rotated_file", path=str(self.path), rotated=str(rotated), offset=offset,
                 backlog_bytes=st.st_size - offset)

    def _read_header(self) -> None:
        """Feed the parser the header lines at the top of the file (TSV; JSON has none)."""
        assert self._file is not None
        head = self._file.read(65536)
        header = b"\n".join(ln for ln in head.split(b"\n") if ln.startswith(b"#"))
        if header:
            self.parser.feed(header + b"\n")

    def _skip_to_end(self) -> None:
        """Start at the end of a live log, keeping its header (read from the top)."""
        assert self._file is not None
        self._read_header()
        end = self._file.seek(0, os.SEEK_END)
        if end > 0:
            self._file.seek(end - 1)
            if self._file.read(1) != b"\n":  # Zeek is mid-line: skip to the next line
                self._file.readline()
        self._pos = self._file.tell()

    def read(self) -> tuple[bool, Any]:
        """The next read: whether any bytes came, and what their whole lines gave."""
        if self._file is None:
            raise CaptureError(f"{self.path}: the Zeek log is closed")
        data = self._file.read(self.read_bytes)
        self._pos += len(data)
        if not data:
            return False, self.empty()
        data = self._partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data
            return True, self.empty()
        self._partial = data[cut + 1 :]
        return True, self.parser.feed(data[: cut + 1])

    def finish(self) -> Any:
        """A finished file's last line, when it had no newline."""
        tail, self._partial = self._partial, b""
        return self.parser.feed(tail + b"\n") if tail else self.empty()

    def at_end(self) -> Any:
        """At the end of the file: has the path moved on to a new file, or been truncated?
        Returns the old file's last line when it had no newline (it never will now)."""
        tail = self.empty()
        if self._inode is None:
            return tail
        try:
            st = os.stat(self.path)
        except OSError:
            return tail  # rotated away and not created again yet: keep the old file
        if (st.st_dev, st.st_ino) != self._inode:
            tail = self.finish()
            old, lines = self._file, self.parser.lines
            try:
                self._open()
            except CaptureError as exc:  # gone again, or not a file netad may read: kept at the old file's end
                if self._file is not old and self._file is not None:
                    self._file.close()
                self._file = old
                log.warning("zeek_log_reopen_failed", path=str(self.path), reason=str(exc),
                            action="tried again at the next poll; the old file stays open at its end")
                return tail
            assert old is not None
            old.close()
            self.rotations += 1
            log.info("zeek_log_rotated", path=str(self.path), lines=lines)
        elif st.st_size < self._pos:
            self.truncations += 1
            log.info("zeek_log_truncated", path=str(self.path), size=st.st_size, position=self._pos)
            assert self._file is not None
            self._file.seek(0)
            self._pos = 0
            self._partial = b""
            self.parser.reset()
        return tail

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LongConnections:
    """What has been counted of each connection Zeek logs as it goes, by its uid.

    Zeek writes a connection to conn.log when it ends. A long one (an SSH session, a tunnel,
    an upload over hours) is then one line whose volume is spread over its whole span, and
    the parts in windows already closed are dropped as late: a window saw only its last
    `flow_lateness_s` of it. Zeek's long-connections package (conn_long.log) logs such a
    connection as it goes, each line with its totals so far; activecm's open-connections
    (open_conn.log) likewise. Each of those lines, and the conn.log line that ends the
    connection, is counted here as the part since the line before: its span starts where
    the counted one ended, its packets and bytes are the totals less what was counted.
    A line that adds nothing (an idle connection) is not counted.

    A part after the first is `continued`: it opens no flow (the connection counts as one, as
    on the packet path, not once per line) and carries no SYN. At most `max_open`
    connections are held (the oldest forgotten first, counted): a forgotten one's next line
    counts from its start again.

    Zeek buffers each log on its own, so a live conn_long.log line can be read after the
    conn.log line that ended its connection: all it holds was counted then. The uids of the
    last `max_ended` connections that ended after at least LONG_S are kept, and such a line
    is dropped (counted, `after_end`), not counted twice.
    """

    LONG_S = 60.0  # no long-connections log writes a line sooner (the package's default first line: 10 min)

    def __init__(self, max_open: int = 1 << 18, max_ended: int = 1 << 16) -> None:
        self.open: OrderedDict[bytes, tuple[int, int, int, int, int]] = OrderedDict()  # uid -> (until_ns, 4 totals)
        self.ended: OrderedDict[bytes, None] = OrderedDict()  # uids of long connections whose conn.log line was counted
        self.max_open, self.max_ended = max_open, max_ended
        self.forgotten = 0
        self.unnamed = 0  # conn_long lines without a uid (cannot be told apart: dropped, counted)
        self.after_end = 0  # conn_long lines read after their connection's conn.log line (dropped, counted)
        self.changes = 0  # counts the calls that may have changed what is held (a reading point's snapshot is reused until then)

    def count(self, conns: Connections, interim: np.ndarray) -> Connections:
        """`conns` in time order, `interim` marking the lines written while their connection
        went on: each as the part not counted before (the class's docstring)."""
        ended = np.flatnonzero(~interim & (conns.end_ns - conns.start_ns >= int(self.LONG_S * 1e9)) & (conns.uid != b""))
        if not interim.any() and not self.open and not ended.shape[0]:
            return conns
        self.changes += 1
        counted = self._count(conns, interim) if interim.any() or self.open else conns
        for uid in conns.uid[ended].tolist():
            self.ended[uid] = None
            if len(self.ended) > self.max_ended:
                self.ended.popitem(last=False)
        return counted

    def _count(self, conns: Connections, interim: np.ndarray) -> Connections:
        uids = conns.uid.tolist()
        going = {uids[i] for i in np.flatnonzero(interim).tolist()}  # logged as they go in this batch
        held = interim | np.fromiter((u in self.open or u in going for u in uids), dtype=bool, count=len(uids))
        keep = np.ones(len(conns), dtype=bool)
        start, totals = conns.start_ns.copy(), [conns.orig_pkts.copy(), conns.resp_pkts.copy(),
                                                 conns.orig_ip_bytes.copy(), conns.resp_ip_bytes.copy()]
        o_flags, r_flags, continued = conns.o_flags.copy(), conns.r_flags.copy(), conns.continued.copy()
        end = conns.end_ns
        # in time order (a line written as its connection went on before the one that ends it)
        for i in sorted(np.flatnonzero(held).tolist(), key=lambda i: (int(end[i]), not interim[i])):
            uid = uids[i]
            if not uid or (interim[i] and uid in self.ended):
                keep[i] = False
                if uid:
                    self.after_end += 1
                else:
                    self.unnamed += 1
                continue
            now = [int(t[i]) for t in totals]
            prev = self.open.pop(uid, None)
            if prev is not None:  # a part after the first: from where the counted one ended
                start[i] = max(int(start[i]), prev[0])
                for t, new, old in zip(totals, now, prev[1:], strict=True):
                    t[i] = max(new - old, 0)
                o_flags[i] &= ~0x02  # no SYN, no flow: it opened before
                r_flags[i] &= ~0x02
                continued[i] = True
                now = [max(new, old) for new, old in zip(now, prev[1:], strict=True)]
            if interim[i]:
                until = max(int(end[i]), prev[0] if prev is not None else 0)
                self.open[uid] = (until, *now)
                if len(self.open) > self.max_open:
                    self.open.popitem(last=False)
                    self.forgotten += 1
                if prev is not None and not any(int(t[i]) for t in totals):
                    keep[i] = False  # idle since the line before: nothing to count
        counted = replace(conns, start_ns=start, orig_pkts=totals[0], resp_pkts=totals[1], orig_ip_bytes=totals[2],
                          resp_ip_bytes=totals[3], o_flags=o_flags, r_flags=r_flags, continued=continued)
        return counted if keep.all() else replace(counted.take(keep), malformed=conns.malformed)

    def state_dict(self) -> dict[str, np.ndarray]:
        """What was counted, as named arrays (a checkpoint's, beside the reading's position):
        a restart counts each open connection's next line from where the last counted one
        ended, not from its start. Oldest first, as held."""
        until_totals = np.array(list(self.open.values()), np.int64).reshape(len(self.open), 5)
        return {"open.uid": _uid_rows(self.open), "open.until_ns": until_totals[:, 0].copy(),
                "open.totals": until_totals[:, 1:].copy(), "ended.uid": _uid_rows(self.ended)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Put state_dict's arrays back; ValueError for arrays of the wrong kind (this ledger
        is then left as it was)."""
        try:
            uids, until, totals, ended = (np.asarray(state[k]) for k in ("open.uid", "open.until_ns", "open.totals", "ended.uid"))
        except KeyError as exc:
            raise ValueError(f"long connections: {exc.args[0]} missing") from None
        n = until.shape[0] if until.ndim == 1 else -1
        if not (uids.ndim == 2 and uids.shape[0] == n and uids.dtype == np.uint8 and totals.shape == (n, 4)
                and ended.ndim == 2 and ended.dtype == np.uint8 and until.dtype.kind == totals.dtype.kind == "i"):
            raise ValueError(f"long connections: arrays of the wrong shape or kind (uid {uids.shape} {uids.dtype}, until "
                             f"{until.shape} {until.dtype}, totals {totals.shape} {totals.dtype}, ended {ended.shape} {ended.dtype})")
        if n and (until.min() < 0 or totals.min() < 0):
            raise ValueError("long connections: a negative time or total")
        open_uids, ended_uids = _uids_of(uids), _uids_of(ended)
        if b"" in open_uids or b"" in ended_uids or len(set(open_uids)) != n:
            raise ValueError("long connections: an empty or repeated uid")
        rows = np.concatenate([until[:, None], totals], axis=1).astype(np.int64).tolist()
        self.open = OrderedDict((uid, tuple(row)) for uid, row in zip(open_uids, rows, strict=True))
        self.ended = OrderedDict.fromkeys(ended_uids)
        self.changes += 1
        while len(self.open) > self.max_open:
            self.open.popitem(last=False)
            self.forgotten += 1
        while len(self.ended) > self.max_ended:
            self.ended.popitem(last=False)


def _uid_rows(uids: OrderedDict[bytes, Any]) -> np.ndarray:
    """Zeek uids as rows of bytes, NUL-padded (safetensors holds numbers, not strings)."""
    packed = np.array(list(uids), dtype=np.bytes_) if uids else np.zeros(0, "S1")
    return packed.view(np.uint8).reshape(len(uids), packed.dtype.itemsize).copy()


def _uids_of(rows: np.ndarray) -> list[bytes]:
    return np.ascontiguousarray(rows).view(f"S{rows.shape[1]}").ravel().tolist() if rows.shape[1] else [b""] * rows.shape[0]


def long_log_beside(conn_log: Path) -> list[Path]:
    """Where Zeek writes the long connections of a conn.log, in the order looked for: the
    same folder, `conn_long` (Zeek's long-connections package) or `open_conn` (activecm's
    open-connections) for `conn` (conn.log -> conn_long.log; conn.00:00:00-01:00:00.log.gz
    -> conn_long.00:00:00-01:00:00.log.gz)."""
    name = conn_log.name
    rest = name[4:] if name.startswith("conn") else ".log"
    return [conn_log.with_name(stem + rest) for stem in ("conn_long", "open_conn")]


def dns_log_beside(conn_log: Path) -> Path:
    """Where Zeek writes the DNS log of a conn.log: the same folder and name, `dns` for
    `conn` (current/conn.log -> current/dns.log; conn.00:00:00-01:00:00.log.gz ->
    dns.00:00:00-01:00:00.log.gz)."""
    name = conn_log.name
    return conn_log.with_name("dns" + name[4:] if name.startswith("conn") else "dns.log")


_MARK_SPACING_NS = 10 * 10**9  # of record time between two reading points (ZeekConnLog._mark)
_MAX_MARKS = 512  # reading points kept between checkpoints, and the bytes of their ledgers' states
_MAX_MARK_BYTES = 64 << 20


def _nbytes(marks: list) -> int:
    """The memory the reading points' ledger states hold (each once)."""
    states = {id(m[2]): m[2] for m in marks}
    return sum(a.nbytes for state in states.values() for a in state.values())


class ZeekConnLog:
    """Iterator of FlowRecordBatch from a conn.log; with `follow`, a live one (see above).

    Each batch carries, as `answers`, the DNS answers of the dns.log that Zeek writes beside
    the conn.log (dns_log_beside; `dns_log` names another, None reads none): the window
    stage's peer history names each peer by them, as it does with the answers a capture
    reads off the wire. Replayed, the DNS log is read in step with the conn.log's record
    times; followed, as Zeek appends to it (it may appear later than the conn.log).

    Without `follow` iteration ends at the end of the file. Raises CaptureError when the
    file cannot be opened. `stop` ends iteration within `poll_s`.
    """

    def __init__(self, path: str | Path, follow: bool = False, poll_s: float = 0.2, batch_records: int = 65536,
                 read_bytes: int = 1 << 20, from_end: bool = False, max_clock_skew_s: float = 300.0,
                 resume_at: dict | None = None, dns_log: str | Path | None | Literal["beside"] = "beside",
                 long_log: str | Path | None | Literal["beside"] = "beside", ledger: LongConnections | None = None) -> None:
        self.path = Path(path)
        self.follow = follow
        self.poll_s = poll_s
        self.batch_records = batch_records
        # live only: a record may end at most this far past our clock. One corrupt line
        # dated years ahead would otherwise carry the watermark there (and every window
        # in between would close at once)
        self.max_clock_skew_s = max_clock_skew_s
        self.kind = "live" if follow else "replay"  # as the daemon's sources say (service._sources.Source)
        # followed, what it handed on can be read again: a restart picks up at a reading point
        # (reading_point) from before the windows still open, so they are built whole again
        self.rereads = follow
        # reading points: (newest record time before, position, ledger state, ledger.changes then)
        self._marks: list[tuple[int, dict[str, Any] | None, dict[str, np.ndarray], int]] = []
        self._newest_ns = -(1 << 62)  # the newest record time handed on (the window stage's watermark)
        self.identity = {"type": "zeek", "path": str(self.path.resolve())}
        self.stop = False
        self.future_records = 0
        self.exporter = Exporter(name=str(self.path), address=None)
        self.parser = ConnLogParser()
        self._conn = _ZeekFile(self.path, self.parser, Connections.empty, follow, read_bytes, from_end, resume_at)
        # the long connections Zeek logs as they go (LongConnections), read in step as the dns.log is
        self.long_paths = long_log_beside(self.path) if long_log == "beside" else [Path(long_log)] if long_log else []
        self.long_parser = ConnLogParser()
        self.ledger = ledger if ledger is not None else LongConnections()  # shared by the hourly logs of one reading
        self._long: _ZeekFile | None = None
        self._long_held = Connections.empty()  # replay: lines read past the conn.log's newest record, for the next batch
        self._open_long(resume_at=(resume_at or {}).get("long"), from_end=from_end and resume_at is None)
        if self._long is None and not follow:
            self.long_paths = []  # a finished conn.log with no long log beside it
        self.dns_path = dns_log_beside(self.path) if dns_log == "beside" else Path(dns_log) if dns_log else None
        self.dns_parser = DnsLogParser()
        self.dns_answers = 0
        self._dns: _ZeekFile | None = None
        self._dns_resume = (resume_at or {}).get("dns")
        # from_end skips what a dns.log held at the first start; after a restart (a position)
        # one that has none yet, and one that appears later, are news from their top
        self._dns_from_end = from_end and resume_at is None
        self._dns_seen_ns = -(1 << 62)  # the newest answer read so far (replay reads up to the conn records' time)
        self._open_dns()
        self._dns_from_end, self._dns_resume = False, None
        if self.dns_path is not None and self._dns is None and not follow:
            self.dns_path = None  # a finished conn.log with no DNS log beside it: peers by address

    def _open_dns(self) -> None:
        if self.dns_path is None or self._dns is not None or not self.dns_path.exists():
            return
        try:
            self._dns = _ZeekFile(self.dns_path, self.dns_parser, DnsAnswers.empty, self.follow, self._conn.read_bytes,
                                  self._dns_from_end, self._dns_resume)
        except CaptureError as exc:  # the conn.log is read all the same: peers by address
            log.warning("zeek_dns_log_unreadable", path=str(self.dns_path), reason=str(exc))
            self.dns_path = None
            return
        log.info("zeek_dns_log", path=str(self.dns_path), use="peers named by their DNS answers")

    def _open_long(self, resume_at: dict | None = None, from_end: bool = False) -> None:
        if self._long is not None:
            return
        path = next((p for p in self.long_paths if p.exists()), None)
        if path is None:
            return
        try:
            self._long = _ZeekFile(path, self.long_parser, Connections.empty, self.follow, self._conn.read_bytes, from_end,
                                   resume_at)
        except CaptureError as exc:  # the conn.log is read all the same: long connections counted when they end
            log.warning("zeek_long_log_unreadable", path=str(path), reason=str(exc))
            self.long_paths = []
            return
        log.info("zeek_long_log", path=str(path), use="long connections counted as they go")

    def position(self) -> dict[str, Any] | None:
        """Where a restart picks up (`resume_at`): the conn.log's position (its file and the
        offset after the last whole line handed on), with the DNS log's as `dns` and the long
        connections' as `long`. None for a gzip file (read whole, never resumed). What
        was counted of the connections still open goes beside it (`ledger.state_dict()`,
        taken between batches as this is): put back, the next line of each counts from where
        the counted one ended. Were the two a batch apart they would still agree: a line read
        again adds nothing (its totals were counted), and one skipped counts with the next."""
        at: dict[str, Any] | None = self._conn.position()
        if at is None:
            return None
        for key, file in (("dns", self._dns), ("long", self._long)):
            where = file.position() if file is not None else None
            if where is not None:
                at[key] = where
        return at

    def reading_point(self, before_ns: int | None = None) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
        """Where a restart picks up, and what was counted of the long connections there
        (`resume_at`, `ledger.load_state_dict`). Followed, with `before_ns` (the end of the
        last window the checkpoint covers; None: none closed yet): the last point between
        batches where every record handed on had ended before it (None: where the reading
        began), so that a restart builds the windows from there on whole again (a crash lost
        them, a stop left them open), reading the records before them again only for their
        parts in them. What was counted of the long connections goes with that point, and
        the newest record time read by now (`read_to_ns`: which records a restart reads
        again, FlowWindowAggregator.resume_at). Otherwise the position now."""
        marks = self._marks
        if not marks:
            return self.position(), self.ledger.state_dict()
        while before_ns is not None and len(marks) >= 2 and marks[1][0] < before_ns:
            marks.pop(0)  # a later checkpoint picks up no earlier than this one
        if before_ns is None:  # no window closed yet: all that was read is read again
            before_ns = marks[0][0] + 1
        if marks[0][0] >= before_ns or marks[0][1] is None:  # cannot be: the reading's first point has no record before it
            return self.position(), self.ledger.state_dict()
        # with the newest record time read by now: the records a restart reads again end by then
        return {**marks[0][1], "read_to_ns": self._newest_ns}, marks[0][2]

    def _mark(self) -> None:
        """A point between batches a restart may pick up at (reading_point): the newest record
        time handed on, the position, what was counted of the long connections."""
        if not self.rereads:
            return
        at, marks = self.position(), self._marks
        if marks and marks[-1][1] == at:
            return  # nothing read since (an idle poll)
        changes = self.ledger.changes
        ledger = marks[-1][2] if marks and marks[-1][3] == changes else self.ledger.state_dict()
        mark = (self._newest_ns, at, ledger, changes)
        if len(marks) >= 2 and self._newest_ns - marks[-2][0] < _MARK_SPACING_NS:
            marks[-1] = mark  # one point per _MARK_SPACING_NS of record time: a restart reads that much more at most
        else:
            marks.append(mark)
        while len(marks) > 2 and (len(marks) > _MAX_MARKS or _nbytes(marks) > _MAX_MARK_BYTES):
            self._marks = marks = marks[:1] + marks[2::2]  # thinned (no checkpoint takes them), the first kept

    def __iter__(self) -> Iterator[FlowRecordBatch]:
        if self._conn._file is None:
            raise CaptureError(f"{self.path}: the Zeek log is closed")
        try:
            self._mark()  # where this reading began (a ledger a restart put back is in it)
            for batch in self._batches():
                if len(batch):
                    self._newest_ns = max(self._newest_ns, int(np.maximum(batch.end_ns, batch.start_ns).max()))
                self._mark()
                yield batch
        finally:
            self.close()

    def _batches(self) -> Iterator[FlowRecordBatch]:
        parts: list[Connections] = []
        pending = 0
        deadline = time.monotonic() + self.poll_s
        while not self.stop:
            came, conns = self._conn.read()
            if not came:
                if not self.follow:
                    break
                conns = self._conn.at_end()
            if len(conns) or conns.malformed:
                parts.append(conns)
                pending += conns.n_records
            now = time.monotonic()
            if pending >= self.batch_records or (self.follow and now >= deadline):
                yield self._batch(Connections.concat(parts))
                parts, pending = [], 0
                deadline = now + self.poll_s
            elif self.follow and not came:
                time.sleep(min(self.poll_s / 4, max(0.0, deadline - now)))
        if not self.follow:
            parts.append(self._conn.finish())
        conns = Connections.concat(parts)
        if len(conns) or conns.malformed or len(self._long_held) or self._long is not None:
            batch = self._batch(conns, last=True)
            if len(batch) or batch.malformed:
                yield batch

    def _batch(self, conns: Connections, last: bool = False) -> FlowRecordBatch:
        """The conn.log's connections, with the long connections' lines of their time merged
        in (each counted as the part not counted before: LongConnections), as records,
        named by the DNS answers of their time."""
        conns, interim = self._with_long(conns, last)
        batch = self._in_time(self.ledger.count(conns, interim).records())
        batch.exporters = {0: self.exporter} if len(batch) else {}
        return self._named(batch)

    def _with_long(self, conns: Connections, last: bool) -> tuple[Connections, np.ndarray]:
        """`conns` with the long log's lines of their time merged in by time, and which rows
        those are. Followed: all that Zeek has written. Replayed: the lines up to the newest
        of `conns` (read on until one is past it; those past are held for the next batch),
        and all of them at the end (`last`)."""
        self._open_long()
        if self._long is None and not len(self._long_held):
            return conns, np.zeros(len(conns), dtype=bool)
        newest = int(conns.end_ns.max()) if len(conns) else None
        parts = [self._long_held]
        while self._long is not None:
            if not (self.follow or last) and (newest is None or (len(parts[-1]) and int(parts[-1].end_ns.max()) > newest)):
                break
            came, lines = self._long.read()
            if not came:
                lines = self._long.at_end() if self.follow else self._long.finish()
            parts.append(lines)
            if not came:
                break
        lines = Connections.concat(parts)
        lines = lines.take(np.argsort(lines.end_ns, kind="stable"))
        if not (self.follow or last):
            later = lines.end_ns > (newest if newest is not None else -(1 << 62))
            self._long_held, lines = lines.take(np.flatnonzero(later)), lines.take(np.flatnonzero(~later))
        else:
            self._long_held = Connections.empty()
        lines.malformed = 0
        if not len(lines):
            return conns, np.zeros(len(conns), dtype=bool)
        # each long line goes before the first conn.log line that ends after it (the log's
        # order kept: lateness is judged against the records before)
        at = np.searchsorted(np.maximum.accumulate(conns.end_ns), lines.end_ns, side="right") if len(conns) else \
            np.zeros(len(lines), np.int64)
        order = np.argsort(np.concatenate([np.arange(len(conns)) * 2 + 1, at * 2]), kind="stable")
        merged = Connections.concat([conns, lines]).take(order)
        merged.malformed = conns.malformed
        return merged, np.concatenate([np.zeros(len(conns), bool), np.ones(len(lines), bool)])[order]

    def _in_time(self, batch: FlowRecordBatch) -> FlowRecordBatch:
        """Live only: the records not ending in the future (see max_clock_skew_s)."""
        if self.follow and len(batch):
            future = batch.end_ns > time.time_ns() + int(self.max_clock_skew_s * 1e9)
            if future.any():
                self.future_records += int(future.sum())
                log.warning("zeek_records_dropped", path=str(self.path), reason="ending in the future", records=int(future.sum()))
                kept = batch.take(~future)
                kept.malformed = batch.malformed
                batch = kept
        return batch

    def _named(self, batch: FlowRecordBatch) -> FlowRecordBatch:
        """The batch with the DNS answers read up to it: followed, all that Zeek has written;
        replayed, up to the batch's newest record time (a read more: an answer is kept with
        its own time, and a window sees only the answers before its end)."""
        self._open_dns()
        if self._dns is None:
            return batch
        parts: list[DnsAnswers] = []
        newest = int(batch.end_ns.max()) if len(batch) else None
        while self.follow or (newest is not None and self._dns_seen_ns <= newest):
            came, answers = self._dns.read()
            if not came:
                answers = self._dns.at_end() if self.follow else self._dns.finish()
            if len(answers):
                parts.append(answers)
                self._dns_seen_ns = max(self._dns_seen_ns, int(answers.ts_ns.max()))
            if not came:
                break
        answers = DnsAnswers.concat(parts)
        self.dns_answers += len(answers)
        if len(answers):
            batch.answers = DnsAnswers.concat([batch.answers, answers])
        return batch

    @property
    def rotations(self) -> int:
        return self._conn.rotations

    @property
    def truncations(self) -> int:
        return self._conn.truncations

    def stats(self) -> dict[str, int]:
        return {"lines": self.parser.lines, "malformed": self.parser.malformed, "rotations": self.rotations,
                "truncations": self.truncations, "future_records": self.future_records,
                "dns_answers": self.dns_answers, "dns_malformed": self.dns_parser.malformed,
                "long_lines": self.long_parser.lines, "long_malformed": self.long_parser.malformed + self.ledger.unnamed,
                "long_open": len(self.ledger.open), "long_forgotten": self.ledger.forgotten,
                "long_after_end": self.ledger.after_end}

    def close(self) -> None:
        self._conn.close()
        for file in (self._dns, self._long):
            if file is not None:
                file.close()

    def __enter__(self) -> ZeekConnLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
