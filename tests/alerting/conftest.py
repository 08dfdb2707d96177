"""Shared fixtures for the alerting tests: fixed, realistic incident events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from detector.contracts import FeatureContribution, IncidentEvent, WindowEvidence

T0_NS = 1_717_243_200_000_000_000  # 2024-06-01T12:00:00Z


def _make_event(i: int = 0, **overrides: Any) -> IncidentEvent:
    """A port-scan incident as the lifecycle would emit it: 10.20.1.33 scans 10.20.1.1 (the
    scanner is the entity, so the originator); `i` varies the ids and times."""
    event = IncidentEvent(
        event_id=f"evt-{i:05d}-0b6f2c",
        incident_id="inc-20240601-10.20.1.33-7f3a",
        action="opened",
        entity="10.20.1.33",
        entity_class="host",
        first_seen_ns=T0_NS,
        last_seen_ns=T0_NS + 60_000_000_000,
        emitted_ns=T0_NS + 60_000_000_000 + i * 1_000_000,
        severity="high",
        severity_score=80,
        category="scan",
        score=14.237519,
        threshold=3.1,
        windows=1,
        top_features=[
            FeatureContribution("distinct_dst_ports", "ports", 0.7112, 812.0, 3.04),
            FeatureContribution("syn_no_ack", "packets", 0.1804, 790.5, 1.2),
            FeatureContribution("new_peers", "hosts", 0.052, 14.0, 0.8),
        ],
        evidence=WindowEvidence(
            top_peers=[
                {"ip": "10.20.1.1", "packets": 812, "bytes": 48720},
                {"ip": "10.20.1.7", "packets": 40, "bytes": 2400},
            ],
            top_ports=[{"port": 22, "proto": 6, "packets": 3}, {"port": 443, "proto": 6, "packets": 2}],
            top_flows=[
                {"community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "src": "10.20.1.33", "dst": "10.20.1.1",
                 "sport": 51515, "dport": 22, "proto": 6, "packets": 1, "bytes": 60},
            ],
        ),
        rule_id="netad.host.anomaly",
        rule_name="Anomalous host behaviour",
        observer={"hostname": "sensor-1", "interface": "eth1"},
        model_version="host-lstmae-2024.06.01-3f9c",
        role="originator",
        originator="10.20.1.33",
        target="10.20.1.1",
        techniques=["T1046"],
    )
    return dataclasses.replace(event, **overrides)


@pytest.fixture
def make_event() -> Callable[..., IncidentEvent]:
    """The factory: make_event(i, **overrides) -> IncidentEvent."""
    return _make_event
