"""ECS and OCSF events against the published schemas (tests/alerting/schemas/, _schemas.py):
every category's event, and the validators themselves on the errors the issue found (so
that a validator that accepts everything fails here). Hostile values are validated in
tests/alerting/test_formats.py (test_hostile_values_stay_inside_their_fields, on the
examples it draws anyway), the events of a real replay in tests/service/test_end_to_end.py
(on the replay it already runs)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from detector.alerting import formats
from tests.alerting._schemas import ECS_VERSION, OCSF_VERSION, validate_ecs, validate_ocsf
from tests.alerting.test_formats import INPUT_NAMES, Factory, _inputs


def test_the_schemas_are_the_versions_netad_declares() -> None:
    """The vendored schemas are those of the versions written into the events."""
    assert (ECS_VERSION, OCSF_VERSION) == (formats.ECS_VERSION, formats.OCSF_VERSION)


@pytest.mark.parametrize("input_name", INPUT_NAMES)
def test_every_category_is_schema_valid(input_name: str, make_event: Factory) -> None:
    """The event of each category (scan, sweep, brute force, flood, amplification, beaconing,
    exfiltration-like, new service, unusual; opened, updated, resolved) is valid ECS and OCSF."""
    event = _inputs(make_event)[input_name]
    assert [] == validate_ecs(json.loads(formats.ecs_json(event)))
    assert [] == validate_ocsf(json.loads(formats.ocsf_json(event)))
    _, _, msg = formats.to_rfc5424(event, msg_format="ocsf").partition(" [")[2].partition("] ")
    assert [] == validate_ocsf(json.loads(msg))  # the same document inside syslog


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return mutate


# what the issue found in netad's events, and the other ways to get a schema wrong
_ECS_ERRORS = {
    "observer.labels is not ECS": (_set("observer.labels", {"exporter": "10.0.0.1"}), "observer.labels"),
    "community_id is one value": (_set("network.community_id", ["1:a", "1:b"]), "network.community_id: a list"),
    "empty interface name": (_set("observer.ingress.interface.name", ""), "observer.ingress.interface.name: empty"),
    "unknown field": (_set("source.hostname", "x"), "source.hostname: not an ECS"),
    "ip type": (_set("source.ip", "not-an-ip"), "source.ip: not an IP"),
    "long type": (_set("event.severity", "80"), "event.severity: long"),
    "allowed values": (_set("event.kind", "incident"), "event.kind: 'incident' is not one of"),
    "array field": (_set("event.category", "network"), "event.category: one value"),
    "other version": (_set("ecs.version", "8.17.0"), "ecs.version"),
}


@pytest.mark.parametrize("case", sorted(_ECS_ERRORS))
def test_the_ecs_validator_finds_each_kind_of_error(case: str, make_event: Factory) -> None:
    """A valid event with one known error gets exactly that error."""
    mutate, expected = _ECS_ERRORS[case]
    doc = json.loads(formats.ecs_json(make_event()))
    mutate(doc)
    errors = validate_ecs(doc)
    assert 1 == len(errors) and expected in errors[0], errors


_OCSF_ERRORS = {
    "community_uid is 1.4.0": (_set("evidences.1.connection_info.community_uid", "1:a"), "community_uid: not an attribute"),
    "direction_id is required": (_drop("evidences.1.connection_info.direction_id"), "direction_id: required"),
    "device needs the host profile": (_drop("metadata.profiles"), "device: belongs to profile 'host'"),
    "an endpoint names something": (_set("evidences.0.src_endpoint", {"port": 22}), "needs at least one of"),
    "enum": (_set("severity_id", 7), "severity_id: 7 is not in the enum"),
    "sibling caption": (_set("severity", "Severe"), "is not the caption of severity_id=4"),
    "port range": (_set("evidences.1.dst_endpoint.port", 70000), "outside [0, 65535]"),
    "integer type": (_set("time", "1717243260000"), "time: timestamp_t: long_t holds"),
    "array": (_set("finding_info.types", "scan"), "finding_info.types: one value"),
    "null": (_set("finding_info.desc", None), "finding_info.desc: null"),
    "type_uid": (lambda doc: doc.update(type_uid=200402, type_name="Detection Finding: Update"), "type_uid: 200402 is not"),
}


@pytest.mark.parametrize("case", sorted(_OCSF_ERRORS))
def test_the_ocsf_validator_finds_each_kind_of_error(case: str, make_event: Factory) -> None:
    """A valid finding with one known error gets exactly that error (community_uid and the
    missing direction_id are what a popular OCSF model package let through)."""
    mutate, expected = _OCSF_ERRORS[case]
    doc = copy.deepcopy(json.loads(formats.ocsf_json(make_event())))
    mutate(doc)
    errors = validate_ocsf(doc)
    assert 1 == len(errors) and expected in errors[0], errors
