"""The incident page's HTML: the list of open and recent incidents, and one incident's page.

Where it stands: rendered by the board (board.py) for the metrics server's HTTP threads. Plain
HTML with its style inline: no script, nothing fetched from anywhere but the daemon itself
(the timeline PNG), so it works air-gapped and under a Content-Security-Policy that allows
nothing else (HEADERS).

Every value shown comes from traffic, flow records, rule files or a file of incidents, and is
treated as hostile: `esc` turns control characters, Unicode line separators, bidi overrides
and lone surrogates into U+FFFD, then escapes it for HTML (text and attribute values alike);
every URL built from a value is percent-encoded before it is escaped.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from detector.contracts import ns_to_iso
from detector.service.explain.book import Entry, dig
from detector.service.explain.explanation import Explanation, added_up, fmt, iso, ratio

PREFIX = "/incidents"
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#1d2430;background:#fff}
h1{font-size:1.4em;margin:.2em 0 .6em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.3em 0} th,td{border-bottom:1px solid #dde2ea;padding:.25em .6em;text-align:left;
vertical-align:top;white-space:nowrap} th{background:#f3f5f8} td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,monospace;font-size:.92em} code.cid{user-select:all;background:#f3f5f8;padding:0 .2em}
pre{background:#f6f8fa;padding:.8em;overflow:auto;max-height:40em;white-space:pre-wrap;word-break:break-all}
.open{color:#b42318;font-weight:600} .resolved{color:#3b7a57} .stale{color:#5b6472} .sev-critical,.sev-high{color:#b42318;font-weight:600}
.sev-medium{color:#b54708} dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em} dt{color:#5b6472}
dd{margin:0} form{margin:.6em 0} input,select{font:inherit;padding:.1em .3em} .note{color:#5b6472}
img{max-width:100%;border:1px solid #dde2ea}
"""


def esc(value: Any) -> str:
    """Any value as safe HTML text (module text); None as ''."""
    if value is None:
        return ""
    return html.escape(_UNSAFE.sub("\ufffd", str(value)), quote=True)


def incident_url(incident_id: str, suffix: str = "") -> str:
    return f"{PREFIX}/{urllib.parse.quote(incident_id, safe='', errors='replace')}{suffix}"


def _doc(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    """Cells are HTML already (escaped by the caller); `numeric` columns align right."""
    nums = set(numeric)
    heads = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{c}</td>" if i in nums else f"<td>{c}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


def _status(entry: Entry) -> str:
    return f"<span class=\"{esc(entry.status)}\">{esc(entry.status)}</span>"


def _severity(entry: Entry) -> str:
    return f"<span class=\"sev-{esc(re.sub('[^a-z]', '', entry.severity.lower()))}\">{esc(entry.severity)}</span>"


def _who(entry: Entry) -> str:
    return "link (global)" if entry.entity_class == "global" else entry.entity


# --------------------------------------------------------------------------------------------- the list

def render_list(entries: list[Entry], categories: list[str], entity: str = "", category: str = "", sensor: str = "",
                total: int = 0) -> str:
    options = "".join(f"<option value=\"{esc(c)}\"{' selected' if c == category else ''}>{esc(c)}</option>" for c in categories)
    form = (f"<form method=\"get\" action=\"{PREFIX}\"><label>entity <input name=\"entity\" value=\"{esc(entity)}\" "
            f"size=\"24\"></label> <label>category <select name=\"category\"><option value=\"\">any</option>{options}</select>"
            f"</label> <button type=\"submit\">filter</button> <a href=\"{PREFIX}\">clear</a></form>")
    rows = []
    for e in entries:
        link = esc(incident_url(e.incident_id))
        rows.append([
            _status(e),
            f"<a href=\"{link}\">{esc(_who(e))}</a>",
            esc(e.category),
            _severity(e),
            esc(fmt(e.score)),
            esc(fmt(e.threshold)),
            esc(when(e.first_seen)),
            esc(when(e.last_seen)),
            esc(fmt(e.anomalous_windows)),
            esc(fmt(e.events)),
            f"<a href=\"{link}\"><code>{esc(e.incident_id[:8])}</code></a>",
        ])
    shown = f"{len(entries)} of {total}" if (entity or category) else f"{len(entries)}"
    table = _table(["status", "entity", "category", "severity", "peak score", "threshold", "first seen (UTC)", "last seen (UTC)",
                    "anomalous windows", "events", "incident"], rows, numeric=(4, 5, 8, 9)) if rows else (
        "<p class=\"note\">No incident matches.</p>" if (entity or category) else "<p class=\"note\">No incident yet.</p>")
    title = f"netad incidents{' on ' + sensor if sensor else ''}"
    body = f"<h1>{esc(title)}</h1>{form}<p class=\"note\">{esc(shown)} incidents, open first, then the most recent.</p>{table}"
    return _doc(title, body)


# --------------------------------------------------------------------------------------------- one incident

def render_incident(x: Explanation, history_s: float = 0.0) -> str:
    e = x.entry
    roles = x.roles()
    facts = [
        ("incident", f"<code>{esc(e.incident_id)}</code>"),
        ("status", _status(e)),
        ("entity", esc(_who(e))),
        ("category", esc(e.category)),
        ("severity", f"{_severity(e)} ({esc(fmt(dig(e.ecs, 'event.severity')))})"),
        ("peak score", f"{esc(fmt(e.score))} against a threshold of {esc(fmt(e.threshold))} ({esc(ratio(e.score, e.threshold))}){esc(added_up(e))}"),
        ("first seen", esc(when(e.first_seen))),
        ("last seen", esc(when(e.last_seen))),
        ("anomalous windows", esc(fmt(e.anomalous_windows))),
        ("events", f"{esc(fmt(e.events))} (latest: {esc(dig(e.ecs, 'event.action', ''))} at {esc(dig(e.ecs, '@timestamp', ''))})"),
    ]
    if roles["role"]:
        facts.append(("role", esc(roles["role"])))
    if roles["originator"] or roles["target"]:
        facts.append(("traffic", f"{esc(roles['originator'] or '?')} \u2192 {esc(roles['target'] or '?')}"))
    techniques = x.techniques()
    if techniques:
        facts.append(("ATT&CK", ", ".join(f"{esc(i)} {esc(n)}" for i, n in techniques)))
    observer = dig(e.ecs, "observer", {}) or {}
    if isinstance(observer, dict):
        seen_by = " ".join(str(observer.get(k, "")) for k in ("name", "hostname") if observer.get(k))
        labels = observer.get("labels") if isinstance(observer.get("labels"), dict) else {}
        if labels:
            seen_by += " (" + ", ".join(f"{k}: {v}" for k, v in labels.items()) + ")"
        if seen_by:
            facts.append(("seen by", esc(seen_by)))
    facts.append(("summary", esc(dig(e.ecs, "message", ""))))
    dl = "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"

    span = f"up to {history_s / 3600:g} h are kept" if history_s else "as kept"
    if len(x.series):
        caption = (f"{len(x.series)} window scores of {_who(e)} from {iso(float(x.series.end_s[0]))} to "
                   f"{iso(float(x.series.end_s[-1]))} ({span}), against its threshold; the incident shaded.")
        if not x.covers_incident():
            caption += " The incident lies outside the window scores kept."
    else:
        caption = "No window scores of this entity are kept: the peak the last event reports is drawn."
    timeline = (f"<figure><img src=\"{esc(incident_url(e.incident_id, '/timeline.png'))}\" alt=\"{esc('score timeline of ' + _who(e))}\""
                f" width=\"960\" height=\"340\"><figcaption class=\"note\">{esc(caption)}</figcaption></figure>")

    features = _table(["feature", "unit", f"observed ({x.per_bin})", f"expected ({x.per_bin})", "observed / expected",
                       "share of the score"],
                      ([esc(f.get("name")), esc(f.get("unit")), esc(fmt(f.get("observed"))), esc(fmt(f.get("expected"))),
                        esc(ratio(f.get("observed"), f.get("expected"))), esc(_pct(f.get("share")))] for f in e.top_features),
                      numeric=(2, 3, 4, 5))
    flows = e.ranked_flows()
    flow_table = _table(["Community ID", "flow", "proto", "packets", "windows", "first seen (UTC)", "last seen (UTC)", "explains"],
                        ([f"<code class=\"cid\">{esc(f.get('community_id'))}</code>",
                          esc(f"{f.get('src')}:{f.get('sport')} \u2192 {f.get('dst')}:{f.get('dport')}"),
                          esc(f.get("proto")), esc(fmt(f.get("packets"))), esc(fmt(f.get("windows"))), esc(when(f.get("first"))),
                          esc(when(f.get("last"))), esc(f.get("cause"))] for f in flows[:30]),
                        numeric=(3, 4)) if flows else "<p class=\"note\">No evidence flows.</p>"
    peers = _table(["peer", "domain (DNS)", "packets", "bytes"],
                   ([esc(p.get("ip")), esc(p.get("domain", "")), esc(fmt(p.get("packets"))), esc(fmt(p.get("bytes")))]
                    for p in e.ranked_peers()[:15]), numeric=(2, 3))
    ports = _table(["port", "proto", "packets"], ([esc(p.get("port")), esc(p.get("proto")), esc(fmt(p.get("packets")))]
                                                  for p in e.ranked_ports()[:15]), numeric=(0, 2))
    windows = _table(["window end (UTC)", "score", "with what earlier windows carried in", "threshold",
                      "top features: observed / expected"],
                     ([esc(when(w.get("end"))), esc(fmt(w.get("score"))), esc(fmt(w.get("accumulated", w.get("score")))),
                       esc(fmt(w.get("threshold"))),
                       esc("; ".join(f"{f.get('name')} {fmt(f.get('observed'))} / {fmt(f.get('expected'))}"
                                     for f in w.get("top_features", []) if isinstance(f, dict)))]
                      for w in reversed(e.windows[-60:])), numeric=(1, 2, 3)) if e.windows else ""
    raw = json.dumps(e.ecs, indent=2, ensure_ascii=False, sort_keys=False, default=str)
    title = f"{e.category or 'anomaly'} on {_who(e)}"
    body = (f"<p><a href=\"{PREFIX}\">\u2190 all incidents</a></p><h1>{esc(title)}</h1>{dl}"
            f"<h2>Score timeline</h2>{timeline}"
            f"<h2>Top features</h2><p class=\"note\">What made the peak window anomalous, in real units {esc(x.per_bin)}.</p>{features}"
            f"<h2>Evidence flows, ranked by cause</h2><p class=\"note\">The flows behind the top features (not the busiest); "
            f"times are those of the anomalous windows each was seen in.</p>{flow_table}"
            f"<h2>Peers</h2>{peers}<h2>Ports</h2>{ports}"
            + (f"<h2>Anomalous windows</h2>{windows}" if windows else "")
            + f"<h2>Raw ECS event</h2><details open><summary>the latest event, as the sinks got it</summary><pre>{esc(raw)}</pre></details>")
    return _doc(f"netad: {title}", body)


def render_message(status: int, message: str) -> str:
    return _doc(f"netad: {status}", f"<p><a href=\"{PREFIX}\">\u2190 all incidents</a></p><h1>{status}</h1><p>{esc(message)}</p>")


def when(value: Any) -> str:
    """An ISO time as the page shows it: '2023-11-14 22:41:00Z' (anything else as it is)."""
    text = "" if value is None else str(value)
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.0+)?Z", text)
    return f"{match.group(1)} {match.group(2)}Z" if match else text


def _pct(value: Any) -> str:
    try:
        return f"{float(value):.0%}"
    except (TypeError, ValueError, OverflowError):
        return ""


def window_row(end_ns: int, score: float, accumulated: float, threshold: float, top: list[dict[str, Any]]) -> dict[str, Any]:
    """An anomalous window as the incident page lists it: its own score, which its top
    features share out, and what was compared with the threshold (the score plus what the
    windows before it carried in)."""
    return {"end": ns_to_iso(end_ns), "score": round(score, 6), "accumulated": round(accumulated, 6),
            "threshold": round(threshold, 6), "top_features": top}
