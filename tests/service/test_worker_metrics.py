"""Per-worker counters (source.workers > 1) on the metrics endpoint: packets, drops and
busy seconds of each capture worker and flow worker, labelled by role and worker."""

from __future__ import annotations

from prometheus_client import generate_latest

from detector.service.metrics import Metrics


def test_each_workers_packets_drops_and_busy_seconds_are_exported():
    snap = {"pipeline": {"packets": 30},
            "workers": {"capture": [{"packets": 20, "kernel_drops": 2, "interface_drops": 0, "busy_s": 1.5},
                                    {"packets": 10, "kernel_drops": 0, "interface_drops": 0, "busy_s": 0.5}],
                        "flows": [{"packets": 18, "busy_s": 0.25}]}}
    text = generate_latest(Metrics(lambda: snap).registry).decode()
    for line in ('netad_worker_packets_total{role="capture",worker="1"} 10.0',
                 'netad_worker_kernel_drops_total{role="capture",worker="0"} 2.0',
                 'netad_worker_busy_seconds_total{role="capture",worker="0"} 1.5',
                 'netad_worker_packets_total{role="flows",worker="0"} 18.0',
                 'netad_worker_busy_seconds_total{role="flows",worker="0"} 0.25'):
        assert line in text.splitlines()
