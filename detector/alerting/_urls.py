"""Sink URLs: from a line of configuration to a transport and an encoder.

Where it stands: under sinks.py (build_sink). The forms:

  jsonl:///abs/path.jsonl  jsonl:relative/path.jsonl   ?max_bytes=&backups=&fsync=
  stdout://
  syslog+udp://host[:514]  syslog+tcp://host[:514]     ?facility=&hostname=&max_bytes= (UDP: at most 2048,
                                                        the default there; format=ocsf does not fit)
  syslog+tls://host[:6514]                             ?ca=&cert=&key=&insecure=
  http(s)://host:8088/services/collector?token=...     ?sourcetype=&index=&source=&channel=&batch=
                                                        &ack=true&ack_timeout_s= (indexer acknowledgement)
  webhook+http(s)://host/path                          ?token= (sent as a Bearer token)
  kafka://broker1:9092[,broker2:9092]/topic            ?<librdkafka setting>= (security.protocol,
                                                        sasl.mechanism, sasl.username, sasl.password,
                                                        ssl.ca.location...; default format ecs)

Every URL also takes ?format=ecs|cef|ocsf|rfc5424 and ?timeout_s=&backoff_s=&backoff_max_s=.
The default format is ecs, except syslog, whose default is rfc5424 (an RFC 5424 message whose
MSG is the ECS JSON); over syslog, format=cef or ocsf puts that inside RFC 5424. Unknown
parameters are errors, like unknown keys in the config file.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from detector import __version__
from detector.alerting import formats
from detector.alerting._http import HEC_SOURCETYPE, HttpTransport, hec_record
from detector.alerting._kafka import KafkaTransport
from detector.alerting._syslog import UDP_MAX_BYTES, SyslogStreamTransport, SyslogUdpTransport
from detector.alerting._transport import JsonlTransport, StdoutTransport, TlsFiles, Transport
from detector.contracts import IncidentEvent
from detector.errors import ConfigError

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_BACKOFF_S = 0.5
DEFAULT_BACKOFF_MAX_S = 60.0
HEC_BATCH = 50  # events per POST while a backlog drains
SYSLOG_MAX_BYTES = 8192  # rsyslog's default maxMessageSize: longer messages get cut in half

_COMMON = {"format", "timeout_s", "backoff_s", "backoff_max_s"}
_TLS = {"ca", "cert", "key", "insecure"}
_PARAMS: dict[str, set[str]] = {
    "jsonl": {"max_bytes", "backups", "fsync"},
    "stdout": set(),
    "syslog+udp": {"facility", "hostname", "max_bytes"},
    "syslog+tcp": {"facility", "hostname", "max_bytes"},
    "syslog+tls": {"facility", "hostname", "max_bytes"} | _TLS,
    "http": {"token", "sourcetype", "index", "source", "channel", "batch", "ack", "ack_timeout_s"} | _TLS,
    "https": {"token", "sourcetype", "index", "source", "channel", "batch", "ack", "ack_timeout_s"} | _TLS,
    "webhook+http": {"token"} | _TLS,
    "webhook+https": {"token"} | _TLS,
    "kafka": set(),  # and any librdkafka setting (a key with a dot)
}
_DEFAULT_PORTS = {"syslog+udp": 514, "syslog+tcp": 514, "syslog+tls": 6514}
_SECRET_PARAMS = {"token", "sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"}


class _BadUrl(Exception):
    pass


@dataclass
class SinkSpec:
    name: str
    transport: Transport
    encoder: Callable[[IncidentEvent], bytes]
    backoff_s: float
    backoff_max_s: float
    file: Path | None = None  # the file a jsonl sink writes (sinks on one file clash)


def redact_url(url: str) -> str:
    """The URL fit for a log line: secrets in the query and userinfo replaced by ***."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc and not any(k in _SECRET_PARAMS for k, _ in query):
        return url
    redacted = [(k, "***" if k in _SECRET_PARAMS else v) for k, v in query]
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(redacted, safe="*/:"), ""))


def _safe_name(text: str) -> str:
    text = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._+-]+", "-", text))
    return text.strip("-.")[:100] or "sink"


class _Params:
    """The query parameters of one URL, taken one by one so that leftovers can be refused."""

    def __init__(self, query: str, allowed: set[str], dotted: bool = False) -> None:
        self.values: dict[str, str] = {}
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as exc:
            raise _BadUrl(f"bad query: {exc}") from None
        for key, value in pairs:
            if key in self.values:
                raise _BadUrl(f"parameter {key!r} given twice")
            if key not in allowed and not (dotted and "." in key):
                raise _BadUrl(f"unknown parameter {key!r} (allowed: {', '.join(sorted(allowed))})")
            self.values[key] = value

    def text(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def number(self, key: str, default: float, *, minimum: float, integer: bool = False) -> float:
        raw = self.values.get(key)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise _BadUrl(f"{key}={raw!r} is not {'an integer' if integer else 'a number'}") from None
        if not value >= minimum:  # also refuses NaN
            raise _BadUrl(f"{key}={raw!r} must be at least {minimum}")
        return value

    def flag(self, key: str) -> bool:
        raw = self.values.get(key, "0").lower()
        if raw not in ("0", "1", "true", "false", "yes", "no"):
            raise _BadUrl(f"{key}={raw!r} must be 0 or 1")
        return raw in ("1", "true", "yes")

    def file(self, key: str) -> Path | None:
        raw = self.values.get(key)
        if raw is None:
            return None
        if not Path(raw).is_file():
            raise _BadUrl(f"{key}={raw!r}: no such file")
        return Path(raw)


def parse_sink_url(url: str, *, name: str | None = None) -> SinkSpec:
    """The transport, encoder and settings a URL asks for; ConfigError if it is bad. Nothing
    is opened, created or sent: the transport is opened when its sink starts (build_sink)."""
    try:
        return _parse(url, name)
    except _BadUrl as exc:
        raise ConfigError(f"sinks: {redact_url(url)}: {exc}") from None


def _parse(url: str, name: str | None) -> SinkSpec:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = None if scheme == "kafka" else parts.port  # kafka: a list of host:port
    except ValueError as exc:
        raise _BadUrl(str(exc)) from None
    if scheme not in _PARAMS:
        raise _BadUrl(f"unknown scheme {scheme!r} (known: {', '.join(sorted(_PARAMS))})")
    if parts.fragment:
        raise _BadUrl("a sink URL has no #fragment")
    params = _Params(parts.query, _COMMON | _PARAMS[scheme], dotted=scheme == "kafka")
    fmt = params.text("format", "rfc5424" if scheme.startswith("syslog+") else "ecs")
    if fmt not in formats.FORMATS:
        raise _BadUrl(f"format={fmt!r}: expected one of {', '.join(formats.FORMATS)}")
    timeout_s = params.number("timeout_s", DEFAULT_TIMEOUT_S, minimum=0.001)
    backoff_s = params.number("backoff_s", DEFAULT_BACKOFF_S, minimum=0.001)
    backoff_max_s = params.number("backoff_max_s", max(DEFAULT_BACKOFF_MAX_S, backoff_s), minimum=backoff_s)
    local_host = socket.gethostname()

    if scheme in ("jsonl", "stdout"):
        transport, default_name = _local(scheme, parts, params)
        syslog_options = {"hostname": local_host, "procid": str(os.getpid())}
        encoder = _text_encoder(fmt, syslog_options)
    else:
        host = parts.hostname
        if not host:
            raise _BadUrl("no host")
        if scheme == "kafka":
            transport, encoder, default_name = _kafka(parts, fmt, params, timeout_s, local_host)
        elif scheme.startswith("syslog+"):
            transport, encoder, default_name = _syslog(scheme, host, port, fmt, params, timeout_s, local_host)
        else:
            transport, encoder, default_name = _http(scheme, host, port, parts, fmt, params, timeout_s, local_host)
    if name is not None and (not name or name in (".", "..") or _safe_name(name) != name):
        raise _BadUrl(f"name {name!r} must be letters, digits and . _ + - (it names the spool directory)")
    return SinkSpec(name=name or _safe_name(default_name), transport=transport, encoder=encoder,
                    backoff_s=backoff_s, backoff_max_s=backoff_max_s,
                    file=transport.path if isinstance(transport, JsonlTransport) else None)


def _text_encoder(fmt: str, syslog_options: dict[str, str]) -> Callable[[IncidentEvent], bytes]:
    def encode(event: IncidentEvent) -> bytes:
        return formats.encode(event, fmt, **syslog_options).encode("utf-8")

    return encode


def _local(scheme: str, parts: SplitResult, params: _Params) -> tuple[Transport, str]:
    if scheme == "stdout":
        if parts.netloc or parts.path:
            raise _BadUrl("stdout takes no host or path: stdout://")
        return StdoutTransport(), "stdout"
    if parts.netloc:
        raise _BadUrl("jsonl takes a path, not a host: jsonl:///abs/path.jsonl or jsonl:relative/path.jsonl")
    path = unquote(parts.path)
    if not path or path.endswith("/"):
        raise _BadUrl("jsonl needs a file path")
    max_bytes = params.number("max_bytes", 0, minimum=1, integer=True) if "max_bytes" in params.values else None
    backups = params.number("backups", 5, minimum=1, integer=True)
    transport = JsonlTransport(Path(path), max_bytes=int(max_bytes) if max_bytes else None,
                               backups=int(backups), fsync=params.flag("fsync") if "fsync" in params.values else True)
    return transport, "jsonl-" + path  # opened (created) when the sink starts: build_sink


def _syslog(scheme: str, host: str, port: int | None, fmt: str, params: _Params, timeout_s: float,
            local_host: str) -> tuple[Transport, Callable[[IncidentEvent], bytes], str]:
    port = port or _DEFAULT_PORTS[scheme]
    facility = params.text("facility", "local5") or ""
    if facility not in formats.FACILITIES:
        raise _BadUrl(f"facility={facility!r}: expected one of {', '.join(formats.FACILITIES)}")
    hostname = params.text("hostname", local_host) or local_host
    udp = scheme == "syslog+udp"
    max_bytes = int(params.number("max_bytes", UDP_MAX_BYTES if udp else SYSLOG_MAX_BYTES, minimum=480, integer=True))
    msg_format = "ecs" if fmt == "rfc5424" else fmt
    if udp and max_bytes > UDP_MAX_BYTES:
        raise _BadUrl(f"max_bytes={max_bytes}: a UDP datagram carries at most {UDP_MAX_BYTES} bytes (RFC 5426); "
                      "for longer messages use syslog+tcp:// or syslog+tls://")
    if udp and msg_format == "ocsf":
        raise _BadUrl(f"format=ocsf: an OCSF finding (2.2-3.3 KB) does not fit a {UDP_MAX_BYTES}-byte UDP datagram "
                      "(RFC 5426); use syslog+tcp:// or syslog+tls://, or format=rfc5424 (ECS inside) or format=cef")
    name = f"{scheme}-{host}-{port}"
    transport: Transport
    if udp:
        transport = SyslogUdpTransport(host, port, max_bytes)
    else:
        tls = _tls(params, name) if scheme == "syslog+tls" else None
        transport = SyslogStreamTransport(host, port, timeout_s=timeout_s, tls=tls, sink_name=name)
    pid = str(os.getpid())

    def encode(event: IncidentEvent) -> bytes:
        text = formats.to_rfc5424(event, msg_format=msg_format, facility=facility, hostname=hostname, procid=pid,
                                  max_bytes=max_bytes)
        return text.encode("utf-8")

    return transport, encode, name


def _kafka(parts: SplitResult, fmt: str, params: _Params, timeout_s: float,
           local_host: str) -> tuple[Transport, Callable[[IncidentEvent], bytes], str]:
    servers = parts.netloc.rsplit("@", 1)[-1]
    topic = unquote(parts.path.strip("/"))
    if not topic or "/" in topic:
        raise _BadUrl("kafka needs one topic: kafka://broker:9092/topic")
    client = {k: v for k, v in params.values.items() if "." in k}
    transport = KafkaTransport(servers=servers, topic=topic, client=client, timeout_s=timeout_s)
    return transport, _text_encoder(fmt, {"hostname": local_host, "procid": str(os.getpid())}), f"kafka-{topic}"


def _tls(params: _Params, sink_name: str) -> TlsFiles:
    key = params.file("key")
    cert = params.file("cert")
    if key and not cert:
        raise _BadUrl("key= without cert=")
    try:
        return TlsFiles(ca_file=params.file("ca"), insecure=params.flag("insecure"), cert_file=cert, key_file=key,
                        sink_name=sink_name)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise _BadUrl(f"TLS setup: {exc}") from None


def _http(scheme: str, host: str, port: int | None, parts: SplitResult, fmt: str, params: _Params,
          timeout_s: float, local_host: str) -> tuple[Transport, Callable[[IncidentEvent], bytes], str]:
    webhook = scheme.startswith("webhook+")
    http_scheme = scheme.removeprefix("webhook+")
    name = f"webhook-{host}-{port or ''}{parts.path}" if webhook else f"hec-{host}-{port or ''}"
    tls = _tls(params, name) if http_scheme == "https" else None
    token = params.text("token")
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    headers = {"User-Agent": f"netad/{__version__}"}
    syslog_options = {"hostname": local_host, "procid": str(os.getpid())}
    if webhook:
        headers["Content-Type"] = "application/json" if fmt in ("ecs", "ocsf") else "text/plain; charset=utf-8"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        transport = HttpTransport(scheme=http_scheme, host=host, port=port, path=path, headers=headers,
                                  timeout_s=timeout_s, batch_max=1, tls=tls)
        return transport, _text_encoder(fmt, syslog_options), name
    if "/services/collector" not in parts.path:
        raise _BadUrl("an http(s) sink is Splunk HEC (.../services/collector); for other endpoints use webhook+http(s)://")
    if not token:
        raise _BadUrl("Splunk HEC needs ?token=")
    headers["Authorization"] = f"Splunk {token}"
    headers["Content-Type"] = "application/json"
    ack = params.flag("ack")
    ack_timeout_s = params.number("ack_timeout_s", 60.0, minimum=0.1)
    channel = params.text("channel") or (str(uuid.uuid4()) if ack else None)  # acks are per channel
    if channel:
        headers["X-Splunk-Request-Channel"] = channel
    ack_path = path[: path.index("/services/collector")] + "/services/collector/ack" if ack else None
    batch = int(params.number("batch", HEC_BATCH, minimum=1, integer=True))
    sourcetype = params.text("sourcetype", HEC_SOURCETYPE) or HEC_SOURCETYPE
    index, source = params.text("index"), params.text("source")

    def encode(event: IncidentEvent) -> bytes:
        return hec_record(event, fmt, sourcetype=sourcetype, index=index, source=source, host=local_host,
                          **syslog_options)

    transport = HttpTransport(scheme=http_scheme, host=host, port=port, path=path, headers=headers,
                              timeout_s=timeout_s, batch_max=batch, tls=tls,
                              ack_path=ack_path, ack_timeout_s=ack_timeout_s)
    return transport, encode, name
