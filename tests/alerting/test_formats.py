"""Formats: golden files per input and format, the shapes SIEMs rely on, and hostile input.

Golden files live in tests/alerting/golden/, named <input>.<format>; regenerate them with
NETAD_TEST_UPDATE_GOLDEN=1 after a deliberate change, and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.alerting import attack, formats
from detector.alerting.classify import CATEGORIES
from detector.contracts import FeatureContribution, IncidentEvent, WindowEvidence
from tests.alerting._schemas import validate_ecs, validate_ocsf

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NETAD_TEST_UPDATE_GOLDEN") == "1"

# ---------------------------------------------------------------- parsers used by the tests


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A strict CEF:0 parser: the 7 header fields and the extension, unescaped."""
    assert line.startswith("CEF:")
    header: list[str] = []
    current: list[str] = []
    i = 0
    while len(header) < 7:
        char = line[i]
        if char == "\\":
            assert line[i + 1] in "\\|", f"bad header escape {line[i:i + 2]!r}"
            current.append(line[i + 1])
            i += 2
        elif char == "|":
            header.append("".join(current))
            current = []
            i += 1
        else:
            current.append(char)
            i += 1
    return header, parse_cef_extension(line[i:])


def parse_cef_extension(text: str) -> dict[str, str]:
    tokens: list[tuple[str, bool]] = []  # (character, was escaped)
    i = 0
    while i < len(text):
        if text[i] == "\\":
            assert i + 1 < len(text) and text[i + 1] in "\\=nr", f"bad extension escape at {i}"
            tokens.append(({"n": "\n", "r": "\r"}.get(text[i + 1], text[i + 1]), True))
            i += 2
        else:
            tokens.append((text[i], False))
            i += 1
    # every unescaped '=' ends a key: the run of word characters before it, after a space
    keys: list[tuple[int, int]] = []  # (key start, index of '=')
    for index, (char, escaped) in enumerate(tokens):
        if char == "=" and not escaped:
            start = index
            while start > 0 and not tokens[start - 1][1] and re.match(r"[A-Za-z0-9_]", tokens[start - 1][0]):
                start -= 1
            assert start < index, "'=' without a key"
            assert start == 0 or tokens[start - 1] == (" ", False), "key not preceded by a space"
            keys.append((start, index))
    fields: dict[str, str] = {}
    for n, (start, eq) in enumerate(keys):
        end = keys[n + 1][0] - 1 if n + 1 < len(keys) else len(tokens)
        key = "".join(c for c, _ in tokens[start:eq])
        assert key not in fields, f"duplicate key {key}"
        fields[key] = "".join(c for c, _ in tokens[eq + 1 : end])
    return fields


_HEADER = re.compile(r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_rfc5424(line: str) -> tuple[list[str], dict[str, dict[str, str]], str]:
    """A strict RFC 5424 parser: header fields, structured data, MSG."""
    match = _HEADER.match(line)
    assert match, line[:120]
    header = list(match.groups())
    assert all(re.fullmatch(r"[\x21-\x7e]+", h) for h in header)
    rest = line[match.end() :]
    elements: dict[str, dict[str, str]] = {}
    i = 0
    assert rest[0] == "[", "netad always sends structured data"
    while i < len(rest) and rest[i] == "[":
        sd_id = re.match(r"[^ =\]\"]+", rest[i + 1 :])
        assert sd_id and len(sd_id.group()) <= 32
        i += 1 + len(sd_id.group())
        params: dict[str, str] = {}
        while rest[i] == " ":
            name = re.match(r"[^ =\]\"]{1,32}", rest[i + 1 :])
            assert name
            i += 1 + len(name.group())
            assert rest[i : i + 2] == '="'
            i += 2
            value: list[str] = []
            while rest[i] != '"':
                assert rest[i] != "]", "unescaped ] in PARAM-VALUE"
                if rest[i] == "\\":
                    assert rest[i + 1] in '"\\]'
                    value.append(rest[i + 1])
                    i += 2
                else:
                    value.append(rest[i])
                    i += 1
            params[name.group()] = "".join(value)
            i += 1
        assert rest[i] == "]"
        elements[sd_id.group()] = params
        i += 1
    assert rest[i] == " "
    return header, elements, rest[i + 1 :]


# ---------------------------------------------------------------- golden files


Factory = Callable[..., IncidentEvent]
# One input per category, each with the roles the classifier gives it (tests/alerting/test_classify.py):
# victims on the destination side, attackers on the source side.
INPUT_NAMES = ["beacon_opened", "bruteforce_target_opened", "exfil_opened", "link_flood_updated",
               "newservice_target_opened", "portscan_opened", "portscan_resolved", "sweep_opened",
               "synflood_target_opened", "unusual_opened"]


def _features(*rows: tuple[str, str, float, float, float]) -> list[FeatureContribution]:
    return [FeatureContribution(*row) for row in rows]


def _inputs(make_event: Factory) -> dict[str, IncidentEvent]:
    flood = make_event(
        7,
        incident_id="inc-20240601-global-01",
        action="updated",
        entity="global",
        entity_class="global",
        severity="critical",
        severity_score=95,
        category="amplification",
        windows=4,
        top_features=[FeatureContribution("bytes_in", "bytes", 0.83, 1.25e9, 3.2e6)],
        evidence=WindowEvidence(
            top_peers=[{"ip": "2001:db8::7", "packets": 10_000, "bytes": 1_500_000}],
            top_ports=[{"port": 53, "proto": 17, "packets": 10_000}],
            top_flows=[],
        ),
        role="target", originator="2001:db8::7", target="2001:db8:20::6", techniques=["T1498.002"],
    )
    brute_force = make_event(
        1, incident_id="inc-20240601-10.20.0.22-b2c1", entity="10.20.0.22", category="brute-force",
        top_features=_features(("syn_in", "packets", 0.3882, 18.5, 0.864), ("flows_in", "flows", 0.2849, 18.667, 1.35)),
        evidence=WindowEvidence(
            top_peers=[{"ip": "203.0.113.66", "packets": 2499, "bytes": 557960}],
            top_ports=[{"port": 22, "proto": "tcp", "packets": 1413}],
            top_flows=[{"community_id": "1:Wz1TSWGvS2T1SoYp0MMvOE8/vTg=", "src": "203.0.113.66", "dst": "10.20.0.22",
                        "sport": 63604, "dport": 22, "proto": "tcp", "packets": 30}],
        ),
        role="target", originator="203.0.113.66", target="10.20.0.22", techniques=["T1110"],
    )
    syn_flood = make_event(
        2, incident_id="inc-20240601-10.20.0.6-5f0e", entity="10.20.0.6", category="flood", severity="critical",
        severity_score=95, top_features=_features(("syn_in", "packets", 0.3712, 19620.0, 0.557),
                                                  ("peers_in", "hosts", 0.1219, 19621.334, 3.489)),
        evidence=WindowEvidence(top_peers=[{"ip": "10.20.1.26", "packets": 136, "bytes": 128344}],
                                top_ports=[{"port": 443, "proto": "tcp", "packets": 117877}]),
        role="target", originator="", target="10.20.0.6", techniques=["T1498", "T1499"],
    )
    sweep = make_event(
        3, incident_id="inc-20240601-10.20.1.40-0a9d", entity="10.20.1.40", category="sweep",
        top_features=_features(("peers_out", "hosts", 0.6, 200.0, 3.0), ("syn_out", "packets", 0.2, 210.0, 2.0)),
        evidence=WindowEvidence(top_peers=[{"ip": "10.20.2.1", "packets": 2, "bytes": 120},
                                           {"ip": "10.20.2.2", "packets": 2, "bytes": 120}]),
        role="originator", originator="10.20.1.40", target="", techniques=["T1018", "T1046"],
    )
    beacon = make_event(
        4, incident_id="inc-20240601-10.20.1.12-77aa", entity="10.20.1.12", category="beaconing", severity="medium",
        severity_score=50, top_features=_features(("young_peer_returns", "returns", 0.7, 9.0, 1.0)),
        evidence=WindowEvidence(top_peers=[{"ip": "198.51.100.23", "packets": 12, "bytes": 1500}]),
        role="originator", originator="10.20.1.12", target="198.51.100.23", techniques=["T1071"],
    )
    exfil = make_event(
        5, incident_id="inc-20240601-10.20.1.19-e41f", entity="10.20.1.19", category="exfiltration-like",
        top_features=_features(("bytes_out", "bytes", 0.8, 9.0e7, 1e5)),
        evidence=WindowEvidence(top_peers=[{"ip": "203.0.113.50", "packets": 61000, "bytes": 91000000}]),
        role="originator", originator="10.20.1.19", target="203.0.113.50", techniques=["T1041", "T1048"],
    )
    new_service = make_event(
        6, incident_id="inc-20240601-10.20.0.9-3c3c", entity="10.20.0.9", category="new-service", severity="medium",
        severity_score=50, top_features=_features(("new_ports", "ports", 0.5, 2.0, 0.1), ("flows_in", "flows", 0.3, 6.0, 1.0)),
        score=4.2, window_score=2.6,  # flagged on what its run of windows added up: this one alone is under 3.1
        evidence=WindowEvidence(top_peers=[{"ip": "10.20.1.5", "packets": 90, "bytes": 12000}],
                                top_ports=[{"port": 4444, "proto": "tcp", "packets": 90}]),
        role="target", originator="10.20.1.5", target="10.20.0.9", techniques=["T1021"],
    )
    unusual = make_event(
        8, incident_id="inc-20240601-10.20.1.15-9b10", entity="10.20.1.15", category="unusual-for-host", severity="low",
        severity_score=25, top_features=_features(("new_peers", "hosts", 0.5, 12.0, 0.5)),
        evidence=WindowEvidence(top_peers=[{"ip": "198.51.100.7", "packets": 50, "bytes": 20000},
                                           {"ip": "198.51.100.8", "packets": 45, "bytes": 18000}]),
        role="originator", originator="10.20.1.15", target="", techniques=[],
    )
    return {
        "portscan_opened": make_event(0),
        "portscan_resolved": make_event(3, action="resolved", windows=5, severity="medium", severity_score=55),
        "link_flood_updated": flood,
        "bruteforce_target_opened": brute_force,
        "synflood_target_opened": syn_flood,
        "sweep_opened": sweep,
        "beacon_opened": beacon,
        "exfil_opened": exfil,
        "newservice_target_opened": new_service,
        "unusual_opened": unusual,
    }


_GOLDEN_FORMATS = {
    "ecs.json": lambda e: formats.encode(e, "ecs"),
    "cef": lambda e: formats.encode(e, "cef"),
    "ocsf.json": lambda e: formats.encode(e, "ocsf"),
    "rfc5424": lambda e: formats.to_rfc5424(e, procid="4242"),
    "cef.rfc5424": lambda e: formats.to_rfc5424(e, msg_format="cef", facility="local0", procid="4242"),
}


@pytest.mark.parametrize("suffix", sorted(_GOLDEN_FORMATS))
@pytest.mark.parametrize("input_name", INPUT_NAMES)
def test_golden(input_name: str, suffix: str, make_event: Factory) -> None:
    """Each format's output for a fixed event is exactly the reviewed golden file."""
    actual = _GOLDEN_FORMATS[suffix](_inputs(make_event)[input_name]) + "\n"
    path = GOLDEN / f"{input_name}.{suffix}"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with NETAD_TEST_UPDATE_GOLDEN=1 and review it"
    assert path.read_text(encoding="utf-8") == actual


# ---------------------------------------------------------------- shapes


def test_ecs_shape(make_event: Factory) -> None:
    """The ECS document has the fields DESIGN.md promises, with the values SIEM rules use."""
    doc = json.loads(formats.ecs_json(make_event(0)))
    assert doc["@timestamp"] == "2024-06-01T12:01:00.000Z"
    assert doc["event"]["kind"] == "alert"
    assert doc["event"]["category"] == ["network", "intrusion_detection"]
    assert doc["event"]["type"] == ["info"]
    assert doc["event"]["action"] == "incident-opened"
    assert doc["event"]["id"] == "evt-00000-0b6f2c"
    assert (doc["event"]["start"], doc["event"]["end"]) == ("2024-06-01T12:00:00.000Z", "2024-06-01T12:01:00.000Z")
    assert doc["event"]["severity"] == 80
    assert doc["source"]["ip"] == "10.20.1.33"  # the scanner: the entity, originator
    assert doc["destination"]["ip"] == "10.20.1.1"  # the scanned host: its counterpart
    assert doc["related"]["ip"] == ["10.20.1.33", "10.20.1.1", "10.20.1.7"]
    assert doc["network"]["community_id"] == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="  # ECS: one value, the top flow's
    assert doc["rule"] == {"id": "netad.host.anomaly", "name": "Anomalous host behaviour", "category": "scan"}
    assert doc["threat"] == {"framework": "MITRE ATT&CK",
                             "technique": {"id": ["T1046"], "name": ["Network Service Discovery"]},
                             "tactic": {"id": ["TA0007"], "name": ["Discovery"]}}
    assert {"hostname": "sensor-1", "type": "ids", "vendor": "netad", "product": "netad"}.items() <= doc["observer"].items()
    assert doc["message"] == ("netad: host 10.20.1.33 anomalous (scan originator, towards 10.20.1.1): "
                              "distinct_dst_ports 812 vs 3.04 expected")
    assert doc["ecs"]["version"] == formats.ECS_VERSION
    netad = doc["netad"]
    assert netad["incident_id"] == "inc-20240601-10.20.1.33-7f3a"
    assert netad["role"] == "originator"
    assert netad["top_features"][0] == {
        "name": "distinct_dst_ports", "unit": "ports", "share": 0.7112, "observed": 812.0, "expected": 3.04,
    }
    assert set(netad["evidence"]) == {"top_peers", "top_ports", "top_flows"}


def test_ecs_ip_fields_hold_only_addresses(make_event: Factory) -> None:
    """Elasticsearch rejects a document whose ip field is not an address: non-IP entities and
    peers stay under netad.* only, and a link without dominant hosts has no source or
    destination."""
    event = make_event(0, entity="not-an-ip", originator="not-an-ip", target="x\ny",
                       evidence=WindowEvidence(top_peers=[{"ip": "x\ny"}, {"ip": "::1"}]))
    doc = formats.to_ecs(event)
    assert "source" not in doc and "destination" not in doc
    assert doc["related"]["ip"] == ["::1"]
    assert doc["netad"]["entity"] == "not-an-ip"
    link = formats.to_ecs(make_event(0, entity="global", entity_class="global", originator="", target=""))
    assert "source" not in link and "destination" not in link


def test_a_peer_s_registered_domain_goes_where_ecs_keeps_it(make_event: Factory) -> None:
    """The domain the DNS answered a peer's address for (the evidence's `domain`) is the
    peer end's `registered_domain` and one of `related.hosts` in ECS, its
    `destinationDnsDomain` (or `sourceDnsDomain`) in CEF, the endpoint's `domain` in OCSF;
    an address no answer named has none, and text that is not a domain stays one line."""
    event = make_event(0, entity="10.20.1.33", originator="10.20.1.33", target="52.51.133.171", evidence=WindowEvidence(
        top_peers=[{"ip": "52.51.133.171", "domain": "philips.com"}, {"ip": "10.20.1.7"},
                   {"ip": "52.212.88.21", "domain": "philips.com"}, {"ip": "2.16.60.82", "domain": "meethue.com\nx"}]))
    doc = formats.to_ecs(event)
    assert {"ip": "52.51.133.171", "registered_domain": "philips.com"} == doc["destination"]
    assert {"ip": "10.20.1.33"} == doc["source"]
    assert ["philips.com", "meethue.com x"] == doc["related"]["hosts"]
    assert [] == validate_ecs(doc)
    assert "hosts" not in formats.to_ecs(make_event(0)).get("related", {})
    _, ext = parse_cef(formats.to_cef(event))  # CEF's own key for it
    assert ("52.51.133.171", "philips.com") == (ext["dst"], ext["destinationDnsDomain"]) and "sourceDnsDomain" not in ext
    ocsf = formats.to_ocsf(event)  # and OCSF's network endpoint's
    assert {"ip": "52.51.133.171", "domain": "philips.com"} == ocsf["evidences"][0]["dst_endpoint"]
    assert [] == validate_ocsf(ocsf)


def test_target_is_the_destination_and_its_attacker_the_source(make_event: Factory) -> None:
    """A brute-force victim is the entity; it goes where SIEM content looks for victims (ECS
    destination, CEF dst, the OCSF affected device) and its attacker where it looks for
    attackers (source, src, the evidence's src_endpoint); related.ip keeps both."""
    event = _inputs(make_event)["bruteforce_target_opened"]
    doc = formats.to_ecs(event)
    assert ({"ip": "203.0.113.66"}, {"ip": "10.20.0.22"}) == (doc["source"], doc["destination"])
    assert ["10.20.0.22", "203.0.113.66"] == doc["related"]["ip"]
    assert "netad: host 10.20.0.22 anomalous (brute-force target, from 203.0.113.66)" in doc["message"]
    _, ext = parse_cef(formats.to_cef(event))
    assert ("203.0.113.66", "10.20.0.22", "target") == (ext["src"], ext["dst"], ext["flexString2"])
    ocsf = formats.to_ocsf(event)
    assert {"ip": "10.20.0.22", "type_id": 0, "type": "Unknown"} == ocsf["device"]
    assert [{"uid": "10.20.0.22", "type": "IP Address"}] == ocsf["resources"]
    assert {"src_endpoint": {"ip": "203.0.113.66"}, "dst_endpoint": {"ip": "10.20.0.22"}} == ocsf["evidences"][0]


def test_the_sensor_is_the_observer_not_the_affected_device(make_event: Factory) -> None:
    """The sensor's host is ECS observer.hostname and an OCSF logger, never OCSF `device`."""
    event = make_event(0)
    ocsf = formats.to_ocsf(event)
    assert "10.20.1.33" == ocsf["device"]["ip"] and "hostname" not in ocsf["device"]
    assert [{"name": "sensor-1", "device": {"hostname": "sensor-1", "interface_name": "eth1", "type_id": 0, "type": "Unknown"},
             "product": {"name": "netad", "vendor_name": "netad", "version": formats.__version__}}] == ocsf["metadata"]["loggers"]
    assert "sensor-1" == formats.to_ecs(event)["observer"]["hostname"]


def test_link_names_its_dominant_hosts(make_event: Factory) -> None:
    """A link-wide reflection flood: the reflector as source, the flooded host as destination
    and as the OCSF affected device (the link is the target); IPv6 in CEF's c6a2/c6a3."""
    event = _inputs(make_event)["link_flood_updated"]
    doc = formats.to_ecs(event)
    assert ("2001:db8::7", "2001:db8:20::6") == (doc["source"]["ip"], doc["destination"]["ip"])
    assert "netad: link still anomalous (amplification, 2001:db8::7 -> 2001:db8:20::6; 4 windows)" in doc["message"]
    _, ext = parse_cef(formats.to_cef(event))
    assert ("2001:db8::7", "2001:db8:20::6") == (ext["c6a2"], ext["c6a3"])
    assert "2001:db8:20::6" == formats.to_ocsf(event)["device"]["ip"]


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_each_category_carries_its_attack_techniques(category: str, make_event: Factory) -> None:
    """ECS threat.*, OCSF finding_info.attacks and the CEF class id and extension name the
    category's ATT&CK techniques and tactics; a category without one has none of them."""
    ids = list(CATEGORIES[category].techniques)
    event = make_event(0, category=category, techniques=ids)
    doc = formats.to_ecs(event)
    attacks = formats.to_ocsf(event)["finding_info"].get("attacks", [])
    header, ext = parse_cef(formats.to_cef(event))
    assert (f"netad:{category}", CATEGORIES[category].title) == (header[4], header[5])
    if not ids:
        assert ("threat" not in doc, [], "flexString1" not in ext) == (True, attacks, True)
        return
    parents = list(dict.fromkeys(i.split(".")[0] for i in ids))
    assert "MITRE ATT&CK" == doc["threat"]["framework"]
    assert parents == doc["threat"]["technique"]["id"]
    assert [attack.TECHNIQUES[i].name for i in parents] == doc["threat"]["technique"]["name"]
    tactics = list(dict.fromkeys(t for i in ids for t in attack.TECHNIQUES[i].tactics))
    assert tactics == doc["threat"]["tactic"]["id"]
    assert ids == [a.get("sub_technique", a["technique"])["uid"] for a in attacks]
    assert all(a["version"] == attack.ATTACK_VERSION and a["tactic"]["name"] for a in attacks)
    assert ",".join(ids) == ext["flexString1"]


def test_sub_technique_and_unknown_ids(make_event: Factory) -> None:
    """A sub-technique sits under its technique; an id netad does not know is written by id
    alone (with its parent's tactic when the parent is known); a malformed one is dropped."""
    event = make_event(0, techniques=["T1498.002", "T1059", "T1498.999", "not-an-id"])
    threat = formats.to_ecs(event)["threat"]
    assert {"id": ["T1498", "T1059"]} == {k: v for k, v in threat["technique"].items() if k != "subtechnique"}
    assert {"id": ["T1498.002", "T1498.999"]} == threat["technique"]["subtechnique"]
    assert {"id": ["TA0040"], "name": ["Impact"]} == threat["tactic"]
    attacks = formats.to_ocsf(event)["finding_info"]["attacks"]
    assert {"technique": {"uid": "T1498", "name": "Network Denial of Service"}, "version": attack.ATTACK_VERSION,
            "sub_technique": {"uid": "T1498.002", "name": "Reflection Amplification"},
            "tactic": {"uid": "TA0040", "name": "Impact"}} == attacks[0]
    assert {"technique": {"uid": "T1059"}, "version": attack.ATTACK_VERSION} == attacks[1]


def test_event_from_before_roles_keeps_its_entity_as_source(make_event: Factory) -> None:
    """An event spooled by an older netad (no role) is written as that netad wrote it."""
    event = make_event(0, role="", originator="", target="", techniques=[])
    doc = formats.to_ecs(event)
    assert "10.20.1.33" == doc["source"]["ip"] and "destination" not in doc and "threat" not in doc


@pytest.mark.parametrize(("action", "activity_id", "status_id"), [("opened", 1, 1), ("updated", 2, 2), ("resolved", 3, 4)])
def test_ocsf_detection_finding(action: str, activity_id: int, status_id: int, make_event: Factory) -> None:
    """OCSF: a Detection Finding whose activity follows the incident's lifecycle."""
    doc = formats.to_ocsf(make_event(0, action=action))  # type: ignore[arg-type]
    assert (doc["class_uid"], doc["category_uid"]) == (2004, 2)
    assert (doc["activity_id"], doc["status_id"]) == (activity_id, status_id)
    assert doc["type_uid"] == 200400 + activity_id
    assert doc["severity_id"] == 4  # high
    assert doc["finding_info"]["uid"] == "inc-20240601-10.20.1.33-7f3a"
    assert doc["metadata"]["uid"] == "evt-00000-0b6f2c"
    assert doc["time"] == 1_717_243_260_000


def test_cef_fields(make_event: Factory) -> None:
    """CEF: the header names the category (class id and name) and severity; the extension
    carries ids, times, the two sides and the ATT&CK techniques."""
    header, ext = parse_cef(formats.to_cef(make_event(0)))
    assert header == ["CEF:0", "netad", "netad", formats.__version__, "netad:scan", "Port scan", "8"]
    assert ext["externalId"] == "evt-00000-0b6f2c"
    assert (ext["cs1Label"], ext["cs1"]) == ("incidentId", "inc-20240601-10.20.1.33-7f3a")
    assert (ext["src"], ext["dst"]) == ("10.20.1.33", "10.20.1.1")
    assert (ext["flexString1Label"], ext["flexString1"]) == ("attackTechniques", "T1046")
    assert ext["rt"] == "1717243260000"
    assert ext["act"] == "incident-opened"


@pytest.mark.parametrize(
    ("severity", "action", "facility", "pri"),
    [("critical", "opened", "local5", 170), ("high", "updated", "local5", 171), ("medium", "opened", "local0", 132),
     ("low", "opened", "local5", 173), ("critical", "resolved", "local5", 173)],
)
def test_rfc5424_pri(severity: str, action: str, facility: str, pri: int, make_event: Factory) -> None:
    """PRI is facility*8 + severity; a resolution is a notice whatever the incident was."""
    line = formats.to_rfc5424(make_event(0, severity=severity, action=action), facility=facility)  # type: ignore[arg-type]
    header, sd, msg = parse_rfc5424(line)
    assert int(header[0]) == pri
    assert header[1:] == ["2024-06-01T12:01:00.000Z", "sensor-1", "netad", "-", "incident"]
    assert sd[formats.SD_ID]["eventId"] == "evt-00000-0b6f2c"
    assert json.loads(msg)["event"]["id"] == "evt-00000-0b6f2c"


def test_rfc5424_unknown_facility_is_refused(make_event: Factory) -> None:
    with pytest.raises(ValueError, match="facility"):
        formats.to_rfc5424(make_event(0), facility="local9")


# ---------------------------------------------------------------- hostile input

_SPECIALS = ["\n", "\r", "\r\n", "|", "=", "\\", "]", "[", '"', " ", "\t", "\x00", "\x1b[31m", "\u2028", "\x85",
             "\u202e", "CEF:0|", " act=x", "\\n", "é", "🛰"]


def _hostile_text() -> st.SearchStrategy[str]:
    pieces = st.one_of(
        st.sampled_from(_SPECIALS),
        st.text(max_size=12),
        st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
        st.integers(300, 3000).map(lambda n: "A" * n),
    )
    return st.lists(pieces, max_size=6).map("".join)


@st.composite
def hostile_fields(draw: st.DrawFn) -> dict[str, Any]:
    text = _hostile_text()
    return dict(
        event_id=draw(text),
        incident_id=draw(text),
        entity=draw(st.one_of(text, st.just("10.0.0.1"), st.just("fe80::1%eth0\n"))),
        entity_class=draw(st.sampled_from(["host", "global", "h|o=s\nt"])),
        category=draw(text),
        rule_id=draw(text),
        rule_name=draw(text),
        severity=draw(st.sampled_from(["low", "medium", "high", "critical", "bogus\n"])),
        severity_score=draw(st.integers(-5, 500)),
        score=draw(st.floats(allow_nan=True, allow_infinity=True)),
        model_version=draw(text),
        top_features=[FeatureContribution(draw(text), draw(text), 0.5, draw(st.floats()), 1.0)],
        evidence=WindowEvidence(
            top_peers=[{"ip": draw(text), "packets": 1}, {draw(text): draw(text)}],
            top_ports=[{"port": draw(text)}],
            top_flows=[{"community_id": draw(text), "src": draw(text), "dport": draw(text)}],
        ),
        observer={"hostname": draw(text), draw(text): draw(text)},
        role=draw(st.one_of(st.sampled_from(["originator", "target", ""]), text)),
        originator=draw(st.one_of(text, st.just("10.0.0.2"), st.just("2001:db8::2"))),
        target=draw(st.one_of(text, st.just("10.0.0.3"))),
        techniques=draw(st.lists(st.one_of(text, st.sampled_from(["T1046", "T1498.002", "T9999"])), max_size=4)),
    )


def _assert_one_clean_line(text: str) -> None:
    assert "\n" not in text and "\r" not in text
    assert len(text.splitlines()) == 1  # also no \x0b, \x1c-\x1e, \x85, \u2028, \u2029
    text.encode("utf-8")  # no lone surrogates
    assert len(text) < 64 * 1024


def _cef_expected(value: str, max_chars: int = formats.MAX_VALUE_CHARS) -> str:
    """What a CEF extension value reads back as: cleaned, tab as space, no trailing spaces."""
    return formats.clean_text(value, max_chars).replace("\t", " ").rstrip(" ")


# the only fixture these tests take is a pure factory, so sharing it between examples is fine
_HYPOTHESIS = settings(
    max_examples=int(os.environ.get("NETAD_TEST_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@_HYPOTHESIS
@given(hostile_fields())
def test_hostile_values_stay_inside_their_fields(make_event: Factory, fields: dict[str, Any]) -> None:
    """Whatever the network puts in an entity, peer or name: every format stays one valid
    line, the value reads back (cleaned) from the field it was put in, and the ECS and OCSF
    documents stay valid against the published schemas (tests/alerting/_schemas.py)."""
    event = make_event(0, **fields)
    ecs = formats.ecs_json(event)
    _assert_one_clean_line(ecs)
    doc = json.loads(ecs)
    assert [] == validate_ecs(doc)
    assert [] == validate_ocsf(json.loads(formats.ocsf_json(event)))
    assert doc["event"].get("id", "") == formats.clean_text(event.event_id)  # ECS: an empty value is left out
    assert doc["netad"]["entity"] == formats.clean_text(event.entity)

    ocsf = formats.ocsf_json(event)
    _assert_one_clean_line(ocsf)
    assert json.loads(ocsf)["finding_info"]["uid"] == formats.clean_text(event.incident_id)

    cef = formats.to_cef(event)
    _assert_one_clean_line(cef)
    header, ext = parse_cef(cef)
    assert header[4] == formats.one_line(formats.cef_class_id(event))
    assert header[5] == formats.one_line(formats.cef_name(event))
    assert 0 <= int(header[6]) <= 10
    for key, value in [("externalId", event.event_id), ("cs1", event.incident_id), ("cs2", event.entity),
                       ("cat", event.category), ("cs6", event.model_version)]:
        expected = _cef_expected(value)
        assert ext.get(key, "") == expected

    for msg_format in formats.MSG_FORMATS:
        line = formats.to_rfc5424(event, msg_format=msg_format, hostname="h\nost", procid="1 2")
        _assert_one_clean_line(line)
        _, sd, msg = parse_rfc5424(line)
        params = sd[formats.SD_ID]
        assert params["eventId"] == formats.one_line(event.event_id)
        assert params["entity"] == formats.one_line(event.entity)
        assert params["category"] == formats.one_line(event.category)
        if msg_format == "cef":
            assert parse_cef(msg)[1].get("externalId", "") == _cef_expected(event.event_id)
        else:
            assert json.loads(msg)


@_HYPOTHESIS
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp", "Cf"]), max_size=200))
def test_plain_values_round_trip_exactly(make_event: Factory, value: str) -> None:
    """Printable text within the length limit comes back unchanged from every format."""
    value = value.strip(" ")
    event = make_event(0, entity=value, rule_name=value or "x", event_id=value, category="operators-own")
    assert json.loads(formats.ecs_json(event))["netad"]["entity"] == value
    header, ext = parse_cef(formats.to_cef(event))
    assert header[5] == (value or "x")  # an operator's own category is named by the rule
    assert ext.get("cs2", "") == value
    _, sd, _ = parse_rfc5424(formats.to_rfc5424(event))
    assert sd[formats.SD_ID]["entity"] == value


def test_long_values_are_truncated(make_event: Factory) -> None:
    """A 1 MB entity costs at most MAX_VALUE_CHARS per field, with a visible ellipsis."""
    event = make_event(0, entity="A" * 1_000_000)
    doc: dict[str, Any] = formats.to_ecs(event)
    assert len(doc["netad"]["entity"]) == formats.MAX_VALUE_CHARS
    assert doc["netad"]["entity"].endswith("\u2026")
    for fmt in formats.FORMATS:
        assert len(formats.encode(event, fmt)) < 16 * 1024


def test_non_finite_numbers_become_null(make_event: Factory) -> None:
    """JSON has no NaN: a NaN score is written as null, and the document still parses strictly."""
    event = make_event(0, score=float("nan"), threshold=float("inf"))
    doc = json.loads(formats.ecs_json(event), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc["netad"]["score"] is None and doc["netad"]["threshold"] is None


def test_non_utf8_bytes_are_replaced(make_event: Factory) -> None:
    """Bytes that were not UTF-8 (decoded with surrogateescape) become U+FFFD, not an error."""
    entity = b"host-\xff\xfe".decode("utf-8", "surrogateescape")
    doc = json.loads(formats.ecs_json(make_event(0, entity=entity)))
    assert doc["netad"]["entity"] == "host-\ufffd\ufffd"


def test_rfc5424_fits_the_receivers_limit(make_event: Factory) -> None:
    """An event with maximal evidence is shortened to fit max_bytes (rsyslog's default 8 KiB
    would cut the JSON in half); ids, summary and the first feature are kept."""
    flows = [{"community_id": f"1:{'x' * 200}{i}", "src": "10.0.0.1", "dst": f"10.0.1.{i}", "note": "n" * 250}
             for i in range(10)]
    peers = [{"ip": f"10.0.1.{i}", "name": "p" * 250} for i in range(10)]
    event = make_event(0, evidence=WindowEvidence(top_peers=peers, top_flows=flows))
    assert len(formats.to_rfc5424(event).encode()) > 8192
    line = formats.to_rfc5424(event, max_bytes=8192)
    assert len(line.encode()) <= 8192
    _, sd, msg = parse_rfc5424(line)
    doc = json.loads(msg)
    assert doc["event"]["id"] == sd[formats.SD_ID]["eventId"] == event.event_id
    assert doc["message"] == formats.summary(event)
    assert 0 < len(doc["netad"]["evidence"]["top_flows"]) < 10
