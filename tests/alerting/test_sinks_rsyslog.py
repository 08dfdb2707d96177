"""Syslog sinks against a real rsyslogd: RFC 5424 (ECS and CEF inside) over UDP, TCP and TLS.

The test writes an rsyslog configuration into a private directory: imudp and imtcp on free
loopback ports (imtcp plain, and TLS with the gtls driver and a self-signed certificate made
with openssl), mmpstrucdata to parse the structured data, and omfile writing one JSON line per
message with the fields rsyslog parsed. Then it checks that every event arrived, parsed.
No root needed: rsyslogd runs in the foreground (-n) with its own pid file and work dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from detector.alerting import formats
from detector.alerting.sinks import build_sink
from detector.contracts import IncidentEvent
from detector.errors import ConfigError
from tests.alerting.test_formats import _inputs, parse_cef

Factory = Callable[..., IncidentEvent]
FAST = "backoff_s=0.05&backoff_max_s=0.3&timeout_s=2"
# names an analyst may type, and a network may send: quotes, brackets, pipes, backslashes
HOSTILE_RULE = 'Odd "rule" [x] | a=b \\ end]'


def _which(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


RSYSLOGD, OPENSSL = _which("rsyslogd"), _which("openssl")
pytestmark = pytest.mark.skipif(RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog)")

_CONF = """
global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{cert}" defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp")
module(load="imudp")
module(load="mmpstrucdata")
template(name="parsed" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="$!rfc5424-sd" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}}
ruleset(name="netad") {{
  action(type="mmpstrucdata")
  action(type="omfile" file="{out}" template="parsed")
}}
input(type="imtcp" port="{tcp_port}" ruleset="netad")
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="netad")
input(type="imtcp" port="{tls_port}" ruleset="netad"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
"""


@dataclass
class Rsyslog:
    tcp_port: int
    tls_port: int
    udp_port: int
    cert: Path
    out: Path
    log: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(self, event_ids: set[str], timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """The parsed record of each event id, once rsyslog has written all of them."""
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[str, dict[str, Any]] = {}
            for record in self.records():
                sd = json.loads(record["sd"]) if record["sd"] else {}
                event_id = sd.get(formats.SD_ID, {}).get("eventid")
                if event_id in event_ids:
                    found[event_id] = record | {"sd": sd}
            if set(found) == event_ids or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    if OPENSSL is None:
        pytest.skip("openssl is not installed: cannot make the receiver's certificate")
    root = tmp_path_factory.mktemp("rsyslog")
    cert, key, work = root / "cert.pem", root / "key.pem", root / "work"
    work.mkdir()
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )
    server = Rsyslog(_free_port(), _free_port(), _free_udp_port(), cert, root / "out.jsonl", root / "rsyslogd.log")
    conf = root / "rsyslog.conf"
    conf.write_text(_CONF.format(work=work, cert=cert, key=key, out=server.out, tcp_port=server.tcp_port,
                                 tls_port=server.tls_port, udp_port=server.udp_port))
    with open(server.log, "w") as log_file:
        proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(root / "rsyslogd.pid")],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not (_listening(server.tcp_port) and _listening(server.tls_port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"rsyslogd did not start listening: {server.log.read_text()[-1000:]}")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("fmt", ["rfc5424", "cef"])
def test_rsyslog_receives_and_parses_every_incident(rsyslog: Rsyslog, tmp_path: Path, make_event: Factory,
                                                    transport: str, fmt: str) -> None:
    """rsyslog parses every message netad sends: header, structured data, MSG intact."""
    port = rsyslog.tcp_port if transport == "tcp" else rsyslog.tls_port
    tls = f"&ca={rsyslog.cert}" if transport == "tls" else ""
    sink = build_sink(f"syslog+{transport}://127.0.0.1:{port}?format={fmt}{tls}&{FAST}", spool_dir=tmp_path)
    events = [
        make_event(i, event_id=f"{transport}-{fmt}-{i:03d}", rule_name=HOSTILE_RULE,
                   entity="10.20.1.33" if i % 2 else 'weird "host"] \\ name')
        for i in range(25)
    ]
    for event in events:
        sink.publish(event)
    assert sink.flush(10.0)
    sink.close()
    assert sink.stats["delivered"] == 25

    found = rsyslog.wait_for({e.event_id for e in events})
    assert sorted(found) == sorted(e.event_id for e in events), rsyslog.log.read_text()[-2000:]
    for event in events:
        record = found[event.event_id]
        assert (record["pri"], record["host"], record["app"], record["msgid"]) == ("171", "sensor-1", "netad", "incident")
        params = record["sd"][formats.SD_ID]  # mmpstrucdata lower-cases parameter names
        assert params["entity"] == event.entity
        assert params["incidentid"] == event.incident_id
        msg = record["msg"]
        if fmt == "rfc5424":
            doc = json.loads(msg)
            assert (doc["event"]["id"], doc["rule"]["name"], doc["netad"]["entity"]) == (
                event.event_id, HOSTILE_RULE, event.entity)
        else:
            assert msg == formats.to_cef(event)


@pytest.mark.parametrize("fmt", ["rfc5424", "cef"])
def test_rsyslog_receives_every_udp_message_intact_within_2048_bytes(rsyslog: Rsyslog, tmp_path: Path,
                                                                    make_event: Factory, fmt: str) -> None:
    """Over UDP every message of every category (hostile rule names, long evidence) arrives
    whole and parses, and no datagram is longer than 2048 bytes (RFC 5426): the evidence
    lists are shortened to fit, ids, scores and the summary are kept."""
    events = [dataclasses.replace(event, event_id=f"udp-{fmt}-{name}", rule_name=HOSTILE_RULE)
              for name, event in _inputs(make_event).items()]
    sink = build_sink(f"syslog+udp://127.0.0.1:{rsyslog.udp_port}?format={fmt}&{FAST}", spool_dir=tmp_path)
    for event in events:
        sink.publish(event)
    assert sink.flush(10.0)
    sink.close()
    assert (len(events), 0) == (sink.stats["delivered"], sink.stats["dead_lettered"])

    found = rsyslog.wait_for({e.event_id for e in events})
    assert sorted(found) == sorted(e.event_id for e in events), rsyslog.log.read_text()[-2000:]
    sizes = {event_id: len(record["raw"].encode("utf-8")) for event_id, record in found.items()}
    assert max(sizes.values()) <= 2048, sizes
    if fmt == "rfc5424":  # some are longer in full (up to 2.3 KB with ECS inside): shortened to fit, not cut
        assert any(len(formats.to_rfc5424(e, msg_format="ecs").encode("utf-8")) > 2048 for e in events)
    for event in events:
        msg = found[event.event_id]["msg"]
        if fmt == "rfc5424":
            doc = json.loads(msg)
            assert (doc["event"]["id"], doc["rule"]["name"], doc["message"]) == (event.event_id, HOSTILE_RULE, formats.summary(event))
        else:
            assert parse_cef(msg)[1]["externalId"] == event.event_id


@pytest.mark.parametrize(("query", "expected"), [
    ("format=ocsf", "format=ocsf: an OCSF finding"),
    ("max_bytes=4096", "max_bytes=4096: a UDP datagram carries at most 2048 bytes"),
])
def test_udp_refuses_what_cannot_fit_a_datagram(query: str, expected: str) -> None:
    """An OCSF finding or a larger max_bytes over UDP is a config error, named, not a stream
    of dead letters."""
    with pytest.raises(ConfigError, match=expected):
        build_sink(f"syslog+udp://127.0.0.1:514?{query}")


def test_tls_refuses_an_untrusted_receiver_then_delivers_after_the_fix(rsyslog: Rsyslog, tmp_path: Path,
                                                                      make_event: Factory) -> None:
    """Without ?ca= the self-signed receiver is not trusted: nothing is sent, the sink is
    disabled and the event stays spooled. With ca= (same sink name, so same spool) the
    backlog goes out; insecure=1 also works, for labs."""
    url = f"syslog+tls://127.0.0.1:{rsyslog.tls_port}"
    untrusted = build_sink(f"{url}?{FAST}", spool_dir=tmp_path)
    untrusted.publish(make_event(0, event_id="tls-fix-000"))
    deadline = time.monotonic() + 5
    while not untrusted.stats["disabled"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert untrusted.stats["disabled"] and untrusted.stats["delivered"] == 0
    untrusted.close(0.1)

    fixed = build_sink(f"{url}?ca={rsyslog.cert}&{FAST}", spool_dir=tmp_path)
    # nothing was published to it: what it delivers is the spooled event (read as stats
    # right away, the backlog raced its sender, which may have sent it already)
    assert fixed.flush(5.0)
    assert fixed.stats["delivered"] == 1 and fixed.stats["backlog"] == 0
    fixed.close()
    insecure = build_sink(f"{url}?insecure=1&{FAST}")
    insecure.publish(make_event(1, event_id="tls-fix-001"))
    insecure.close()
    assert set(rsyslog.wait_for({"tls-fix-000", "tls-fix-001"})) == {"tls-fix-000", "tls-fix-001"}


def test_a_pinned_certificate_replaced_on_disk_is_taken_at_the_next_connection(rsyslog: Rsyslog, tmp_path: Path,
                                                                              make_event: Factory) -> None:
    """`ca=` names a file that holds another certificate than the receiver's (the receiver
    was given a new one): the sink is disabled and spools. The operator puts the receiver's
    new certificate in that file; the same sink, neither rebuilt nor reloaded, reads it at its
    next connection and delivers the backlog, and says so. Before, the file was read once as
    the sink was built, and a SIGHUP keeps a sink whose URL did not change: only a restart
    took it, the sink disabled until then."""
    assert OPENSSL is not None
    pinned = tmp_path / "receiver.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "old-key.pem"), "-out", str(pinned), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True, timeout=30)
    with structlog.testing.capture_logs() as logs:
        sink = build_sink(f"syslog+tls://127.0.0.1:{rsyslog.tls_port}?ca={pinned}&{FAST}", spool_dir=tmp_path / "spool")
        try:
            sink.publish(make_event(0, event_id="tls-renewed-000"))
            deadline = time.monotonic() + 5
            while not sink.stats["disabled"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sink.stats["disabled"] and 0 == sink.stats["delivered"]
            pinned.write_text("-----BEGIN CERTIFICATE-----\nMIIB")  # a renewal caught half written
            assert not sink.flush(5.0)  # the last good file's context is kept, and the sink stays disabled
            renewed = tmp_path / "renewed.pem"  # written whole, then moved in, as a renewal tool does
            renewed.write_bytes(rsyslog.cert.read_bytes())
            os.replace(renewed, pinned)
            assert sink.flush(10.0), sink.stats
            assert 1 == sink.stats["delivered"]
        finally:
            sink.close()
    assert ["tls-renewed-000"] == list(rsyslog.wait_for({"tls-renewed-000"}))
    said = [e["event"] for e in logs if e["event"].startswith("sink_tls")]
    assert ["sink_tls_files_unusable", "sink_tls_reloaded"] == said  # each once, though retried meanwhile
