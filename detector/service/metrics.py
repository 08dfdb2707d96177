"""Prometheus metrics, /healthz and /readyz for the daemon and the Kafka roles.

Counters and gauges are read at scrape time by a custom collector over a snapshot of the
counters (`Pipeline.stats()`, a Kafka role's counters) that the process's run loop copies
(service.lifecycle), plus the sinks' stats, so the hot path does no metric bookkeeping; only
the scoring-latency histogram is observed as windows are scored. Served by a small threaded
HTTP server on the configured address (off by default), which also serves the pages mounted
on it (`mount`: the incident page, service.explain.board) from their own handlers.

The server is reachable by whatever can reach its address (a Prometheus on another host, a
vulnerability scanner, a load balancer's half-open checks), so what a client can hold is
bounded: a connection that sends nothing for HTTP_TIMEOUT_S is closed, and past
HTTP_CONNECTIONS at once a new one is closed unanswered (counted, and logged once a minute).
Before, every idle connection held a thread of the daemon for as long as the client kept it:
300 idle clients, 300 threads more, until the service's task limit stopped the daemon's own.
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# stat name -> (metric name, help, kind)
_COUNTERS = {
    "packets": ("netad_packets", "IP packets processed"),
    "bytes": ("netad_bytes", "IP bytes processed"),
    "malformed": ("netad_malformed_packets", "Frames that could not be parsed"),
    "non_ip": ("netad_non_ip_packets", "Well-formed non-IP frames skipped"),
    "kernel_drops": ("netad_kernel_drops", "Packets dropped by the kernel before capture"),
    "interface_drops": ("netad_interface_drops", "Packets dropped by the interface"),
    "interface_lost": ("netad_capture_interface_lost", "Times the capture interface went down or away (captured again once back)"),
    "flows_created": ("netad_flows_created", "Flows opened"),
    "flow_evictions": ("netad_flow_evictions", "Flows evicted because the table was full"),
    "entities_expired": ("netad_entities_expired", "Host entities expired after being idle"),
    "entity_overflow_packets": ("netad_entity_overflow_packets", "Packets of hosts that found no entity slot"),
    "late_packets": ("netad_late_packets", "Packets for windows already closed"),
    "windows_closed": ("netad_windows_closed", "Windows closed"),
    "entity_windows": ("netad_windows_scored", "Entity windows scored"),
    "anomalous_windows": ("netad_anomalous_windows", "Entity windows above threshold"),
    "alarms_left": ("netad_alarms_left_to_hosts", "Windows over the threshold left to the home host whose doing they were"),
    # flow-record sources (netflow, zeek): the windows' and the sources' own counters
    "flow_records": ("netad_flow_records", "Flow records processed"),
    "late_records": ("netad_late_flow_records", "Flow records wholly in windows already closed"),
    "late_bytes": ("netad_late_flow_bytes", "Bytes of flow records' parts in windows already closed (dropped)"),
    "records_read_again": ("netad_flow_records_read_again",
                           "Flow records a restart read again wholly for windows the run before had closed"),
    "entity_overflow_records": ("netad_entity_overflow_flow_records", "Flow record contributions of hosts that found no entity slot"),
    "datagrams": ("netad_netflow_datagrams", "NetFlow/IPFIX datagrams received"),
    "datagrams_malformed": ("netad_netflow_datagrams_malformed", "NetFlow/IPFIX datagrams with damage"),
    "datagrams_refused": ("netad_netflow_datagrams_refused", "Datagrams from exporters not allowed"),
    "flowsets_dropped_no_template": ("netad_netflow_flowsets_dropped_no_template", "Flow sets dropped waiting for their template"),
    "sequence_gaps": ("netad_netflow_sequence_gaps", "Gaps in exporters' sequence numbers (lost datagrams)"),
    "datagrams_out_of_order": ("netad_netflow_datagrams_out_of_order", "Datagrams that arrived out of order"),
    "records_bad_time": ("netad_netflow_records_bad_time", "Records dropped for times outside the export's clock window"),
    "datagrams_bad_export_time": ("netad_netflow_datagrams_bad_export_time", "Datagrams refused: export time off the wall clock"),
    # the event clock (capture.clock): records whose time was not believed, gaps skipped
    "records_ahead_of_time": ("netad_records_ahead_of_time", "Records dated too far ahead (of the wall clock, or of the watermark unconfirmed)"),
    "records_behind_time": ("netad_records_behind_time", "Records dated too far behind the watermark"),
    "time_jumps": ("netad_time_jumps", "Jumps ahead in event time believed (a replay's quiet gaps)"),
    "wall_clock_steps_back": ("netad_wall_clock_steps_back", "Steps back of the wall clock a live capture is dated by"),
    "windows_skipped": ("netad_windows_skipped", "Empty windows of a long silence skipped"),
    "windows_partial": ("netad_windows_partial",
                        "Windows not watched or reported whole (a start or stop inside them, an exporter's records lost or owed): not scored"),
    "rotations": ("netad_zeek_log_rotations", "Zeek log rotations followed"),
    "dns_answers": ("netad_zeek_dns_answers", "DNS answers read from the Zeek dns.log beside the conn.log"),
    "dns_malformed": ("netad_zeek_dns_malformed_lines", "Lines of the Zeek dns.log that could not be parsed"),
    "long_lines": ("netad_zeek_long_connection_lines", "Lines of the Zeek long-connections log (conn_long.log) read"),
    "long_malformed": ("netad_zeek_long_connection_malformed_lines",
                       "Lines of the Zeek long-connections log that could not be parsed or named no connection (uid)"),
    "long_after_end": ("netad_zeek_long_connection_lines_after_end",
                       "Long-connection lines read after the conn.log line that ended their connection (counted there)"),
    "long_forgotten": ("netad_zeek_long_connections_forgotten",
                       "Long connections forgotten while open (more at once than are held): their next line counts from their start"),
    # Kafka roles (service.kafka): the sensor's publishing, the scorer's consuming
    "windows_published": ("netad_kafka_windows_published", "Entity windows handed to the Kafka producer"),
    "bytes_published": ("netad_kafka_bytes_published", "Bytes of entity windows handed to the Kafka producer"),
    "publish_failures": ("netad_kafka_publish_failures", "Entity windows the broker never acknowledged"),
    "duplicates_skipped": ("netad_kafka_duplicate_windows", "Redelivered entity windows recognised as scored"),
    "malformed_records": ("netad_kafka_malformed_windows", "Window records that could not be decoded"),
    "invalid_records": ("netad_kafka_invalid_windows",
                        "Window records decoded but refused: unknown entity class, wrong window length, bad features, dated ahead of the clock"),
    "schema_mismatch": ("netad_kafka_schema_mismatch_windows", "Window records of another feature schema than the model's"),
    "home_net_mismatch": ("netad_kafka_home_net_mismatch_windows",
                          "Window records of a sensor whose home_net is not the one the model was trained with"),
    "consume_errors": ("netad_kafka_consume_errors", "Errors while consuming"),
    "commit_failures": ("netad_kafka_commit_failures", "Offset commits that failed (a rebalance got in between)"),
    "states_saved": ("netad_kafka_states_saved", "Entity states written to the state topic"),
    "states_restored": ("netad_kafka_states_restored", "Entity states restored from the state topic"),
}
_GAUGES = {
    "active_flows": ("netad_active_flows", "Flows tracked now"),
    "entities": ("netad_entities", "Entities tracked now"),
    "long_open": ("netad_zeek_long_connections_open", "Long connections Zeek logs as they go, open now"),
    "incidents_open": ("netad_incidents_open", "Incidents open now"),
    "partitions_assigned": ("netad_kafka_partitions_assigned", "Partitions of the windows topic this scorer owns"),
    "consumer_lag": ("netad_kafka_consumer_lag", "Window records not yet consumed on this scorer's partitions"),
}


log = structlog.get_logger()


@dataclass
class Response:
    """What a mounted page answers: status, body and its headers (Content-Type among them)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain; charset=utf-8"})


# a mounted page: (the request's path with its query, its headers, the client's address) -> Response
PageHandler = Callable[[str, Mapping[str, str], str], Response]


class _StatsCollector:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self._stats = stats

    def collect(self):
        snap = self._stats()
        st = snap.get("pipeline", {})
        for key, (name, help_text) in _COUNTERS.items():
            if key in st:
                c = CounterMetricFamily(name, help_text)
                c.add_metric([], float(st[key]))
                yield c
        for key, (name, help_text) in _GAUGES.items():
            if key in st:
                yield GaugeMetricFamily(name, help_text, value=float(st[key]))
        inc = CounterMetricFamily("netad_incident_events", "Incident events emitted", labels=["action", "severity"])
        for (action, severity), n in snap.get("incident_events", {}).items():
            inc.add_metric([action, severity], float(n))
        yield inc
        backlog = GaugeMetricFamily("netad_sink_backlog", "Events waiting in a sink's spool", labels=["sink"])
        delivered = CounterMetricFamily("netad_sink_delivered", "Events a sink delivered", labels=["sink"])
        failed = CounterMetricFamily("netad_sink_failures", "Failed delivery attempts", labels=["sink"])
        for sink, s in snap.get("sinks", {}).items():
            backlog.add_metric([sink], float(s.get("backlog", 0)))
            delivered.add_metric([sink], float(s.get("delivered", 0)))
            failed.add_metric([sink], float(s.get("failed", 0)))
        yield backlog
        yield delivered
        yield failed
        drops = CounterMetricFamily("netad_rule_drops", "Anomalous windows dropped by an allow or suppress rule", labels=["rule"])
        for rule, n in snap.get("rule_drops", {}).items():
            drops.add_metric([rule], float(n))
        yield drops
        reload = CounterMetricFamily("netad_config_reloads", "Config reloads", labels=["outcome"])
        for outcome, n in snap.get("reloads", {}).items():
            reload.add_metric([outcome], float(n))
        yield reload
        jobs = GaugeMetricFamily("netad_job_last_run_timestamp_seconds", "Last run of a scheduled job", labels=["job", "outcome"])
        for job, (ts, outcome) in snap.get("jobs", {}).items():
            jobs.add_metric([job, outcome], ts)
        yield jobs
        yield from _worker_metrics(snap.get("workers", {}))
        info = GaugeMetricFamily("netad_model_info", "The model bundle in use", labels=["version"])
        info.add_metric([snap.get("model_version", "")], 1.0)
        yield info


# per worker (source.workers > 1): stat name -> (metric, help); role "capture" is a fanout
# reader (capture.packets.fanout), role "flows" a flow/accumulator worker (capture.windows.sharded)
_WORKER_COUNTERS = {
    "packets": ("netad_worker_packets", "Packets (capture: frames) a worker handled"),
    "kernel_drops": ("netad_worker_kernel_drops", "Packets the kernel dropped from a capture worker's ring"),
    "interface_drops": ("netad_worker_interface_drops", "Packets the interface dropped, as a capture worker's ring saw it"),
    "busy_s": ("netad_worker_busy_seconds", "Seconds a worker spent working (capture: CPU; flows: on messages)"),
}


def _worker_metrics(workers: Mapping[str, list[Mapping[str, float]]]):
    for key, (name, help_text) in _WORKER_COUNTERS.items():
        family = CounterMetricFamily(name, help_text, labels=["role", "worker"])
        for role, per in workers.items():
            for k, st in enumerate(per):
                if key in st:
                    family.add_metric([role, str(k)], float(st[key]))
        yield family


def build_info() -> dict[str, str]:
    """netad_build_info's labels: netad's, Python's and torch's versions (torch's from its
    package metadata: a Kafka sensor never imports torch)."""
    from detector import __version__

    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "none"
    return {"version": __version__, "python": platform.python_version(), "torch": torch}


HTTP_TIMEOUT_S = 10.0  # a client that sends nothing for this long is closed
HTTP_CONNECTIONS = 128  # connections served at once: scrapes, probes, an analyst's pages, with room to spare
_REFUSED_LOG_S = 60.0


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most `slots` connections at once: past it, a connection is
    closed as soon as it is accepted, and `on_refused` is told."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], slots: int,
                 on_refused: Callable[[str], None]) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._on_refused = on_refused
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._on_refused(str(client_address[0]))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread to serve it (RuntimeError: can't start new thread)
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Metrics:
    """The registry, the latency histogram and the HTTP endpoint."""

    http_timeout_s = HTTP_TIMEOUT_S
    http_connections = HTTP_CONNECTIONS

    def __init__(self, stats: Callable[[], dict], stall_after_s: float = 60.0) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats))
        # what every exporter has: process_* (CPU, memory, fds, start time) and python_info
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("netad_build", "netad's version and what it runs on", registry=self.registry).info(build_info())
        self.scoring_latency = Histogram(
            "netad_scoring_latency_seconds",
            "Time to score all entities of one window close",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.stall_after_s = stall_after_s
        self.ready = False
        self.last_progress = time.monotonic()
        self.http_refused = Counter("netad_http_connections_refused",
                                    f"Connections closed unanswered: {self.http_connections} were being served",
                                    registry=self.registry)
        self._refused_logged = -_REFUSED_LOG_S
        self._refused_since_log = 0
        self._server: ThreadingHTTPServer | None = None
        self._pages: dict[str, PageHandler] = {}

    def mount(self, prefix: str, handler: PageHandler) -> None:
        """Serve `prefix` and everything under it (`prefix/...`, `prefix?...`) from `handler`."""
        self._pages[prefix.rstrip("/")] = handler

    def _page(self, path: str) -> PageHandler | None:
        for prefix, handler in self._pages.items():
            if path == prefix or path.startswith((prefix + "/", prefix + "?")):
                return handler
        return None

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self.last_progress < self.stall_after_s

    def serve(self, address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            timeout = metrics.http_timeout_s  # per read and write: an idle client is closed

            def do_GET(self):  # noqa: N802 (http.server's name)
                page = metrics._page(self.path)
                if page is not None:
                    self._answer_page(page)
                    return
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    ok = metrics.healthy
                    body, ctype, code = (b"ok\n" if ok else b"stalled\n"), "text/plain", 200 if ok else 503
                elif self.path == "/readyz":
                    ok = metrics.ready
                    body, ctype, code = (b"ready\n" if ok else b"starting\n"), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer_page(self, page: PageHandler) -> None:
                try:
                    response = page(self.path, dict(self.headers.items()), self.client_address[0])
                except Exception:  # a page's bug answers 500; the server and the daemon go on
                    log.exception("page_failed", path=self.path[:200])
                    response = Response(500, b"internal error\n")
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def log_message(self, *_args):  # keep scrapes out of the application log
                pass

        self._server = _BoundedServer((host.strip("[]") or "127.0.0.1", int(port)), Handler, self.http_connections,
                                      self._refused)
        threading.Thread(target=self._server.serve_forever, name="netad-metrics", daemon=True).start()
        return self._server.server_address[:2]

    def _refused(self, client: str) -> None:
        self.http_refused.inc()
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refused_logged >= _REFUSED_LOG_S:
            log.warning("http_connections_refused", refused=self._refused_since_log, last_client=client,
                        reason=f"{self.http_connections} connections were being served; "
                               f"one that sends nothing is closed after {self.http_timeout_s:g} s")
            self._refused_logged, self._refused_since_log = now, 0

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
