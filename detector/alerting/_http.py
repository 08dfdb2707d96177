"""HTTP transports: Splunk's HTTP Event Collector and a generic JSON webhook.

Where it stands: under sinks.py; it POSTs already-encoded records. A record is accepted when
the endpoint answers 2xx. Everything else is sorted by what retrying can achieve:

- 408, 425, 429, 5xx, timeouts, refused or reset connections: try again later (the sink backs
  off; a Retry-After header is honoured up to the backoff cap);
- 400, 413, 422: these records are refused as such (a batch is then retried one by one and a
  single refused record is dead-lettered);
- 3xx, 401, 403, 404 and other 4xx: the endpoint or our configuration is wrong (bad token,
  wrong path); the sink is marked disabled and retries slowly until someone fixes it.

An error is logged with Splunk's own reason: HEC answers {"text": "Invalid token", "code": 4}.

Indexer acknowledgement (`ack=true` in a HEC URL; Splunk's "About HTTP Event Collector
Indexer Acknowledgment"): a 200 only says HEC took the request, not that an indexer wrote
it. With ack, every request goes on a channel (X-Splunk-Request-Channel, `channel=` or a
random UUID per sink) and HEC answers {"ackId": N}; the batch counts as delivered only once
POST /services/collector/ack {"acks": [N]} answers {"acks": {"N": true}}. Until then it stays
spooled; not acknowledged within `ack_timeout_s` it is sent again (at least once, same
event ids, which SIEMs deduplicate on).

The standard library's http.client is enough here: one persistent connection per sink, one
request at a time, from the sink's delivery thread.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from typing import Any

from detector.alerting import formats
from detector.alerting._transport import DeliveryError, EndpointError, RejectedError, TlsFiles, Transport, unresolvable
from detector.contracts import IncidentEvent

HEC_SOURCETYPE = "netad:incident"
_RETRY_STATUSES = {408, 425, 429}
_REJECT_STATUSES = {400, 413, 422}
# what a kept-alive connection that the server closed while idle fails with
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_MAX_REPLY_BYTES = 64 * 1024  # an answer is a short JSON; a longer one is not read to its end


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
                 timeout_s: float, batch_max: int = 1, tls: TlsFiles | None = None,
                 ack_path: str | None = None, ack_timeout_s: float = 60.0) -> None:
        self.scheme, self.host, self.port, self.path = scheme, host, port, path or "/"
        self.headers = dict(headers)
        self.timeout_s = timeout_s
        self.batch_max = batch_max
        self.tls = tls
        self.ack_path = ack_path  # HEC's /services/collector/ack: set when indexer acknowledgement is on
        self.ack_timeout_s = ack_timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def check(self) -> str | None:
        return unresolvable(self.host, self.port)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self.tls.context() if self.tls else None
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def send(self, records: list[bytes]) -> None:
        status, retry_after, reply = self._request(self.path, b"\n".join(records))
        if 200 <= status < 300:
            if self.ack_path is not None:
                self._await_ack(reply)
            return
        reason = f"POST {self.host}: HTTP {status}{_splunk_reason(reply)}"
        if status in _RETRY_STATUSES or status >= 500:
            raise DeliveryError(reason, retry_after_s=_seconds(retry_after))
        if status in _REJECT_STATUSES:
            raise RejectedError(reason)
        raise EndpointError(reason)

    def _request(self, path: str, body: bytes) -> tuple[int, str | None, bytes]:
        # A kept-alive connection may have been closed by the server while idle; that first
        # failure says nothing about the endpoint, so it gets one immediate retry on a new one.
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                return self._post(path, body)
            except _STALE as exc:
                if not (reused and attempt == 1):
                    raise DeliveryError(f"POST {self.host}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def _await_ack(self, reply: bytes) -> None:
        """Poll HEC's ack endpoint until the indexers have the request (DeliveryError when
        they do not say so within ack_timeout_s: the batch is sent again later)."""
        ack_id = _json(reply).get("ackId")
        if not isinstance(ack_id, int) or isinstance(ack_id, bool):
            raise EndpointError(f"POST {self.host}: ack=true, but HEC answered without an ackId: indexer "
                                f"acknowledgement is off for this token (enable it, or drop ack=true)")
        assert self.ack_path is not None
        body = json.dumps({"acks": [ack_id]}).encode()
        deadline = time.monotonic() + self.ack_timeout_s
        wait_s = 0.1
        while True:
            status, _, answer = self._request(self.ack_path, body)
            if not 200 <= status < 300:
                raise DeliveryError(f"POST {self.host}{self.ack_path}: HTTP {status}{_splunk_reason(answer)}; "
                                    f"ackId {ack_id} unconfirmed, will send again")
            if _json(answer).get("acks", {}).get(str(ack_id)) is True:
                return
            if time.monotonic() + wait_s > deadline:
                raise DeliveryError(f"POST {self.host}: ackId {ack_id} not acknowledged by the indexers within "
                                    f"{self.ack_timeout_s:g} s; will send again")
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, 2.0)

    def _post(self, path: str, body: bytes) -> tuple[int, str | None, bytes]:
        """One request: (status, Retry-After, body). Stale-connection errors propagate as they
        are for `_request` to decide; every other failure is a DeliveryError or EndpointError."""
        conn = self._connection()
        try:
            conn.request("POST", path, body=body, headers=self.headers)
            response = conn.getresponse()
            reply = response.read(_MAX_REPLY_BYTES + 1)  # drain, so that the connection can be reused
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise EndpointError(f"TLS certificate of {self.host} not trusted: {exc.verify_message}") from exc
        except _STALE:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise DeliveryError(f"POST {self.host}: {type(exc).__name__}: {exc}") from exc
        if response.will_close or len(reply) > _MAX_REPLY_BYTES:
            self.close()
        return response.status, response.getheader("Retry-After"), reply[:_MAX_REPLY_BYTES]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _json(reply: bytes) -> dict[str, Any]:
    try:
        value = json.loads(reply)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _splunk_reason(reply: bytes) -> str:
    """HEC's own words for an answer ({"text": "Invalid token", "code": 4}), or a webhook's
    short plain-text reply, for the log line."""
    doc = _json(reply)
    if "text" in doc or "code" in doc:
        return f": {formats.one_line(doc.get('text', ''), 200)} (code {formats.one_line(doc.get('code', '?'), 16)})"
    text = formats.one_line(reply.decode("utf-8", "replace"), 200).strip()
    return f": {text}" if text else ""


def _seconds(header: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from collectors and ignored)."""
    if not header:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value >= 0 else None
