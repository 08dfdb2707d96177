"""What an anomalous window says happened: the entity's role, its counterpart, the category.

Where it stands: in the alerting stage, between the scorer's reading of a window (the features
furthest from what was expected, `WindowScore.moved`, in real units, and its evidence:
busiest peers, ports and flows) and the incident
lifecycle (incidents.py), which calls it through the rules (rules.py: an operator's category
rules and ATT&CK mapping come first). The formats put the result on the sides SIEM content
reads: the originator as `source`, the target as `destination`.

Everything here is a reading of at most a few features and five evidence rows, so each rule
is a plain predicate with named thresholds, and an unknown feature name only counts by its
direction suffix (`*_out`, `*_in`). The rules, in the order they are tried, and the features
that drive each are documented in README.md ("Incident categories").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from detector.alerting._text import as_ip, finite, integer
from detector.contracts import FeatureContribution, WindowEvidence, WindowScore

Role = Literal["originator", "target"]
ORIGINATOR: Role = "originator"
TARGET: Role = "target"


@dataclass(frozen=True)
class Category:
    name: str
    title: str  # what a SOC reads (the CEF event name)
    techniques: tuple[str, ...]  # MITRE ATT&CK ids (attack.py)


# The built-in categories and the ATT&CK techniques each maps to (README.md says why).
CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("scan", "Port scan", ("T1046",)),
    Category("sweep", "Host sweep", ("T1018", "T1046")),
    Category("brute-force", "Brute force", ("T1110",)),
    Category("flood", "Flood", ("T1498", "T1499")),
    Category("amplification", "Reflection / amplification flood", ("T1498.002",)),
    Category("beaconing", "Beaconing", ("T1071",)),
    Category("exfiltration-like", "Exfiltration-like volume", ("T1041", "T1048")),
    Category("new-service", "New service", ("T1021",)),
    Category("unusual-for-host", "Unusual traffic for this host", ()),
)}
FALLBACK = "unusual-for-host"

# ---- thresholds (observed values are per time bin, as the scorer reports them)
ROLE_MARGIN = 0.05  # the features lean one way by less than this share: the evidence decides
DOMINANT_SHARE = 0.5  # a peer with at least this share of the top peers' packets is the counterpart
PROBE_MAX_PACKETS = 3  # a flow this small is a probe (SYN, SYN-ACK/RST): scans and sweeps
SESSION_MIN_PACKETS = 4  # a flow this large got past the handshake: a login attempt, not a probe
SMALL_PACKET_BYTES = 600  # brute force: short request/response packets
LARGE_PACKET_BYTES = 400  # amplification: responses much larger than the queries that caused them
DISTINCT_MIN = 3  # distinct ports to one peer (scan), or peers on one port (sweep), in the evidence
SCAN_MIN_PORTS = 10  # distinct ports per bin that make a scan whatever the evidence shows
FLOOD_MIN_PER_BIN = 1000.0  # packets or flows per bin: beyond any login or scan rate but masscan's

# Features whose growth says which way the traffic went: `*_out` the entity sent, `*_in` it
# received. Refusals travel back: `rst_in` is the peers' answer to what the entity started,
# `rst_out` its answer to what it received. The novelty features have no direction; they lean
# to the originator at half weight, so that in-features, when they drive too, decide.
_REPLIES: dict[str, Role] = {"rst_in": ORIGINATOR, "rst_out": TARGET}
_NOVELTY = ("new_peers", "new_ports", "young_peer_returns")
_NOVELTY_WEIGHT = 0.5

_PROBES_OUT = ("syn_out", "syn_only_out", "flows_out", "rst_in", "ports_out", "peers_out", "icmp_err")
_PROBES_IN = ("syn_in", "syn_only_in", "flows_in", "rst_out", "ports_in", "icmp_err")
_SESSIONS = ("flows_in", "flows_out", "syn_in", "syn_out", "syn_only_in", "syn_only_out", "rst_in", "rst_out",
             "pkts_in", "pkts_out")
_VOLUME_IN = ("syn_in", "syn_only_in", "pkts_in", "flows_in", "peers_in")  # counted in packets, flows or hosts
_VOLUME_OUT = ("syn_out", "syn_only_out", "pkts_out", "flows_out")
_SIZED = ("bytes_in", "bytes_out", "pkts_in", "pkts_out", "mean_pkt_bytes")  # features of any packet size


@dataclass(frozen=True)
class Classification:
    """An anomalous window's reading: its category, the entity's role, and the addresses on
    each side ("" where no single host is known: a sweep's targets, a spoofed flood's sources)."""

    category: str
    role: Role
    originator: str = ""
    target: str = ""
    techniques: tuple[str, ...] = ()


def lean(name: str) -> tuple[Role | None, float]:
    """Which role a growing feature points to, and how strongly (0: it says nothing)."""
    if name in _REPLIES:
        return _REPLIES[name], 1.0
    if name in _NOVELTY:
        return ORIGINATOR, _NOVELTY_WEIGHT
    if name.endswith("_out"):
        return ORIGINATOR, 1.0
    if name.endswith("_in"):
        return TARGET, 1.0
    return None, 0.0


@dataclass
class _Flow:
    """An evidence flow seen from the entity: who the peer is, whose port serves."""

    peer: str
    entity_port: int
    peer_port: int
    udp: bool
    packets: int

    @property
    def entity_serves(self) -> bool | None:
        """True when the entity's side is the service (the lower port), None when unclear."""
        if self.entity_port == self.peer_port:
            return None
        return self.entity_port < self.peer_port


@dataclass
class _Window:
    """The parts of a WindowScore the rules read, parsed once."""

    score: WindowScore
    drivers: dict[str, FeatureContribution] = field(default_factory=dict)
    flows: list[_Flow] = field(default_factory=list)
    counterpart: str = ""

    @property
    def lead(self) -> str:
        return self.score.moved[0].name if self.score.moved else ""

    def observed(self, name: str) -> float:
        c = self.drivers.get(name)
        value = finite(c.observed, 6) if c is not None else None
        return value if value is not None else 0.0

    def drives(self, names: Iterable[str]) -> bool:
        return any(n in self.drivers for n in names)

    def magnitude(self, names: Iterable[str]) -> float:
        return max((self.observed(n) for n in names), default=0.0)


def classify(score: WindowScore) -> Classification:
    """The built-in reading of one anomalous window (rules.RuleSet.classify lets an operator's
    rules override the category and its techniques)."""
    window = _parse(score)
    role = _role_of(window)
    if score.entity_class != "global":
        window.counterpart = _counterpart(window)
    name = _category(window, role)
    counterpart = "" if name == "sweep" else window.counterpart  # a sweep has no one target
    entity = as_ip(score.entity) or ""
    if score.entity_class == "global":
        originator = target = ""  # the tracker names the link's dominant hosts
    elif role == ORIGINATOR:
        originator, target = entity, counterpart
    else:
        originator, target = counterpart, entity
    category = CATEGORIES.get(name)
    return Classification(name, role, originator, target, category.techniques if category else ())


def _role_of(window: _Window) -> Role:
    """Originator or target: by the features' shares, else by the side of its flows the entity
    serves, else originator (it is the entity whose own behaviour changed)."""
    weight: dict[Role, float] = {ORIGINATOR: 0.0, TARGET: 0.0}
    for c in window.score.moved:
        role, strength = lean(c.name)
        share = finite(c.share, 6)
        if role is not None and share is not None and share > 0:
            weight[role] += strength * share
    if abs(weight[ORIGINATOR] - weight[TARGET]) > ROLE_MARGIN:
        return ORIGINATOR if weight[ORIGINATOR] > weight[TARGET] else TARGET
    serving = sum(f.packets for f in window.flows if f.entity_serves is True)
    calling = sum(f.packets for f in window.flows if f.entity_serves is False)
    if serving != calling:
        return TARGET if serving > calling else ORIGINATOR
    return ORIGINATOR if weight[ORIGINATOR] >= weight[TARGET] else TARGET


def _parse(score: WindowScore) -> _Window:
    window = _Window(score, drivers={c.name: c for c in score.moved})
    entity = as_ip(score.entity)
    evidence = score.evidence or WindowEvidence()
    for f in evidence.top_flows:
        if not isinstance(f, dict) or entity is None or str(f.get("proto")).lower() not in ("tcp", "6", "udp", "17"):
            continue
        src, dst = as_ip(f.get("src")), as_ip(f.get("dst"))
        sport, dport, packets = integer(f.get("sport")), integer(f.get("dport")), integer(f.get("packets"))
        if sport is None or dport is None:
            continue
        udp = str(f.get("proto")).lower() in ("udp", "17")
        if src == entity and dst is not None:
            window.flows.append(_Flow(dst, sport, dport, udp, max(packets or 0, 0)))
        elif dst == entity and src is not None:
            window.flows.append(_Flow(src, dport, sport, udp, max(packets or 0, 0)))
    return window


def _peers(score: WindowScore) -> list[tuple[str, int, int]]:
    """(address, packets, bytes) of the evidence's peers, the entity itself left out."""
    out = []
    for p in (score.evidence or WindowEvidence()).top_peers:
        ip = as_ip(p.get("ip")) if isinstance(p, dict) else None
        if ip is not None and ip != as_ip(score.entity):
            out.append((ip, max(integer(p.get("packets")) or 0, 0), max(integer(p.get("bytes")) or 0, 0)))
    return out


def _returning(score: WindowScore) -> str:
    """The evidence's young peer that keeps coming back (the one with the most `returns`)."""
    best, most = "", 0
    for p in (score.evidence or WindowEvidence()).top_peers:
        ip = as_ip(p.get("ip")) if isinstance(p, dict) else None
        returns = integer(p.get("returns")) if isinstance(p, dict) else None
        if ip is not None and ip != as_ip(score.entity) and returns is not None and returns > most:
            best, most = ip, returns
    return best


def _counterpart(window: _Window) -> str:
    """The peer with the most packets, if it dominates the evidence and carries at least one
    bin's worth of what drives the anomaly (a benign peer beside a spoofed flood does not).
    When only handshakes and counts drive it (SYNs, resets, connections, distinct peers or
    ports: small packets), peers whose packets are bulk-sized are not candidates: a file
    transfer beside a scan has as many packets as the scanner, and is not it."""
    if window.lead == "young_peer_returns":
        returning = _returning(window.score)
        if returning:
            return returning  # the beacon's peer, named by the window stage even between its contacts
    peers = _peers(window.score)
    if not window.drives(_SIZED):
        peers = [p for p in peers if p[2] <= SMALL_PACKET_BYTES * p[1]]
    total = sum(packets for _, packets, _ in peers)
    if not peers or total <= 0:
        return ""
    ip, packets, _ = max(peers, key=lambda p: p[1])
    if packets < DOMINANT_SHARE * total:
        return ""
    counted = [window.observed(c.name) for c in window.score.moved if c.unit in ("packets", "flows")]
    if counted and packets < max(counted):
        return ""
    return ip


def _udp_share(window: _Window) -> float:
    ports = [p for p in (window.score.evidence or WindowEvidence()).top_ports if isinstance(p, dict)]
    total = sum(max(integer(p.get("packets")) or 0, 0) for p in ports)
    udp = sum(max(integer(p.get("packets")) or 0, 0) for p in ports if str(p.get("proto")).lower() in ("udp", "17"))
    return udp / total if total > 0 else 0.0


def _bytes_per_packet(window: _Window) -> float:
    peers = _peers(window.score)
    packets = sum(p for _, p, _ in peers)
    mean = sum(b for _, _, b in peers) / packets if packets > 0 else 0.0
    return max(mean, window.observed("mean_pkt_bytes"))


def _category(window: _Window, role: Role) -> str:
    if window.lead == "young_peer_returns":
        return "beaconing"  # one young peer keeps coming back, whoever started it
    rules = _ORIGINATOR_RULES if role == ORIGINATOR else _TARGET_RULES
    for rule in rules:
        found = rule(window)
        if found:
            return found
    return FALLBACK


# ---------------------------------------------------------------- the rules, in order


def _amplification_target(w: _Window) -> str | None:
    """Large UDP datagrams pour in from many sources: reflected, amplified responses."""
    many = not w.counterpart or "peers_in" in w.drivers
    volume = w.drives(("bytes_in", "pkts_in", "mean_pkt_bytes", "peers_in", "flows_in"))
    if volume and many and _udp_share(w) >= 0.5 and _bytes_per_packet(w) >= LARGE_PACKET_BYTES:
        return "amplification"
    return None


def _amplification_reflector(w: _Window) -> str | None:
    """The entity answers UDP queries with large responses towards one address: a reflector."""
    udp = [f for f in w.flows if f.udp]
    serving = sum(f.packets for f in udp if f.entity_serves) > sum(f.packets for f in udp if f.entity_serves is False)
    volume = w.drives(("bytes_out", "pkts_out", "mean_pkt_bytes", "flows_out"))
    if volume and serving and _udp_share(w) >= 0.5 and _bytes_per_packet(w) >= LARGE_PACKET_BYTES:
        return "amplification"
    return None


def _brute_force(w: _Window) -> str | None:
    """Repeated sessions between the entity and its counterpart on one service port, with
    short packets: login attempts. A flood's flows never get past the handshake."""
    if not w.counterpart or not w.drives(_SESSIONS):
        return None
    sessions: defaultdict[int, list[int]] = defaultdict(list)
    for f in w.flows:
        if f.peer == w.counterpart and f.entity_serves is not None:
            sessions[f.entity_port if f.entity_serves else f.peer_port].append(f.packets)
    if not sessions:
        return None
    counts = max(sessions.values(), key=len)
    if len(counts) < 2 or sum(counts) / len(counts) < SESSION_MIN_PACKETS:
        return None
    return "brute-force" if _bytes_per_packet(w) <= SMALL_PACKET_BYTES else None


def _probe_spread(w: _Window) -> str | None:
    """Scan or sweep from the probe-sized flows the entity started: many ports of one peer,
    or one port of many peers."""
    probes = [f for f in w.flows if f.entity_serves is False and f.packets <= PROBE_MAX_PACKETS]
    ports_of: defaultdict[str, set[int]] = defaultdict(set)
    peers_of: defaultdict[int, set[str]] = defaultdict(set)
    for f in probes:
        ports_of[f.peer].add(f.peer_port)
        peers_of[f.peer_port].add(f.peer)
    if max((len(v) for v in ports_of.values()), default=0) >= DISTINCT_MIN:
        return "scan"
    if max((len(v) for v in peers_of.values()), default=0) >= DISTINCT_MIN:
        return "sweep"
    return None


def _breadth(w: _Window) -> str | None:
    """Scan (many ports, few peers) or sweep (few ports, many peers), from the features when
    they say it, else from the probe flows."""
    if w.drives(("ports_out", "peers_out")) or (w.drives(_PROBES_OUT) and w.drives(("new_ports", "new_peers"))):
        ports = w.magnitude(("ports_out", "new_ports"))
        peers = w.magnitude(("peers_out", "new_peers"))
        if not w.drives(("peers_out", "new_peers")):
            return "scan"
        if not w.drives(("ports_out", "new_ports")):
            return "sweep"
        return "scan" if ports >= peers else "sweep"
    return _probe_spread(w)


def _exfiltration(w: _Window) -> str | None:
    """Bytes out drive the anomaly: bulk data leaving (over UDP, a flood instead)."""
    if w.lead != "bytes_out":
        return None
    return "flood" if _udp_share(w) >= 0.5 else "exfiltration-like"


def _scan_or_sweep(w: _Window) -> str | None:
    """Probes without a clear spread: one dominant peer makes it a scan of that peer."""
    if w.drives(_PROBES_OUT):
        return _breadth(w) or ("scan" if w.counterpart else "sweep")
    return None


def _flood_out(w: _Window) -> str | None:
    """Packets or connections out at a flood's rate, to few ports and peers."""
    return "flood" if w.magnitude(_VOLUME_OUT) >= FLOOD_MIN_PER_BIN else None


def _spread_out(w: _Window) -> str | None:
    """Scan or sweep, when the features or the probe flows show which (before a flood: a
    fast scan or sweep runs at a flood's rate)."""
    return _breadth(w) if w.drives(_PROBES_OUT) else None


_ORIGINATOR_RULES = (_amplification_reflector, _exfiltration, _brute_force, _spread_out, _flood_out, _scan_or_sweep)


def _scan_target(w: _Window) -> str | None:
    """Many of the entity's ports probed at once: it is being scanned."""
    if w.observed("ports_in") >= SCAN_MIN_PORTS:
        return "scan"
    ports = {f.entity_port for f in w.flows
             if f.peer == w.counterpart and f.entity_serves and f.packets <= PROBE_MAX_PACKETS}
    return "scan" if w.counterpart and len(ports) >= DISTINCT_MIN else None


def _flood_target(w: _Window) -> str | None:
    """Packets, connections or sources in at a flood's rate, or from no dominant source."""
    if not w.drives(_VOLUME_IN + ("bytes_in",)):
        return None
    if w.magnitude(_VOLUME_IN) >= FLOOD_MIN_PER_BIN or not w.counterpart:
        return "flood"
    return None


def _refusing(w: _Window) -> str | None:
    """The entity refuses one peer's connections (resets): the target of its probes."""
    return "scan" if "rst_out" in w.drivers and w.counterpart else None


def _new_service(w: _Window) -> str | None:
    """Ports the entity never used receive traffic: it started serving something."""
    return "new-service" if "new_ports" in w.drivers else None


def _few_new_ports(w: _Window) -> str | None:
    """A handful of new ports (the service's and its first clients'), before the brute-force
    rule: nobody brute-forces a port that never served. Many new ports are a scan's, a
    flood's or a brute force's (every new session brings a new client port)."""
    return _new_service(w) if 0 < w.observed("new_ports") < SCAN_MIN_PORTS else None


def _probed(w: _Window) -> str | None:
    """One dominant peer's connection attempts drive the anomaly: the target of its probes."""
    return "scan" if w.counterpart and w.drives(_PROBES_IN) else None


_TARGET_RULES = (_amplification_target, _few_new_ports, _brute_force, _scan_target, _flood_target, _refusing, _new_service, _probed)
