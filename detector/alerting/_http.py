"""HTTP transports: Splunk's HTTP Event Collector and a generic JSON webhook.

Where it stands: under sinks.py; it POSTs already-encoded records. A record is accepted when
the endpoint answers 2xx. Everything else is sorted by what retrying can achieve:

- 408, 425, 429, 5xx, timeouts, refused or reset connections: try again later (the sink backs
  off; a Retry-After header is honoured up to the backoff cap);
- 400, 413, 422: these records are refused as such (a batch is then retried one by one and a
  single refused record is dead-lettered);
- 3xx, 401, 403, 404 and other 4xx: the endpoint or our configuration is wrong (bad token,
  wrong path); the sink is marked disabled and retries slowly until someone fixes it.

The standard library's http.client is enough here: one persistent connection per sink, one
request at a time, from the sink's delivery thread.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

from detector.alerting import formats
from detector.alerting._transport import DeliveryError, EndpointError, RejectedError, Transport
from detector.contracts import IncidentEvent

HEC_SOURCETYPE = "netad:incident"
_RETRY_STATUSES = {408, 425, 429}
_REJECT_STATUSES = {400, 413, 422}
# what a kept-alive connection that the server closed while idle fails with
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def hec_record(event: IncidentEvent, fmt: str, *, sourcetype: str = HEC_SOURCETYPE, index: str | None = None,
               source: str | None = None, host: str | None = None, **syslog_options: Any) -> bytes:
    """One HEC event envelope: {"time", "host", "source", "sourcetype", "index", "event"}.

    JSON formats go in as objects (Splunk indexes their fields); CEF and RFC 5424 as strings.
    `time` is the event time in seconds, as HEC wants it.
    """
    if fmt == "ecs":
        payload: Any = formats.to_ecs(event)
    elif fmt == "ocsf":
        payload = formats.to_ocsf(event)
    else:
        payload = formats.encode(event, fmt, **syslog_options)
    envelope: dict[str, Any] = {"time": round(event.emitted_ns / 1e9, 3)}
    hostname = event.observer.get("hostname") or host
    if hostname:
        envelope["host"] = formats.one_line(hostname)
    envelope["source"] = source or formats.PRODUCT
    envelope["sourcetype"] = sourcetype
    if index:
        envelope["index"] = index
    envelope["event"] = payload
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class HttpTransport(Transport):
    """POST records to one URL. HEC takes a batch as concatenated JSON objects (batch_max > 1);
    a webhook gets one record per request (batch_max = 1)."""

    def __init__(self, *, scheme: str, host: str, port: int | None, path: str, headers: dict[str, str],
                 timeout_s: float, batch_max: int = 1, ssl_context: ssl.SSLContext | None = None) -> None:
        self.scheme, self.host, self.port, self.path = scheme, host, port, path or "/"
        self.headers = dict(headers)
        self.timeout_s = timeout_s
        self.batch_max = batch_max
        self.ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self.ssl_context
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def send(self, records: list[bytes]) -> None:
        body = b"\n".join(records)
        # A kept-alive connection may have been closed by the server while idle; that first
        # failure says nothing about the endpoint, so it gets one immediate retry on a new one.
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                status, retry_after = self._post(body)
                break
            except _STALE as exc:
                if not (reused and attempt == 1):
                    raise DeliveryError(f"POST {self.host}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        if status in _RETRY_STATUSES or status >= 500:
            raise DeliveryError(f"POST {self.host}: HTTP {status}", retry_after_s=_seconds(retry_after))
        if status in _REJECT_STATUSES:
            raise RejectedError(f"POST {self.host}: HTTP {status}")
        raise EndpointError(f"POST {self.host}: HTTP {status}")

    def _post(self, body: bytes) -> tuple[int, str | None]:
        """One request: (status, Retry-After). Stale-connection errors propagate as they are
        for `send` to decide; every other failure is a DeliveryError or EndpointError."""
        conn = self._connection()
        try:
            conn.request("POST", self.path, body=body, headers=self.headers)
            response = conn.getresponse()
            response.read()  # drain, so that the connection can be reused
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise EndpointError(f"TLS certificate of {self.host} not trusted: {exc.verify_message}") from exc
        except _STALE:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise DeliveryError(f"POST {self.host}: {type(exc).__name__}: {exc}") from exc
        if response.will_close:
            self.close()
        return response.status, response.getheader("Retry-After")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _seconds(header: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from collectors and ignored)."""
    if not header:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value >= 0 else None
