"""Zeek's long-connections package (conn_long.log) for a capture and its conn.log, as the
package writes it: every `every_s` of a connection's life (its `default_durations` of
`every_s` with `repeat_last_duration`), a line of Conn::Info with the connection's totals so
far, its duration the last packet's time less the first's. Counted off the capture's own
packets (scapy), matched to the conn.log's connections by address, port, protocol and span."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from detector.capture.flowrecords.zeeklog import DEFAULT_FIELDS

HEADER_LONG = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn_long\n"
               "#open\t2024-01-01-00-00-00\n#fields\t" + "\t".join(DEFAULT_FIELDS) + "\n#types\t"
               + "\t".join(["string"] * len(DEFAULT_FIELDS)) + "\n").encode()


def conn_log_rows(path: Path) -> Iterator[dict[str, str]]:
    """A TSV conn.log's lines as dicts of their columns, looked up by the header's names (the
    first word of each: IoT-23 joins its label columns to the last with spaces)."""
    fields: list[str] = []
    for raw in path.read_text().splitlines():
        if raw.startswith("#fields"):
            fields = [f for col in raw.split("\t")[1:] for f in col.split()[:1]]
        elif raw and not raw.startswith("#"):
            yield dict(zip(fields, raw.split("\t"), strict=True))


def long_connections(conn_log: Path, longer_than_s: float) -> list[dict]:
    """The conn.log's connections that lasted longer than `longer_than_s`, as dicts of its columns."""
    return [row for row in conn_log_rows(conn_log) if row["duration"] != "-" and float(row["duration"]) > longer_than_s]


def write_long_log(conn_log: Path, pcap: Path, out: Path, every_s: float = 600.0, as_json: bool = False) -> list[dict]:
    """Write `out`, the long connections' lines of `conn_log`'s connections in `pcap`; returns
    the connections (with their packets' times, directions and IP lengths as `packets`)."""
    from scapy.all import IP, TCP, UDP, PcapReader

    conns = long_connections(conn_log, every_s)
    by_key = defaultdict(list)
    for c in conns:
        c["packets"] = []
        key = (c["id.orig_h"], int(c["id.orig_p"]), c["id.resp_h"], int(c["id.resp_p"]), c["proto"])
        by_key[key].append(c)
    with PcapReader(str(pcap)) as reader:
        for p in reader:
            if IP not in p or not (TCP in p or UDP in p):
                continue
            l4 = p[TCP] if TCP in p else p[UDP]
            proto = "tcp" if TCP in p else "udp"
            t = float(p.time)
            for key, orig in (((p[IP].src, l4.sport, p[IP].dst, l4.dport, proto), True),
                              ((p[IP].dst, l4.dport, p[IP].src, l4.sport, proto), False)):
                for c in by_key.get(key, ()):
                    if float(c["ts"]) <= t <= float(c["ts"]) + float(c["duration"]):
                        c["packets"].append((t, orig, p[IP].len))
    lines = []
    for c in conns:
        start, end = float(c["ts"]), float(c["ts"]) + float(c["duration"])
        poll = start + every_s
        while poll < end:
            seen = [pk for pk in c["packets"] if pk[0] <= poll]
            if seen:
                row = dict(c, duration=f"{max(pk[0] for pk in seen) - start:.6f}",
                           orig_pkts=str(sum(1 for pk in seen if pk[1])), orig_ip_bytes=str(sum(pk[2] for pk in seen if pk[1])),
                           resp_pkts=str(sum(1 for pk in seen if not pk[1])),
                           resp_ip_bytes=str(sum(pk[2] for pk in seen if not pk[1])))
                lines.append((poll, row))
            poll += every_s
    lines.sort(key=lambda item: item[0])
    with open(out, "wb") as f:
        if not as_json:
            f.write(HEADER_LONG)
        for _, row in lines:
            if as_json:
                f.write((json.dumps({k: _json(k, row[k]) for k in DEFAULT_FIELDS if row.get(k, "-") != "-"}) + "\n").encode())
            else:
                f.write(("\t".join(row.get(k, "-") for k in DEFAULT_FIELDS) + "\n").encode())
    return conns


def _json(name: str, value: str) -> object:
    if name in ("ts", "duration"):
        return float(value)
    if name.endswith(("_p", "_pkts", "_bytes")) or name == "missed_bytes":
        return int(value)
    return value
