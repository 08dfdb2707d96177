"""Scenarios of history-revealed behaviour for `netad splice --scenarios LIST.yaml`.

Where it stands: beside the pipeline, before it, with `detector.eval.splice`. The real
attacks that splice inserts are loud within one window; what only a host's history
reveals (DESIGN: "The streaming LSTM autoencoder: memory that earns its place") needs
traffic of its own: a beacon to one new peer every few minutes for hours, a host's first
minutes as a bot, a bulk upload at night, a host that starts accepting sessions. This
module reads a scenario list, generates each behaviour's packets (`eval._behaviours`),
wraps them in the benign capture's link layer with the actor's own MACs (Ethernet) and
TTLs where the capture shows them, and hands them to `splice` with one exact truth row each.

A list (YAML):

    seed: 18                        # every entry's packets derive from it (or the entry's own seed)
    home_net: [192.168.1.0/24]      # which addresses are on the LAN (MACs, RTTs)
    gateway: 192.168.1.1            # optional: its MAC carries off-LAN traffic when no frame shows one
    attacks: [...]                  # optional: real attack captures, as in --attacks (e.g. slow: 100)
    scenarios:
      - {kind: beacon, offset_s: 3600, host: 192.168.1.132, peer: 203.0.113.10, period_s: 300, jitter_s: 30, duration_s: 10800}
      - {kind: onset, offset_s: 20000, host: 192.168.1.132, peers: 20, internal_peers: [192.168.1.1], dns: 192.168.1.1}
      - {kind: upload, offset_s: 30000, host: 192.168.1.132, peer: 198.51.100.20, bytes_out: 30000000, duration_s: 1200}
      - {kind: role_change, offset_s: 40000, host: 192.168.1.132, peers: [192.168.1.1, ...], port: 22, sessions: 8}

`offset_s` is where the behaviour's first packet goes (seconds after the benign capture's
first packet), as for attacks. Every generated packet has valid IPv4 and TCP/UDP checksums
(zero-filled payloads, whole frames). All byte work is vectorised numpy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.capture.packets.pcap import RawRecords
from detector.errors import ConfigError
from detector.eval import _behaviours as B
from detector.eval.splice import _DUMMY_SRC_MAC, _ETHERNET, AttackSpec, _network_layer, _reencapsulate, parse_attack_items
from detector.synth._frames import ETH_HEADER_BYTES, ETH_MIN_FRAME_BYTES, ipv4_rows, mac_bytes

_REQUIRED = object()
_ONSET_PORTS = [23, 80, 443, 2323, 5555, 6667, 7547, 8080, 8443, 8883, 1883, 3389]
# kind -> its parameters and their defaults (docs/EVALUATION.md, "Scenarios of history-revealed behaviour")
KINDS: dict[str, dict[str, Any]] = {
    "beacon": {"peer": _REQUIRED, "port": 443, "period_s": 300.0, "jitter_s": 30.0, "duration_s": 3600.0, "bytes_out": 400, "bytes_in": 300},
    "onset": {"peers": 20, "peer_net": "198.51.100.0/24", "ports": _ONSET_PORTS, "internal_peers": [], "dns": None, "ntp": [],
              "duration_s": 300.0, "ssh_attempts": 3},
    "upload": {"peer": _REQUIRED, "port": 443, "bytes_out": 30_000_000, "duration_s": 1200.0},
    "role_change": {"peers": _REQUIRED, "port": 22, "sessions": 8, "duration_s": 1800.0, "session_s": 120.0},
}
EVENTS = {"beacon": "BEHAVIOUR-BEACON", "onset": "BEHAVIOUR-ONSET", "upload": "BEHAVIOUR-UPLOAD", "role_change": "BEHAVIOUR-ROLE-CHANGE"}
_COMMON = ("kind", "offset_s", "host", "event", "seed")
_ADDRESS_PARAMS = ("peer", "dns")
_ADDRESS_LIST_PARAMS = ("internal_peers", "ntp", "peers")


@dataclass(frozen=True)
class ScenarioSpec:
    """One entry of `scenarios:`: a kind, where it starts, its actor and its parameters."""

    kind: str
    offset_s: float
    host: str
    params: dict[str, Any]
    event: str
    seed: int | None = None


@dataclass
class ScenarioList:
    """A scenario list file: the behaviours to insert and the attacks beside them."""

    seed: int
    home_nets: list[ipaddress.IPv4Network]
    scenarios: list[ScenarioSpec]
    attacks: list[AttackSpec] = field(default_factory=list)
    gateway: str | None = None


@dataclass
class InsertedBehaviour:
    """What one scenario became in the output: its truth row and a few counts."""

    event: str
    kind: str
    start_ns: int  # first inserted packet
    end_ns: int  # last inserted packet + one timestamp unit
    packets: int
    description: str  # attacker=IP ... target=IP ... kind=KIND packets=N ...
    session_starts_ns: np.ndarray | None = None  # absolute SYN times of the main sessions (beacon, role change)


def _check_ipv4(where: str, text: object) -> str:
    try:
        return str(ipaddress.IPv4Address(str(text)))
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IPv4 address") from None


def parse_scenario(where: str, item: object) -> ScenarioSpec:
    """One `scenarios:` entry, checked: known kind and keys, addresses, sane numbers."""
    if not isinstance(item, dict) or "kind" not in item:
        raise ConfigError(f"{where}: expected a mapping with kind ({', '.join(KINDS)}), offset_s, host and the kind's parameters")
    kind = item["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    defaults = KINDS[kind]
    unknown = set(item) - set(_COMMON) - set(defaults)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for kind {kind} (known: {', '.join([*_COMMON[1:], *defaults])})")
    missing = [k for k in ("offset_s", "host", *(k for k, v in defaults.items() if v is _REQUIRED)) if k not in item]
    if missing:
        raise ConfigError(f"{where}: kind {kind} needs {', '.join(missing)}")
    params: dict[str, Any] = {}
    for key, default in defaults.items():
        value = item.get(key, default)
        if key in _ADDRESS_PARAMS:
            params[key] = None if value is None else _check_ipv4(f"{where}: {key}", value)
        elif key in _ADDRESS_LIST_PARAMS and not (key == "peers" and kind == "onset"):
            if not isinstance(value, list) or (key == "peers" and not value):
                raise ConfigError(f"{where}: {key} must be a list of IPv4 addresses")
            params[key] = [_check_ipv4(f"{where}: {key}", v) for v in value]
        elif key == "ports":
            if not isinstance(value, list) or not value or not all(isinstance(p, int) and 0 < p < 65536 for p in value):
                raise ConfigError(f"{where}: ports must be a list of port numbers")
            params[key] = list(value)
        elif key == "peer_net":
            try:
                params[key] = str(ipaddress.IPv4Network(str(value)))
            except ValueError:
                raise ConfigError(f"{where}: peer_net {value!r} is not an IPv4 network") from None
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key}={value!r} is not a number") from None
            if not number >= 0 or (isinstance(default, int) and number != int(number)):
                raise ConfigError(f"{where}: {key}={value!r} must be a non-negative {'integer' if isinstance(default, int) else 'number'}")
            params[key] = int(number) if isinstance(default, int) else number
    _check_ranges(where, kind, params)
    try:
        offset_s = float(item["offset_s"])
    except (TypeError, ValueError):
        offset_s = -1.0
    if not offset_s >= 0:
        raise ConfigError(f"{where}: offset_s must be a number of seconds >= 0")
    seed = item.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ConfigError(f"{where}: seed must be an integer")
    return ScenarioSpec(kind, offset_s, _check_ipv4(f"{where}: host", item["host"]), params, str(item.get("event") or EVENTS[kind]), seed)


def _check_ranges(where: str, kind: str, p: dict[str, Any]) -> None:
    problems = []
    if "port" in p and not 0 < p["port"] < 65536:
        problems.append("port must be 1-65535")
    if p.get("duration_s", 1) <= 0:
        problems.append("duration_s must be > 0")
    if kind == "beacon" and not (p["period_s"] > 0 and p["jitter_s"] < p["period_s"]):
        problems.append("period_s must be > 0 and jitter_s < period_s")
    if kind in ("beacon", "upload") and p["bytes_out"] < 1:
        problems.append("bytes_out must be >= 1")
    if kind == "beacon" and p["bytes_in"] < 1:
        problems.append("bytes_in must be >= 1")
    if kind == "onset" and p["peers"] < 1:
        problems.append("peers must be >= 1")
    if kind == "role_change" and (p["sessions"] < 1 or p["session_s"] <= 0):
        problems.append("sessions must be >= 1 and session_s > 0")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def load_scenario_list(path: str | Path) -> ScenarioList:
    """A scenario list file (see the module docstring). Raises ConfigError."""
    from detector.config import read_yaml

    data, _ = read_yaml(path)
    allowed = {"seed", "home_net", "gateway", "attacks", "scenarios"}
    if not isinstance(data, dict) or set(data) - allowed or not isinstance(data.get("scenarios"), list) or not data["scenarios"]:
        raise ConfigError(f"{path}: expected `scenarios:` (a non-empty list) and optionally {', '.join(sorted(allowed - {'scenarios'}))}")
    seed = data.get("seed", 0)
    if not isinstance(seed, int):
        raise ConfigError(f"{path}: seed must be an integer")
    nets = data.get("home_net")
    nets = [nets] if isinstance(nets, str) else nets
    if not isinstance(nets, list) or not nets:
        raise ConfigError(f"{path}: home_net: give the home network(s), e.g. [192.168.1.0/24]")
    try:
        home_nets = [ipaddress.IPv4Network(str(n)) for n in nets]
    except ValueError as exc:
        raise ConfigError(f"{path}: home_net: {exc}") from None
    gateway = data.get("gateway")
    gateway = None if gateway is None else _check_ipv4(f"{path}: gateway", gateway)
    attacks = parse_attack_items(path, data["attacks"]) if data.get("attacks") else []
    specs = [parse_scenario(f"{path}: scenarios[{i}]", item) for i, item in enumerate(data["scenarios"])]
    return ScenarioList(seed, home_nets, specs, attacks, gateway)


# --------------------------------------------------------------------------------------
# What the benign capture says about its hosts: MACs and TTLs
# --------------------------------------------------------------------------------------


def _mode(values: np.ndarray) -> int | None:
    if values.size == 0:
        return None
    uniq, counts = np.unique(values, return_counts=True)
    return int(uniq[np.argmax(counts)])


class _CaptureHosts:
    """The benign capture's IPv4 frames as columns: who sends with which MAC and TTL."""

    def __init__(self, base: RawRecords, home_nets: list[ipaddress.IPv4Network], gateway: str | None) -> None:
        self.home = [(int(n.network_address), int(n.netmask)) for n in home_nets]
        l3, ethertype = _network_layer(base, base.linktype)
        end = base.offsets + base.caplens
        ok = np.flatnonzero((l3 >= 0) & (ethertype == 0x0800) & (l3 + 20 <= end))
        ok = ok[(base.data[l3[ok]] >> 4) == 4]
        at = l3[ok]
        shifts = np.array([24, 16, 8, 0])
        self.src = (base.data[at[:, None] + 12 + np.arange(4)].astype(np.int64) << shifts).sum(axis=1)
        self.dst = (base.data[at[:, None] + 16 + np.arange(4)].astype(np.int64) << shifts).sum(axis=1)
        self.ttl = base.data[at + 8].astype(np.int64)
        # multicast and broadcast often go out with their own TTL (SSDP: 255): judge by unicast
        self.unicast_src = np.where((self.dst >> 28 < 14) & (self.dst != 0xFFFFFFFF) & ((self.dst & 0xFF) != 0xFF), self.src, -1)
        self.ethernet = base.linktype == _ETHERNET
        if self.ethernet:
            start = base.offsets[ok]
            mac_shifts = np.arange(40, -8, -8)
            self.mac_dst = (base.data[start[:, None] + np.arange(6)].astype(np.int64) << mac_shifts).sum(axis=1)
            self.mac_src = (base.data[start[:, None] + 6 + np.arange(6)].astype(np.int64) << mac_shifts).sum(axis=1)
            unicast = (self.src >> 28 < 14) & (self.dst >> 28 < 14) & (self.src != 0)
            off_src, off_dst = ~self._home_mask(self.src) & unicast, ~self._home_mask(self.dst) & unicast
            gw = None if gateway is None else self.mac_of(int(ipaddress.IPv4Address(gateway)))
            dummy = int.from_bytes(_DUMMY_SRC_MAC, "big")
            # off-LAN traffic reaches the LAN through the router: its MAC as the capture shows it
            self.router_src = _mode(self.mac_src[off_src]) or gw or dummy
            self.router_dst = _mode(self.mac_dst[off_dst]) or gw or dummy

    def _home_mask(self, ip: np.ndarray) -> np.ndarray:
        inside = np.zeros(ip.shape[0], dtype=bool)
        for net, mask in self.home:
            inside |= (ip & mask) == net
        return inside

    def is_home(self, ip: int) -> bool:
        return any((ip & mask) == net for net, mask in self.home)

    def ttl_of(self, ip: int) -> int | None:
        return _mode(self.ttl[self.unicast_src == ip])

    def mac_of(self, ip: int) -> int | None:
        return _mode(self.mac_src[self.src == ip]) or _mode(self.mac_dst[self.dst == ip])

    def macs(self, ips: np.ndarray, as_source: bool) -> np.ndarray:
        """(n, 6) MACs of the frames that carry packets from (or to) `ips` on this LAN."""
        out = np.zeros((ips.shape[0], 6), dtype=np.uint8)
        for ip in np.unique(ips).tolist():
            rows = ips == ip
            if not self.is_home(ip):
                mac = self.router_src if as_source else self.router_dst
            else:
                mac = self.mac_of(ip)
            if mac is None:  # a LAN host the capture never shows: a locally administered MAC from its address
                out[rows] = mac_bytes(np.array([ip], dtype=np.uint32))[0]
            else:
                out[rows] = np.frombuffer(int(mac).to_bytes(6, "big"), dtype=np.uint8)
        return out


# --------------------------------------------------------------------------------------
# Generate and wrap
# --------------------------------------------------------------------------------------

_GENERATORS: dict[str, Callable[..., B.Behaviour]] = {
    "beacon": B.beacon, "onset": B.onset, "upload": B.upload, "role_change": B.role_change,
}


def _frames(table, hosts: _CaptureHosts, rng: np.random.Generator, linktype: int, ts_ns: np.ndarray) -> RawRecords:
    """Whole Ethernet frames (zero payloads, valid checksums) for `table`, then carried on
    `linktype` by splice's own re-encapsulation when the benign capture is not Ethernet."""
    n = len(table)
    rows, wire = ipv4_rows(table, 0, 0, 0, rng.integers(0, 1 << 16, n))
    if hosts.ethernet:
        rows[:, 0:6] = hosts.macs(table.dst.astype(np.int64), as_source=False)
        rows[:, 6:12] = hosts.macs(table.src.astype(np.int64), as_source=True)
    header = ETH_HEADER_BYTES + 20 + (rows[:, ETH_HEADER_BYTES + 20 + 12] >> 4).astype(np.int64) * 4
    header = np.where(table.proto == 6, header, ETH_HEADER_BYTES + 20 + 8)
    wire = np.maximum(wire.astype(np.int64), ETH_MIN_FRAME_BYTES)
    offsets = np.cumsum(wire) - wire
    data = np.zeros(int(wire.sum()), dtype=np.uint8)
    cols = np.arange(rows.shape[1])
    inside = cols[None, :] < header[:, None]
    data[(offsets[:, None] + cols[None, :])[inside]] = rows[inside]
    rec = RawRecords(data=data, offsets=offsets, caplens=wire.copy(), origlens=wire.copy(), ts_ns=ts_ns, linktype=_ETHERNET)
    if linktype != _ETHERNET:
        rec, _, _, _ = _reencapsulate(rec, linktype, offsets + ETH_HEADER_BYTES, np.full(n, 0x0800, dtype=np.int64))
    return rec


def _description(kind: str, behaviour: B.Behaviour, packets: int) -> str:
    who = [f"attacker={a}" for a in behaviour.attackers] + [f"target={t}" for t in behaviour.targets]
    details = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in behaviour.details.items())
    return " ".join([*who, f"kind={kind}", f"packets={packets}", details]).strip()


def build(spec: ScenarioSpec, index: int, scenarios: ScenarioList, hosts: _CaptureHosts, linktype: int, t0_ns: int,
          nanosecond: bool) -> tuple[RawRecords, InsertedBehaviour]:
    """One scenario's frames, in time order, its first packet at t0 + offset_s, and its truth."""
    rng = np.random.default_rng(spec.seed if spec.seed is not None else [scenarios.seed, index])
    view = B.Hosts(is_home=hosts.is_home, ttl_of=hosts.ttl_of)
    behaviour = _GENERATORS[spec.kind](host=spec.host, **spec.params, hosts=view, rng=rng)
    table = behaviour.packets
    order = np.argsort(table.ts_ns, kind="stable")
    table = table.take(order)
    first = int(table.ts_ns[0])
    ts = t0_ns + int(round(spec.offset_s * 1e9)) + (table.ts_ns - first)
    starts = None if behaviour.session_starts_ns is None else t0_ns + int(round(spec.offset_s * 1e9)) + behaviour.session_starts_ns - first
    if not nanosecond:  # what a microsecond pcap will hold: the truth is exact
        ts = (ts + 500) // 1000 * 1000
        starts = None if starts is None else (starts + 500) // 1000 * 1000
    rec = _frames(table, hosts, rng, linktype, ts.astype(np.int64))
    info = InsertedBehaviour(
        event=spec.event,
        kind=spec.kind,
        start_ns=int(ts[0]),
        end_ns=int(ts[-1]) + (1 if nanosecond else 1000),
        packets=len(rec),
        description=_description(spec.kind, behaviour, len(rec)),
        session_starts_ns=starts,
    )
    return rec, info


def build_all(scenarios: ScenarioList, base: RawRecords, t0_ns: int, nanosecond: bool) -> list[tuple[RawRecords, InsertedBehaviour]]:
    """Every scenario of the list, generated for the benign capture `base`."""
    hosts = _CaptureHosts(base, scenarios.home_nets, scenarios.gateway)
    return [build(spec, i, scenarios, hosts, base.linktype, t0_ns, nanosecond) for i, spec in enumerate(scenarios.scenarios)]
