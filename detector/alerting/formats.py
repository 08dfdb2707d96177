"""Incident formats: an IncidentEvent as the text a SIEM parses.

Where it stands: the last stage of the pipeline. The incident lifecycle emits IncidentEvents;
a sink (sinks.py) is one format from this module plus one transport. Formats:

- ``ecs``: Elastic Common Schema JSON, one line (the default everywhere).
- ``cef``: ArcSight CEF:0, one line, with the spec's escaping.
- ``ocsf``: OCSF 1.1 Detection Finding (class_uid 2004) JSON, one line.
- ``rfc5424``: an RFC 5424 syslog message with netad structured data; its MSG is the ECS
  JSON, the CEF line or the OCSF JSON (``msg_format``).

Encoders are pure functions of the event (no clock, no hostname lookup unless passed in), so
an event spooled before a restart and re-encoded after it is the same text (bar the syslog
PROCID, which is the sending process).

Every string here is treated as hostile: entities, peers and flows come off the network and
rule names from files an operator may have got wrong. ``clean_text`` is applied to all of
them: non-UTF-8 (surrogate-escaped) code points, control characters other than tab/CR/LF,
Unicode line separators and bidi overrides become U+FFFD, and values are cut to
MAX_VALUE_CHARS. Each format then escapes what it must so that no value can break a frame
or start a new line: JSON escapes CR/LF, CEF writes them as ``\\n``/``\\r``, RFC 5424
structured data and headers turn them into spaces (the RFC has no escape for them).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from typing import Any

from detector import __version__
from detector.alerting import attack
from detector.alerting._text import (
    MAX_LIST_ITEMS,
    MAX_VALUE_CHARS,
    as_ip,
    clean_json,
    clean_text,
    finite,
    integer,
    one_line,
)
from detector.alerting.classify import CATEGORIES, ORIGINATOR, TARGET
from detector.contracts import ENTITY_GLOBAL, IncidentEvent, WindowEvidence, ns_to_iso

FORMATS = ("ecs", "cef", "ocsf", "rfc5424", "console")
MSG_FORMATS = ("ecs", "cef", "ocsf")  # what an RFC 5424 message may carry as its MSG

ECS_VERSION = "8.11.0"
OCSF_VERSION = "1.1.0"
PRODUCT = "netad"
APP_NAME = "netad"
MSGID = "incident"
# 32473 is the Private Enterprise Number that RFC 5612 reserves for documentation; an
# SD-ID with it is well-formed and never collides with a registered vendor's.
SD_ID = "netad@32473"

MAX_MESSAGE_CHARS = 1024  # the human summary

SEVERITY_LEVELS = ("low", "medium", "high", "critical")

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
# RFC 5424 severities: critical=2 error=3 warning=4 notice=5. A resolution is news, not an
# alarm, so it is a notice whatever the incident's severity was.
_SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5}
_SYSLOG_RESOLVED = 5
_OCSF_SEVERITY = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"),
                  "critical": (5, "Critical")}
_OCSF_ACTIVITY = {"opened": (1, "Create"), "updated": (2, "Update"), "resolved": (3, "Close")}
# OCSF hostname_t: DNS labels of letters, digits and inner hyphens, joined by dots
_HOSTNAME = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
_OCSF_STATUS = {"opened": (1, "New"), "updated": (2, "In Progress"), "resolved": (4, "Resolved")}

def _entity_ip(event: IncidentEvent) -> str | None:
    return as_ip(event.entity) if event.entity_class != ENTITY_GLOBAL else None


def sides(event: IncidentEvent) -> tuple[str | None, str | None]:
    """(originator, target) addresses: who sent the anomalous traffic (ECS source, CEF src,
    OCSF evidence src_endpoint) and who received it (destination, dst, dst_endpoint). An event
    from before roles has its host entity as the source, as netad wrote it then."""
    if event.role not in (ORIGINATOR, TARGET):
        return _entity_ip(event), None
    return as_ip(event.originator), as_ip(event.target)


def _affected_ip(event: IncidentEvent) -> str | None:
    """The host the finding is about: the entity, or for the link the dominant host on the
    side of its role (an inbound flood's victim, an outbound transfer's sender)."""
    if event.entity_class != "global":
        return _entity_ip(event)
    originator, target = sides(event)
    return originator if event.role == ORIGINATOR else target


def _techniques(event: IncidentEvent) -> list[attack.Technique]:
    return [attack.technique(i) for i in attack.valid_ids(event.techniques)[:MAX_LIST_ITEMS]]


def _peer_ips(event: IncidentEvent) -> list[str]:
    peers = [p.get("ip") for p in event.evidence.top_peers[:MAX_LIST_ITEMS] if isinstance(p, dict)]
    return [ip for ip in (as_ip(p) for p in peers) if ip is not None]


def _peer_domains(event: IncidentEvent) -> dict[str, str]:
    """Each listed peer's registered domain (the DNS answered its address for it), by address."""
    out: dict[str, str] = {}
    for p in event.evidence.top_peers[:MAX_LIST_ITEMS]:
        ip = as_ip(p.get("ip")) if isinstance(p, dict) else None
        if ip is not None and isinstance(p.get("domain"), str) and p["domain"]:
            out[ip] = one_line(p["domain"], 253)
    return out


def _community_ids(event: IncidentEvent) -> list[str]:
    flows = [f for f in event.evidence.top_flows[:MAX_LIST_ITEMS] if isinstance(f, dict)]
    return [one_line(f["community_id"]) for f in flows if f.get("community_id")]


def severity_level(event: IncidentEvent) -> str:
    """The event's severity as one of SEVERITY_LEVELS (from severity_score if unknown)."""
    level = str(event.severity).lower()
    if level in SEVERITY_LEVELS:
        return level
    score = integer(event.severity_score) or 0
    return "critical" if score >= 90 else "high" if score >= 70 else "medium" if score >= 40 else "low"


def _fmt_number(value: object) -> str:
    number = finite(value, 6)
    if number is None:
        return "?"
    if abs(number) >= 1e9 or (0 < abs(number) < 0.01):
        return f"{number:.3g}"
    if abs(number) >= 100 or number == int(number):
        return f"{number:.0f}"
    return f"{number:.3g}"


def summary(event: IncidentEvent) -> str:
    """One line for a human: who, what kind, and the feature that stood out most."""
    who = "link" if event.entity_class == "global" else f"{event.entity_class} {event.entity}"
    category = (event.category or "anomaly") + _story(event)
    if event.added_up and event.action != "resolved":
        category += "; added up over windows each under the threshold"
    detail = ""
    if event.top_features:
        top = event.top_features[0]
        detail = f": {top.name} {_fmt_number(top.observed)} vs {_fmt_number(top.expected)} expected"
    if event.action == "resolved":
        text = f"netad: {who} back to normal ({category}; anomalous for {event.windows} windows)"
    elif event.action == "updated":
        text = f"netad: {who} still anomalous ({category}; {event.windows} windows){detail}"
    else:
        text = f"netad: {who} anomalous ({category}){detail}"
    return one_line(text, MAX_MESSAGE_CHARS)


def _story(event: IncidentEvent) -> str:
    """The role and the other side, for the summary: ' target, from 203.0.113.66'."""
    originator, target = sides(event)
    if event.entity_class == "global":
        return f", {originator or '?'} -> {target or '?'}" if originator or target else ""
    if event.role == ORIGINATOR:
        return f" originator, towards {target}" if target else " originator"
    if event.role == TARGET:
        return f" target, from {originator}" if originator else " target"
    return ""


def to_console(event: IncidentEvent) -> str:
    """One readable line for a terminal: when, transition, severity, who, why, and the id."""
    from detector.contracts import ns_to_iso

    features = ", ".join(
        f"{c.name} {_fmt_number(c.observed)} vs {_fmt_number(c.expected)}" for c in event.top_features[:3]
    )
    who = "link" if event.entity_class == "global" else event.entity
    text = (
        f"{ns_to_iso(event.emitted_ns)} {event.action.upper():<8} {event.severity:<8} {who:<16} "
        f"{event.category:<16} score {_fmt_number(event.score)}"
        f"{f' (its window {_fmt_number(event.window_score)})' if event.added_up else ''}"
        f" (threshold {_fmt_number(event.threshold)})"
        f"{': ' + features if features else ''}  [{event.incident_id[:8]}]"
    )
    return one_line(text, MAX_MESSAGE_CHARS)


def _netad_block(event: IncidentEvent) -> dict[str, Any]:
    """netad's own fields: the score, its explanation and the evidence, under one namespace."""
    evidence = event.evidence
    return {
        "incident_id": clean_text(event.incident_id),
        "entity": clean_text(event.entity),
        "entity_class": clean_text(event.entity_class),
        "score": finite(event.score, 6),
        "window_score": finite(event.window_score if event.window_score is not None else event.score, 6),
        "threshold": finite(event.threshold, 6),
        "windows": integer(event.windows),
        "severity": clean_text(event.severity),
        "category": clean_text(event.category),
        "role": clean_text(event.role) or None,
        "model_version": clean_text(event.model_version),
        "top_features": [
            {
                "name": clean_text(c.name),
                "unit": clean_text(c.unit),
                "share": finite(c.share, 4),
                "observed": finite(c.observed, 3),
                "expected": finite(c.expected, 3),
            }
            for c in event.top_features[:MAX_LIST_ITEMS]
        ],
        "evidence": {
            "top_peers": clean_json(evidence.top_peers),
            "top_ports": clean_json(evidence.top_ports),
            "top_flows": clean_json(evidence.top_flows),
        },
    }


def _dumps(document: dict[str, Any]) -> str:
    # ensure_ascii=False keeps names readable; clean_text already removed what could break
    # a line or fail to encode, and json escapes the CR/LF/tab it left.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------------------
# ECS
# --------------------------------------------------------------------------------------


def to_ecs(event: IncidentEvent) -> dict[str, Any]:
    """The event as an ECS document (DESIGN.md, "Incidents"): the originator of the anomalous
    traffic as `source`, its target as `destination`, whichever of them the entity is."""
    entity_ip = _entity_ip(event)
    source_ip, destination_ip = sides(event)
    ends = [ip for ip in (entity_ip, source_ip, destination_ip) if ip]
    related = list(dict.fromkeys(ends + _peer_ips(event)))
    doc: dict[str, Any] = {
        "@timestamp": ns_to_iso(event.emitted_ns),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "action": f"incident-{clean_text(event.action, 32)}",
            "id": clean_text(event.event_id),
            "start": ns_to_iso(event.first_seen_ns),
            "end": ns_to_iso(event.last_seen_ns),
            "severity": integer(event.severity_score),
            "risk_score": finite(event.score, 6),  # ECS: "your system's original value"
            "risk_score_norm": finite(event.severity_score, 2),
            "module": PRODUCT,
            "dataset": "netad.incident",
            "provider": PRODUCT,
        },
        "message": summary(event),
        "rule": {
            "id": clean_text(event.rule_id),
            "name": clean_text(event.rule_name),
            "category": clean_text(event.category),
        },
    }
    doc["observer"], labels = _ecs_observer(event.observer)
    if labels:
        doc["labels"] = labels
    domains = _peer_domains(event)
    if source_ip:
        doc["source"] = {"ip": source_ip, **({"registered_domain": domains[source_ip]} if source_ip in domains else {})}
    if destination_ip:
        doc["destination"] = {"ip": destination_ip,
                              **({"registered_domain": domains[destination_ip]} if destination_ip in domains else {})}
    if related:
        doc["related"] = {"ip": related}
    if domains:
        doc.setdefault("related", {})["hosts"] = list(dict.fromkeys(domains.values()))
    threat = _ecs_threat(event)
    if threat:
        doc["threat"] = threat
    community_ids = _community_ids(event)
    if community_ids:  # ECS has one value: the top flow's; all of them are in netad.evidence
        doc["network"] = {"community_id": community_ids[0]}
    doc["netad"] = _netad_block(event)
    return _pruned(doc)


def _pruned(doc: dict[str, Any]) -> dict[str, Any]:
    """The ECS document without empty strings, empty lists and dicts and None (ECS: leave a
    field out rather than write it empty), except under `netad`, whose shape is fixed."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key != "netad":
            value = _pruned(value)
        if value not in ("", None, [], {}):
            out[key] = value
    return out


def _ecs_threat(event: IncidentEvent) -> dict[str, Any] | None:
    """ECS `threat.*`: the category's ATT&CK techniques (sub-techniques under
    `technique.subtechnique`) and their tactics. Names are written only when every id has one,
    so that the id and name arrays pair up."""
    techniques = _techniques(event)
    if not techniques:
        return None
    parents = [attack.technique(i) for i in dict.fromkeys(t.parent_id for t in techniques)]
    subs = [t for t in techniques if t.is_sub]
    tactics = list(dict.fromkeys(tactic for t in techniques for tactic in t.tactics))
    threat: dict[str, Any] = {"framework": attack.FRAMEWORK, "technique": _ecs_ids(parents)}
    if subs:
        threat["technique"]["subtechnique"] = _ecs_ids(subs)
    if tactics:
        threat["tactic"] = {"id": tactics, "name": [attack.TACTICS.get(t, "") for t in tactics]}
        if not all(threat["tactic"]["name"]):
            del threat["tactic"]["name"]
    return threat


def _ecs_ids(techniques: list[attack.Technique]) -> dict[str, list[str]]:
    out = {"id": [t.id for t in techniques]}
    if all(t.name for t in techniques):
        out["name"] = [t.name for t in techniques]
    return out


def _ecs_observer(observer: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """ECS `observer` (netad itself, on its host and interface) and the rest of the observer
    dict as ECS top-level `labels` (flat keyword pairs: a flow record's exporter, netad's
    collector address). ECS has no `observer.labels`; an empty value is left out."""
    out: dict[str, Any] = {"type": "ids", "vendor": PRODUCT, "product": PRODUCT, "version": __version__}
    labels: dict[str, str] = {}
    for key, value in list(observer.items())[:MAX_LIST_ITEMS]:
        text = clean_text(value)
        if not text:
            continue
        if key == "hostname":
            out["hostname"] = text
        elif key in ("name", "sensor", "sensor_id"):
            out["name"] = text
        elif key == "interface":
            out["ingress"] = {"interface": {"name": text}}
        else:  # kept, not dropped
            labels[re.sub(r"[^A-Za-z0-9_]", "_", clean_text(key, 64))] = text
    return out, labels


def ecs_json(event: IncidentEvent) -> str:
    """The ECS document as one line of JSON."""
    return _dumps(to_ecs(event))


# --------------------------------------------------------------------------------------
# CEF
# --------------------------------------------------------------------------------------


def cef_header_escape(value: object) -> str:
    """CEF header field: backslash and pipe escaped; no escape exists for newlines."""
    return one_line(value).replace("\\", "\\\\").replace("|", "\\|")


def cef_value_escape(value: object, max_chars: int = MAX_VALUE_CHARS) -> str:
    """CEF extension value: backslash and '=' escaped, newlines as \\n and \\r.

    Trailing whitespace is dropped: a parser cannot tell it from the space before the next
    key.
    """
    text = clean_text(value, max_chars).replace("\t", " ").rstrip(" ")
    return (
        text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")
    )


def cef_severity(event: IncidentEvent) -> int:
    """CEF's 0..10 severity from the 0..100 severity score."""
    score = integer(event.severity_score) or 0
    return max(0, min(10, round(score / 10)))


def cef_class_id(event: IncidentEvent) -> str:
    """The Device Event Class ID: one per category (netad:scan, netad:brute-force, ...), what
    ArcSight and QRadar map event types on."""
    return f"{PRODUCT}:{one_line(event.category, 64) or 'anomaly'}"


def cef_name(event: IncidentEvent) -> str:
    """The CEF Name: what happened (the category's title), else the rule's name."""
    category = CATEGORIES.get(event.category)
    return category.title if category is not None else (event.rule_name or event.category or "netad incident")


def to_cef(event: IncidentEvent) -> str:
    """The event as one CEF:0 line (header + key=value extension): the originator as src, the
    target as dst."""
    header = [
        "CEF:0",
        cef_header_escape(PRODUCT),
        cef_header_escape(PRODUCT),
        cef_header_escape(__version__),
        cef_header_escape(cef_class_id(event)),
        cef_header_escape(cef_name(event)),
        str(cef_severity(event)),
    ]
    source_ip, destination_ip = sides(event)
    features = "; ".join(
        f"{one_line(c.name)} {_fmt_number(c.observed)} vs {_fmt_number(c.expected)}"
        for c in event.top_features[:MAX_LIST_ITEMS]
    )
    peers = ",".join(
        one_line(p.get("ip", "")) for p in event.evidence.top_peers[:MAX_LIST_ITEMS] if isinstance(p, dict)
    )
    # (key, label for custom fields, value, longest value): custom fields (cs1, cn1, ...) are
    # announced by a <key>Label pair, written only when the field itself is.
    pairs: list[tuple[str, str | None, object, int]] = [
        ("rt", None, event.emitted_ns // 1_000_000, 32),
        ("start", None, event.first_seen_ns // 1_000_000, 32),
        ("end", None, event.last_seen_ns // 1_000_000, 32),
        ("act", None, f"incident-{event.action}", 64),
        ("cat", None, event.category, MAX_VALUE_CHARS),
        ("externalId", None, event.event_id, MAX_VALUE_CHARS),
    ]
    # CEF's src and dst are IPv4 only; c6a2 and c6a3 are the conventional IPv6 fields
    domains = _peer_domains(event)
    for ip, v4_key, v6_key, v6_label, dns_key in ((source_ip, "src", "c6a2", "Source IPv6 Address", "sourceDnsDomain"),
                                                  (destination_ip, "dst", "c6a3", "Destination IPv6 Address",
                                                   "destinationDnsDomain")):
        if ip and ipaddress.ip_address(ip).version == 4:
            pairs.append((v4_key, None, ip, 64))
        elif ip:
            pairs.append((v6_key, v6_label, ip, 64))
        if ip in domains:  # the registered domain the DNS answered that address for
            pairs.append((dns_key, None, domains[ip], 255))
    pairs += [
        ("cs1", "incidentId", event.incident_id, MAX_VALUE_CHARS),
        ("cs2", "entity", event.entity, MAX_VALUE_CHARS),
        ("cs3", "topFeatures", features, 1023),
        ("cs4", "topPeers", peers, 1023),
        ("cs5", "communityIds", ",".join(_community_ids(event)), 1023),
        ("cs6", "modelVersion", event.model_version, MAX_VALUE_CHARS),
        ("cn1", "windows", integer(event.windows), 32),
        ("cn2", "severityScore", integer(event.severity_score), 32),
        ("cfp1", "score", finite(event.score, 6), 32),
        ("cfp2", "threshold", finite(event.threshold, 6), 32),
        ("cfp3", "windowScore", None if event.window_score is None else finite(event.window_score, 6), 32),
        ("flexString1", "attackTechniques", ",".join(t.id for t in _techniques(event)), 1023),
        ("flexString2", "role", event.role, 32),
        ("dvchost", None, event.observer.get("hostname", ""), MAX_VALUE_CHARS),
        ("msg", None, summary(event), MAX_MESSAGE_CHARS),
    ]
    extension = []
    for key, label, value, max_chars in pairs:
        text = "" if value is None else cef_value_escape(value, max_chars)
        if text:  # an empty value says nothing and some parsers choke on "key= "
            if label:
                extension.append(f"{key}Label={label}")
            extension.append(f"{key}={text}")
    return "|".join(header) + "|" + " ".join(extension)


# --------------------------------------------------------------------------------------
# OCSF Detection Finding
# --------------------------------------------------------------------------------------


def to_ocsf(event: IncidentEvent) -> dict[str, Any]:
    """The event as an OCSF 1.1 Detection Finding (class 2004, category Findings).

    `device` is the affected host (the Finding's definition), `resources` the target of the
    activity (Detection Finding's "Affected Resources"), and the first evidence artifact the
    originator -> target pair; the sensor is not the affected device: it is the logger
    (`metadata.loggers`), as it is ECS's `observer`."""
    activity_id, activity = _OCSF_ACTIVITY.get(event.action, (99, "Other"))
    status_id, status = _OCSF_STATUS.get(event.action, (99, "Other"))
    severity_id, severity = _OCSF_SEVERITY[severity_level(event)]
    entity_ip = _entity_ip(event)
    originator, target = sides(event)
    # an observable's name points at the attribute in this event that holds it
    observables = []
    if entity_ip:
        observables.append({"name": "device.ip", "type_id": 2, "type": "IP Address", "value": entity_ip})
    observables += [
        {"name": "unmapped.netad.evidence.top_peers.ip", "type_id": 2, "type": "IP Address", "value": ip}
        for ip in _peer_ips(event)
    ]
    message = summary(event)
    metadata: dict[str, Any] = {
        "uid": clean_text(event.event_id),
        "correlation_uid": clean_text(event.incident_id),
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__},
    }
    logger = _ocsf_logger(event.observer)
    if logger:
        metadata["loggers"] = [logger]
    finding_info: dict[str, Any] = {
        "uid": clean_text(event.incident_id),
        "title": clean_text(event.rule_name or event.category),
        "desc": message,
        "types": [clean_text(event.category)],
        "first_seen_time": event.first_seen_ns // 1_000_000,
        "last_seen_time": event.last_seen_ns // 1_000_000,
        "analytic": {
            "uid": clean_text(event.rule_id),
            "name": clean_text(event.rule_name),
            "type_id": 4,
            "type": "Learning (ML/DL)",
            "version": clean_text(event.model_version),
        },
    }
    attacks = _ocsf_attacks(event)
    if attacks:
        finding_info["attacks"] = attacks
    doc: dict[str, Any] = {
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 2004 * 100 + activity_id,
        "type_name": f"Detection Finding: {activity}",
        "time": event.emitted_ns // 1_000_000,
        "start_time": event.first_seen_ns // 1_000_000,
        "end_time": event.last_seen_ns // 1_000_000,
        "count": integer(event.windows),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "risk_score": integer(event.severity_score),
        "message": message,
        "metadata": metadata,
        "finding_info": finding_info,
    }
    affected = _affected_ip(event)
    if affected:  # `device` is the host profile's attribute: the profile is declared
        doc["device"] = {"ip": affected, "type_id": 0, "type": "Unknown"}
        metadata["profiles"] = ["host"]
    if target:
        doc["resources"] = [{"uid": target, "type": "IP Address"}]
    if observables:
        doc["observables"] = observables
    pair = _ocsf_endpoints(originator, target, _peer_domains(event))
    flows = [e for e in (_ocsf_evidence(f) for f in event.evidence.top_flows[:MAX_LIST_ITEMS]) if e]
    evidences = ([pair] if pair else []) + flows
    if evidences:
        doc["evidences"] = evidences
    doc["unmapped"] = {"netad": _netad_block(event)}
    return doc


def _ocsf_logger(observer: dict[str, str]) -> dict[str, Any] | None:
    """The sensor as an OCSF logger: the netad instance and the host it runs on."""
    logger: dict[str, Any] = {}
    # a logger needs a name or uid: the sensor's id, else the host it runs on
    name = observer.get("name") or observer.get("sensor") or observer.get("sensor_id") or observer.get("hostname")
    if name:
        logger["name"] = clean_text(name)
    device: dict[str, Any] = {}
    hostname = clean_text(observer.get("hostname", ""))
    if _HOSTNAME.fullmatch(hostname):
        device["hostname"] = hostname
    elif hostname.strip():  # not a DNS name (OCSF hostname_t): the device's name
        device["name"] = hostname
    if observer.get("interface"):
        device["interface_name"] = clean_text(observer["interface"])
    if device:
        logger["device"] = {**device, "type_id": 0, "type": "Unknown"}
    if logger:
        logger["product"] = {"name": PRODUCT, "vendor_name": PRODUCT, "version": __version__}
    return logger or None


def _ocsf_attacks(event: IncidentEvent) -> list[dict[str, Any]]:
    """OCSF 1.1 `attack` objects: one per technique and tactic (the object has one tactic)."""
    out = []
    for t in _techniques(event):
        parent = attack.technique(t.parent_id)
        item: dict[str, Any] = {"technique": _ocsf_named(parent.id, parent.name), "version": attack.ATTACK_VERSION}
        if t.is_sub:
            item["sub_technique"] = _ocsf_named(t.id, t.name)
        if not t.tactics:  # an id the catalogue does not know: the technique alone
            out.append(item)
        for tactic in t.tactics:
            out.append({**item, "tactic": _ocsf_named(tactic, attack.TACTICS.get(tactic, ""))})
    return out


def _ocsf_named(uid: str, name: str) -> dict[str, str]:
    return {"uid": uid, "name": name} if name else {"uid": uid}


def _ocsf_endpoints(originator: str | None, target: str | None, domains: dict[str, str]) -> dict[str, Any] | None:
    """The originator -> target pair as an evidence artifact: the remote side is the other
    (with the registered domain the DNS answered its address for, when there is one)."""
    out: dict[str, Any] = {}
    for key, ip in (("src_endpoint", originator), ("dst_endpoint", target)):
        if ip:
            out[key] = {"ip": ip, **({"domain": domains[ip]} if ip in domains else {})}
    return out or None


def _ocsf_evidence(flow: object) -> dict[str, Any] | None:
    """A top flow as an OCSF evidence artifact (endpoints and connection), when it has any."""
    if not isinstance(flow, dict):
        return None
    out: dict[str, Any] = {}
    for side, ip_keys, port_keys in (
        ("src_endpoint", ("src", "src_ip", "saddr"), ("sport", "src_port")),
        ("dst_endpoint", ("dst", "dst_ip", "daddr"), ("dport", "dst_port")),
    ):
        endpoint: dict[str, Any] = {}
        ip = next((v for v in (as_ip(flow.get(k)) for k in ip_keys) if v), None)
        port = next((p for p in (integer(flow.get(k)) for k in port_keys if k in flow) if p is not None), None)
        if ip:
            endpoint["ip"] = ip
        if port is not None and 0 <= port <= 65535:
            endpoint["port"] = port
        if ip:  # OCSF's network endpoint needs an address (or a name): a port alone is not one
            out[side] = endpoint
    connection: dict[str, Any] = {}
    if flow.get("community_id"):
        connection["uid"] = one_line(flow["community_id"])  # 1.1 has no community_uid (1.4 does)
    proto = _protocol_num(flow.get("proto")) if "proto" in flow else None
    if proto is not None:
        connection["protocol_num"] = proto
    if connection:
        # required; the evidence does not say whether the peer is inside the home networks
        out["connection_info"] = {**connection, "direction_id": 0, "direction": "Unknown"}
    return out or None


_PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132}


def _protocol_num(value: object) -> int | None:
    """An IP protocol number from the evidence's name ('tcp') or number."""
    if isinstance(value, str) and value.lower() in _PROTOCOL_NUMBERS:
        return _PROTOCOL_NUMBERS[value.lower()]
    number = integer(value)
    return number if number is not None and 0 <= number <= 255 else None


def ocsf_json(event: IncidentEvent) -> str:
    """The OCSF finding as one line of JSON."""
    return _dumps(to_ocsf(event))


# --------------------------------------------------------------------------------------
# RFC 5424 syslog
# --------------------------------------------------------------------------------------


def sd_escape(value: object) -> str:
    """RFC 5424 PARAM-VALUE: '"', '\\' and ']' escaped; newlines become spaces."""
    return one_line(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: object, max_chars: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or the NILVALUE '-'."""
    text = re.sub(r"[^\x21-\x7e]", "_", one_line(value, max_chars))
    return text or "-"


def syslog_pri(event: IncidentEvent, facility: str = "local5") -> int:
    """PRI = facility * 8 + severity (critical 2 .. low 5; resolutions are notices)."""
    if facility not in FACILITIES:
        raise ValueError(f"unknown syslog facility {facility!r}")
    if event.action == "resolved":
        severity = _SYSLOG_RESOLVED
    else:
        severity = _SYSLOG_SEVERITY[severity_level(event)]
    return FACILITIES[facility] * 8 + severity


def structured_data(event: IncidentEvent) -> str:
    """netad's SD-ELEMENT: what a syslog pipeline can route on without parsing the MSG."""
    params = [
        ("incidentId", event.incident_id),
        ("eventId", event.event_id),
        ("action", event.action),
        ("entity", event.entity),
        ("entityClass", event.entity_class),
        ("score", finite(event.score, 6)),
        ("threshold", finite(event.threshold, 6)),
        ("severity", event.severity),
        ("category", event.category),
        ("ruleId", event.rule_id),
    ]
    body = " ".join(f'{name}="{sd_escape("" if v is None else v)}"' for name, v in params)
    return f"[{SD_ID} {body}]"


def to_rfc5424(
    event: IncidentEvent,
    *,
    msg_format: str = "ecs",
    facility: str = "local5",
    hostname: str | None = None,
    procid: str | None = None,
    max_bytes: int | None = None,
) -> str:
    """One RFC 5424 message (no transport framing). HOSTNAME is the observer's hostname,
    else `hostname`, else '-'; the MSG is `msg_format` (ecs, cef or ocsf), sent without a
    BOM, as RFC 5424 allows and most receivers expect.

    With `max_bytes` (a receiver's limit: rsyslog truncates at its maxMessageSize, 8 KiB by
    default, which would cut the JSON in half), the evidence lists are shortened until the
    message fits; ids, scores and the summary are always kept.
    """
    if msg_format not in MSG_FORMATS:
        raise ValueError(f"unknown syslog message format {msg_format!r}")
    host = _header_token(event.observer.get("hostname") or hostname or "-", 255)
    header = (
        f"<{syslog_pri(event, facility)}>1 {ns_to_iso(event.emitted_ns)} {host} {APP_NAME} "
        f"{_header_token(procid or '-', 128)} {MSGID}"
    )
    encoder = {"ecs": ecs_json, "cef": to_cef, "ocsf": ocsf_json}[msg_format]
    for items in (MAX_LIST_ITEMS, 3, 1, 0):
        message = f"{header} {structured_data(event)} {encoder(_trimmed(event, items))}"
        if max_bytes is None or len(message.encode("utf-8")) <= max_bytes:
            break
    return message


def _trimmed(event: IncidentEvent, items: int) -> IncidentEvent:
    """The event with at most `items` features, peers, ports and flows."""
    if items >= MAX_LIST_ITEMS:
        return event
    evidence = event.evidence
    return dataclasses.replace(
        event,
        top_features=event.top_features[: max(items, 1)],  # the summary names the first one
        evidence=WindowEvidence(
            top_peers=evidence.top_peers[:items],
            top_ports=evidence.top_ports[:items],
            top_flows=evidence.top_flows[:items],
        ),
    )


def encode(event: IncidentEvent, fmt: str, **syslog_options: Any) -> str:
    """The event in format `fmt` (one of FORMATS) as one line of text, without a newline.
    `syslog_options` (msg_format, facility, hostname, procid, max_bytes) apply to rfc5424
    only."""
    if fmt == "ecs":
        return ecs_json(event)
    if fmt == "cef":
        return to_cef(event)
    if fmt == "ocsf":
        return ocsf_json(event)
    if fmt == "rfc5424":
        return to_rfc5424(event, **syslog_options)
    if fmt == "console":
        return to_console(event)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
