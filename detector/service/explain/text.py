"""An incident's explanation for a terminal: what `netad explain` prints.

The same content as the incident page (page.py), as plain text. Values come off the network
and are treated as hostile here too: `term` turns control characters (escape sequences among
them: a hostname must not repaint the analyst's terminal), line breaks, Unicode line
separators, bidi overrides and lone surrogates into U+FFFD or spaces.
"""

from __future__ import annotations

import re
from typing import Any

from detector.service.explain.book import dig
from detector.service.explain.explanation import Explanation, added_up, fmt, iso, ratio

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def term(value: Any, max_chars: int = 200) -> str:
    """A value as one safe line of terminal text."""
    if value is None:
        return ""
    text = _UNSAFE.sub("\ufffd", str(value)).replace("\t", " ").replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


def _columns(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    cells = [head] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    out = []
    for r in cells:
        out.append("  " + "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return out


def render_text(x: Explanation, png: str | None = None, flows: int = 10) -> str:
    e = x.entry
    who = "the link (global)" if e.entity_class == "global" else f"host {e.entity}"
    roles = x.roles()
    lines = [f"incident {term(e.incident_id)}  ({term(e.status)})",
             f"  {term(e.category or 'anomaly')} on {term(who)}"
             + (f", {term(roles['role'])}" if roles["role"] else "")
             + (f": {term(roles['originator'] or '?')} -> {term(roles['target'] or '?')}" if roles["originator"] or roles["target"] else ""),
             f"  severity {term(e.severity)} ({term(fmt(dig(e.ecs, 'event.severity')))}), peak score {term(fmt(e.score))} against a "
             f"threshold of {term(fmt(e.threshold))} ({term(ratio(e.score, e.threshold))}){term(added_up(e))}",
             f"  first seen {term(e.first_seen)}, last seen {term(e.last_seen)}; {term(fmt(e.anomalous_windows))} anomalous windows, "
             f"{term(fmt(e.events))} events (latest: {term(dig(e.ecs, 'event.action', ''))})"]
    techniques = x.techniques()
    if techniques:
        lines.append("  ATT&CK " + ", ".join(f"{term(i)} {term(n)}".strip() for i, n in techniques))
    message = dig(e.ecs, "message", "")
    if message:
        lines.append(f"  {term(message, 300)}")
    lines += ["", f"Top features ({x.per_bin}: observed vs expected)"]
    lines += _columns(["feature", "unit", "observed", "expected", "ratio", "share"],
                      [[term(f.get("name"), 40), term(f.get("unit"), 20), term(fmt(f.get("observed"))), term(fmt(f.get("expected"))),
                        term(ratio(f.get("observed"), f.get("expected"))), term(_pct(f.get("share")))] for f in e.top_features],
                      right={2, 3, 4, 5})
    ranked = e.ranked_flows()[:flows]
    lines += ["", "Evidence flows, ranked by cause (the flows behind the top features)"]
    if ranked:
        lines += _columns(["community id", "flow", "proto", "packets", "windows", "first seen", "last seen", "explains"],
                          [[term(f.get("community_id"), 64), term(f"{f.get('src')}:{f.get('sport')} -> {f.get('dst')}:{f.get('dport')}", 100),
                            term(f.get("proto"), 12), term(fmt(f.get("packets"))), term(fmt(f.get("windows"))), term(f.get("first"), 32),
                            term(f.get("last"), 32), term(f.get("cause"), 32)] for f in ranked], right={3, 4})
    else:
        lines.append("  none")
    peers = e.ranked_peers()[:8]
    if peers:
        lines += ["", "Peers"] + _columns(["peer", "packets", "bytes"], [[term(p.get("ip"), 64), term(fmt(p.get("packets"))),
                                                                       term(fmt(p.get("bytes")))] for p in peers], right={1, 2})
    ports = e.ranked_ports()[:8]
    if ports:
        lines += ["", "Ports"] + _columns(["port", "proto", "packets"], [[term(p.get("port"), 12), term(p.get("proto"), 12),
                                                                       term(fmt(p.get("packets")))] for p in ports], right={0, 2})
    lines += ["", "Score timeline"]
    if len(x.series):
        hot = int(((x.series.flags & 1) != 0).sum())
        lines.append(f"  {len(x.series)} window scores from {iso(float(x.series.end_s[0]))} to {iso(float(x.series.end_s[-1]))}, "
                     f"{hot} anomalous; score range {fmt(float(x.series.score.min()))} .. {fmt(float(x.series.score.max()))}, "
                     f"threshold {fmt(float(x.series.threshold[-1]))}"
                     + ("" if x.covers_incident() else " (the incident lies outside them)"))
    else:
        lines.append("  no window scores of this entity (give --state-dir or --scores): the peak alone is drawn")
    if png:
        lines.append(f"  written to {term(png, 500)}")
    return "\n".join(lines) + "\n"


def _pct(value: Any) -> str:
    try:
        return f"{float(value):.0%}"
    except (TypeError, ValueError, OverflowError):
        return ""
