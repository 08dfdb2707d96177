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

from detector.alerting import formats
from detector.contracts import FeatureContribution, IncidentEvent, WindowEvidence

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
INPUT_NAMES = ["link_flood_updated", "portscan_opened", "portscan_resolved"]


def _inputs(make_event: Factory) -> dict[str, IncidentEvent]:
    flood = make_event(
        7,
        incident_id="inc-20240601-global-01",
        action="updated",
        entity="global",
        entity_class="global",
        severity="critical",
        severity_score=95,
        category="flood-like",
        windows=4,
        top_features=[FeatureContribution("bytes_in", "bytes", 0.83, 1.25e9, 3.2e6)],
        evidence=WindowEvidence(
            top_peers=[{"ip": "2001:db8::7", "packets": 10_000, "bytes": 1_500_000}],
            top_ports=[{"port": 53, "proto": 17, "packets": 10_000}],
            top_flows=[],
        ),
    )
    return {
        "portscan_opened": make_event(0),
        "portscan_resolved": make_event(3, action="resolved", windows=5, severity="medium", severity_score=55),
        "link_flood_updated": flood,
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
    assert doc["source"]["ip"] == "10.20.1.33"
    assert doc["related"]["ip"] == ["10.20.1.33", "10.20.1.1", "10.20.1.7"]
    assert doc["network"]["community_id"] == ["1:LQU9qZlK+B5F3KDmev6m5PMibrg="]
    assert doc["rule"] == {"id": "netad.host.anomaly", "name": "Anomalous host behaviour", "category": "scan-like"}
    assert {"hostname": "sensor-1", "type": "ids", "vendor": "netad", "product": "netad"}.items() <= doc["observer"].items()
    assert doc["message"] == "netad: host 10.20.1.33 anomalous (scan-like): distinct_dst_ports 812 vs 3.04 expected"
    assert doc["ecs"]["version"] == formats.ECS_VERSION
    netad = doc["netad"]
    assert netad["incident_id"] == "inc-20240601-10.20.1.33-7f3a"
    assert netad["top_features"][0] == {
        "name": "distinct_dst_ports", "unit": "ports", "share": 0.7112, "observed": 812.0, "expected": 3.04,
    }
    assert set(netad["evidence"]) == {"top_peers", "top_ports", "top_flows"}


def test_ecs_ip_fields_hold_only_addresses(make_event: Factory) -> None:
    """Elasticsearch rejects a document whose ip field is not an address: non-IP entities and
    peers stay under netad.* only, and the link-wide entity has no source.ip."""
    event = make_event(0, entity="not-an-ip", evidence=WindowEvidence(top_peers=[{"ip": "x\ny"}, {"ip": "::1"}]))
    doc = formats.to_ecs(event)
    assert "source" not in doc
    assert doc["related"]["ip"] == ["::1"]
    assert doc["netad"]["entity"] == "not-an-ip"
    assert "source" not in formats.to_ecs(make_event(0, entity="global", entity_class="global"))


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
    """CEF: the header names the rule and severity; the extension carries ids and times."""
    header, ext = parse_cef(formats.to_cef(make_event(0)))
    assert header == ["CEF:0", "netad", "netad", formats.__version__, "netad.host.anomaly", "Anomalous host behaviour", "8"]
    assert ext["externalId"] == "evt-00000-0b6f2c"
    assert (ext["cs1Label"], ext["cs1"]) == ("incidentId", "inc-20240601-10.20.1.33-7f3a")
    assert ext["src"] == "10.20.1.33"
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
    line, and the value reads back (cleaned) from the field it was put in."""
    event = make_event(0, **fields)
    ecs = formats.ecs_json(event)
    _assert_one_clean_line(ecs)
    doc = json.loads(ecs)
    assert doc["event"]["id"] == formats.clean_text(event.event_id)
    assert doc["netad"]["entity"] == formats.clean_text(event.entity)

    ocsf = formats.ocsf_json(event)
    _assert_one_clean_line(ocsf)
    assert json.loads(ocsf)["finding_info"]["uid"] == formats.clean_text(event.incident_id)

    cef = formats.to_cef(event)
    _assert_one_clean_line(cef)
    header, ext = parse_cef(cef)
    assert header[4] == formats.one_line(event.rule_id or "anomaly")
    assert header[5] == formats.one_line(event.rule_name or event.category or "netad incident")
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
    event = make_event(0, entity=value, rule_name=value or "x", event_id=value)
    assert json.loads(formats.ecs_json(event))["netad"]["entity"] == value
    header, ext = parse_cef(formats.to_cef(event))
    assert header[5] == (value or "x")
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
