"""Each entity's long-horizon memory of whom it talks to: the novelty features of a window.

Where this stands: inside the window stage (capture.windows), called by EntityWindows once per
closed window with the window's peer and port tallies (the rows its evidence is ranked from).
The LSTM carries an entity's recent past in 32 numbers; that cannot hold *which* of hundreds
of addresses and ports a host has used over the last hours, and that set is what reveals a
bot's first minutes (tens of peers and ports it never used), a host that starts serving (a
local port no one ever reached), or a beacon (one new peer that keeps coming back). So the
set lives here, bounded, and the model reads three numbers derived from it per window:

- `new_peers`: addresses the entity exchanged packets with in this window and not in the
  `history_s` before it, spread evenly over the window's bins like any count of the schema
  (a window-level count written into every bin would weigh as many times as there are bins).
  Not an address that the DNS answered (the entity, or for the network any host: `resolve`,
  from capture.packets._dns on packets, from Zeek's dns.log on its records) for a name whose registered domain the entity talked
  to in an earlier window within `history_s`: a cloud service answers its name from a new
  address every few hours, and that address is no new peer (schema v7; before, the honeypot
  bridge's first look-up of a new name under a domain it uses hourly opened an incident on
  both classes in every seed, docs/EVALUATION.md section xx). An address no answer named (an
  IP literal, a peer that called in, a C2 address hard-coded), or one of a domain new to the
  entity, counts as before. NetFlow/IPFIX records carry no DNS: there it is by address
  alone (packet schema v7, flow schema v7 with the dns.log);
- `new_ports`: TCP/UDP service ports likewise, a flow's service port being the lower of its
  two (the remote port of a connection it opened, the local port of one it accepted: a new
  destination port and a new service both count, a new ephemeral port does not), each in its
  role: a port the entity used (the remote end's), one it served (its own end's, in a flow
  it answered) and one it was only reached on (its own end's, in a flow it never answered
  or refused with a reset: a probe) are three facts. Zeek's known_services likewise counts
  a service once it answered. A workstation that has opened SMB or SSH sessions out all
  day and starts accepting them (a role change, lateral movement's first hop) serves a port
  it never served; in one port set it was a port it knew, and so was every port a scan had
  reached before (schema v6; before, such a role change went unseen here);
- `young_peer_returns`: of the young peers (outside home_net, first met by the network, which
  the window stage's `global` entity sees whole, less than `history_s` ago, after the
  entity's own warm-up, and after the entity had been watched for at least the peer's
  longest silence before a return: a peer that calls every 70 minutes, first met 63 minutes
  into a history, may have called at that beat all along), the most returns of one of them:
  windows after its first in which it had a fresh flow with the entity (one the entity's
  previous window did not hold: a new connection, or one back after a silence). A peer in a
  regular series of returns counts them all, in this window or not: at least two returns,
  gaps between contacts whose standard deviation is at most half their mean (a clock's is 0,
  random visits' about their mean), and a silence since the last contact of at most twice
  that mean. Any other young
  peer of this window counts its returns less one. So a beacon's new peer climbs one per
  contact (or per window, for a beacon faster than the window) from its second return on,
  and its level holds in the windows between the contacts for as long as the beacon keeps
  its pace; a popular site visited at random (a workstation's browsing) counts only in the
  windows that reach it; a one-off new peer, or a new one in one long session, stays at 0; a
  peer known since the warm-up is not young. A level, not a
  count: the same value in every bin. Before the level held between contacts, a 600 s beacon
  showed in one window of ten, and those windows scored like a site visited a few times (71
  windows to its first alarm); the windows between were scored as benign, though the host was
  beaconing in every one of them. Held for every series, regular or not, the synthetic demo's
  browsing workstations carried levels all day, and one opened a false incident. Two more
  limits keep it to what a beacon is (a host calling one new outside peer back, again and
  again): a peer inside home_net is never young (its returns are not counted: a file server's
  new clients, a workstation's first use of a local server or resolver: 4 false `beaconing`
  incidents on the synthetic demo), nor is a multicast group or the broadcast address (a
  device's SSDP or mDNS announcements are no calls to one party: Zeek logs the honeypot
  bridge's SSDP to 239.255.255.250 as a new connection after each minute of quiet, and its
  returns held the flow path's `young_peer_returns` at 5 to 7 for hours, schema v8; see
  docs/EVALUATION.md section xxi), and a single return is not counted (a site visited
  twice; on the benign honeypot the only returns in 22 h were single ones, and one alone
  crossed the link's threshold). But a series counts its first return once it is one
  (schema v5; v3 and v4 left it out there too): a 600 s beacon stands at 2 from its third
  contact, not 1, and at 3 from its fourth (docs/EVALUATION.md, section xi). A peer is
  young by the network's first sighting (the first sighting of `network_key`'s row for it:
  the window stage's `global`), not the entity's: the synthetic demo's workstations that
  come up after the warm-up start checking
  in with their management agent's cloud service every 5 minutes, a regular series to a peer
  the host had not met, but the other workstations had used all along (what a beacon hunter
  calls the destination's prevalence).

Nothing is counted for an entity until its own history
is `warmup_s` old: at start-up every peer would otherwise be new. A peer or port not seen for
`history_s` is forgotten; the tables hold at most `max_rows` rows each (the least recently
seen go first), so a spoofed flood costs bounded memory. And a flood is forgotten when its
entities expire (`expire`, called by the window stage): an entity that expires before its
history is warm loses its rows then, not `history_s` later. Such a history has counted
nothing yet, and every spoofed source of a flood is one (seen for a window or two). A warm
entity's history outlives its idle time, as it must: a workstation back after two quiet
hours still knows its peers and does not start an hour of warm-up again (with `warmup_s` 0
every history is warm, and only `history_s` and `max_rows` bound them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from detector.capture._addr import group_address
from detector.capture._hash import mix
from detector.capture._sets import in_sorted, sorted_unique
from detector.capture.schemas import HISTORY_FEATURES
from detector.contracts import PROTO_TCP, PROTO_UDP, DnsAnswers

# an entity's key is hashed with its table's salt before it meets the peer's or port's hash:
# a plain XOR of two address hashes would give (a, b) and (b, a) one key
_PEER_SALT = np.uint64(0x2545F4914F6CDD1D)
_PORT_SALT = np.uint64(0x5BD1E9955BD1E995)
_FLOW_SALT = np.uint64(0x9E3779B97F4A7C15)
_NAME_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_DOMAIN_SALT = np.uint64(0x165667B19E3779F9)
_TABLES = ("entities", "peers", "ports", "names", "domains")
_MAX_DOMAIN_NAMES = 1 << 16  # texts of registered domains kept for the evidence (tens of bytes each; checkpointed)
_NAMED_TABLES = ("names", "domains")  # a checkpoint written before them has neither: they start empty


_DTYPES = {"keys": np.uint64, "first": np.int64, "last": np.int64, "owner": np.uint64, "returns": np.int64,
           "back": np.int64, "gap_sq": np.float64, "silence_max": np.float64, "met": np.int64, "hi": np.uint64,
           "lo": np.uint64, "domain": np.uint64}
_BASE = ("keys", "first", "last", "owner")
# a peer row also keeps its returns, its last return (`back`), the sum of its squared gaps
# between contacts (`gap_sq`, s^2), its longest silence before a return (`silence_max`, s:
# from the last window that held it), when the network first met the peer (`met`) and its
# address
_PEER_COLUMNS = _BASE + ("returns", "back", "gap_sq", "silence_max", "met", "hi", "lo")
# a name row: an address the entity (or, for the network, any host) was answered for a name,
# keyed by (entity, address), with the registered domain of that name; first and last are
# the answers' own times. A domain row: a registered domain the entity talked to (an address
# answered for it was its peer), keyed by (entity, domain); last: the window's end
_NAME_COLUMNS = _BASE + ("domain",)
_COLUMNS = {"peers": _PEER_COLUMNS, "names": _NAME_COLUMNS}


class _Table:
    """uint64 keys, sorted, with per key the columns named in `columns` (_DTYPES): first seen,
    last seen (window ends, ns), owner (the entity's key; 0: not known, a row restored from a
    checkpoint written before owners) and, for peers, what _PEER_COLUMNS says. Every column
    is copied on each insertion: a table keeps only what it uses."""

    def __init__(self, columns: tuple[str, ...] = _BASE) -> None:
        self.columns = columns
        for col in columns:
            setattr(self, col, np.zeros(0, _DTYPES[col]))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def touch(self, keys: np.ndarray, now_ns: int, owners: np.ndarray | None = None, returned: np.ndarray | None = None,
              met: Callable[[np.ndarray], np.ndarray] | None = None, addr: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Record the sighting of unique `keys` (of entities `owners`) in the window ending at
        `now_ns`: (was new, met, returns so far: this sighting counts where `returned` says
        so, its longest silence before a return so far in s: 0 in a table without it),
        aligned with `keys`. `met(new)` says when the network met the new keys (`new`: a mask
        over keys), kept for their rows; by default, and in a table without it, a row's first
        sighting is what is returned. `addr`: the keys' peer addresses (hi, lo), kept for new
        rows."""
        pos = np.searchsorted(self.keys, keys)
        inside = pos < self.keys.shape[0]
        found = np.zeros(keys.shape[0], bool)
        found[inside] = self.keys[pos[inside]] == keys[inside]
        at = pos[found]
        if returned is not None:
            back = at[returned[found]]
            self.returns[back] += 1
            self.gap_sq[back] += ((now_ns - self.back[back]) / 1e9) ** 2
            self.silence_max[back] = np.maximum(self.silence_max[back], (now_ns - self.last[back]) / 1e9)
            self.back[back] = now_ns
        self.last[at] = now_ns
        first = np.full(keys.shape[0], now_ns, np.int64)
        first[found] = (self.met if "met" in self.columns else self.first)[at]
        if met is not None and not found.all():
            first[~found] = met(~found)
        returns = np.zeros(keys.shape[0], np.int64)
        longest = np.zeros(keys.shape[0], np.float64)
        if "returns" in self.columns:
            returns[found] = self.returns[at]
            longest[found] = self.silence_max[at]
        new = ~found
        if new.any():
            order = np.argsort(keys[new])
            where, n = pos[new][order], int(new.sum())
            hi, lo = (np.zeros(keys.shape[0], np.uint64),) * 2 if addr is None else addr
            values = {"keys": lambda: keys[new][order], "first": lambda: np.full(n, now_ns, np.int64),
                      "last": lambda: np.full(n, now_ns, np.int64), "owner": lambda: owners[new][order],
                      "returns": lambda: np.zeros(n, np.int64), "back": lambda: np.full(n, now_ns, np.int64),
                      "gap_sq": lambda: np.zeros(n, np.float64), "silence_max": lambda: np.zeros(n, np.float64),
                      "met": lambda: first[new][order],
                      "hi": lambda: np.asarray(hi, np.uint64)[new][order], "lo": lambda: np.asarray(lo, np.uint64)[new][order]}
            for col in self.columns:
                setattr(self, col, np.insert(getattr(self, col), where, values[col]()))
        return new, first, returns, longest

    def put(self, keys: np.ndarray, ts_ns: np.ndarray, owners: np.ndarray, **values: np.ndarray) -> None:
        """Record `keys` (of entities `owners`, not unique) seen at their own times `ts_ns`: a
        new key's first and last are its earliest and latest time here, a known key's last
        moves on; `values` (columns) are each key's latest."""
        order = np.lexsort((ts_ns, keys))
        keys, ts_ns, owners = keys[order], ts_ns[order], owners[order]
        values = {col: np.asarray(v)[order] for col, v in values.items()}
        ukeys, head, counts = np.unique(keys, return_index=True, return_counts=True)
        tail = head + counts - 1
        pos = np.searchsorted(self.keys, ukeys)
        inside = pos < self.keys.shape[0]
        found = np.zeros(ukeys.shape[0], bool)
        found[inside] = self.keys[pos[inside]] == ukeys[inside]
        at = pos[found]
        self.last[at] = np.maximum(self.last[at], ts_ns[tail[found]])
        for col, v in values.items():
            getattr(self, col)[at] = v[tail[found]]
        new = ~found
        if new.any():
            where = pos[new]
            fresh = {"keys": ukeys[new], "first": ts_ns[head[new]], "last": ts_ns[tail[new]],
                     "owner": owners[tail[new]], **{col: v[tail[new]] for col, v in values.items()}}
            for col in self.columns:
                setattr(self, col, np.insert(getattr(self, col), where, fresh[col].astype(_DTYPES[col])))

    def get(self, keys: np.ndarray, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(found, column `col` where found, else 0) for `keys`."""
        out = np.zeros(keys.shape[0], _DTYPES[col])
        if not len(self):
            return np.zeros(keys.shape[0], bool), out
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self) - 1)
        found = self.keys[pos] == keys
        out[found] = getattr(self, col)[pos[found]]
        return found, out

    def forget(self, before_ns: int, max_rows: int) -> None:
        """Drop keys last seen before `before_ns`, then the least recently seen beyond max_rows."""
        keep = self.last >= before_ns
        if int(keep.sum()) > max_rows:
            cut = np.partition(self.last[keep], -max_rows)[-max_rows]
            keep &= self.last >= cut
            if int(keep.sum()) > max_rows:  # ties at the cut: drop among them by key order
                extra = np.flatnonzero(keep & (self.last == cut))[: int(keep.sum()) - max_rows]
                keep[extra] = False
        self._keep(keep)

    def drop_owners(self, owners: np.ndarray) -> None:
        """Drop the rows of these entities."""
        if owners.size and self.keys.size:
            self._keep(~in_sorted(self.owner, np.sort(owners.astype(np.uint64))))

    def _keep(self, keep: np.ndarray) -> None:
        if not keep.all():
            for col in self.columns:
                setattr(self, col, getattr(self, col)[keep])


class PeerHistory:
    """The per-entity peer and port sets behind HISTORY_FEATURES (see the module's text)."""

    def __init__(self, history_s: float, warmup_s: float, max_rows: int = 1_000_000,
                 is_home: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 network_key: int | None = None) -> None:
        self.is_home = is_home  # (addr_hi, addr_lo) -> inside home_net; None: no peer is
        # the key of the entity that meets every outside peer of the network (the window
        # stage's `global`): a peer is young by its first sighting there; None: by the host's
        self.network_key = None if network_key is None else np.uint64(network_key)
        self.history_ns = int(round(history_s * 1e9))
        self.warmup_ns = int(round(warmup_s * 1e9))
        self.max_rows = max_rows
        self._entities = _Table()
        self._peers = _Table(_PEER_COLUMNS)
        self._ports = _Table()
        self._names = _Table(_NAME_COLUMNS)
        self._domains = _Table()
        self._last_flows = np.zeros(0, np.uint64)  # the previous window's flows (keys)
        self.lead: tuple[np.ndarray, ...] = _NO_LEAD  # observe's: who is behind young_peer_returns
        self.warm = np.zeros(0, bool)  # observe's: per entity row, whether its history is past its warm-up
        self._carried: tuple[int, int] | None = None  # carry_in's (ended_ns, window_ns), until the first window
        self._unshifted: list[DnsAnswers] = []  # answers that came before that window
        self.domain_names: dict[int, str] = {}  # domain key -> registered domain, most recently answered last

    @property
    def rows(self) -> int:
        return sum(len(getattr(self, f"_{name}")) for name in _TABLES)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The tables as named arrays (a checkpoint's): a restart keeps what each entity knows."""
        out = {f"{name}.{col}": getattr(table, col)
               for name in _TABLES for table in (getattr(self, f"_{name}"),) for col in table.columns}
        # the domains' texts, for the evidence: their keys, and the texts one per line
        keys = np.fromiter(self.domain_names.keys(), np.uint64, len(self.domain_names))
        text = "\n".join(n.replace("\n", " ") for n in self.domain_names.values()).encode("utf-8")
        return {**out, "last_flows": self._last_flows, "domain_names.keys": keys,
                "domain_names.text": np.frombuffer(text, np.uint8).copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Put state_dict's tables back; refuses arrays of the wrong kind or unsorted keys. A
        checkpoint written before rows had owners gives them none (0): those rows are
        forgotten after history_s, not when their entity expires; one written before the gaps
        were kept gives its rows no regular series (their levels count only in windows that
        hold the peer, as before)."""
        for name in _TABLES:
            table = _Table(_COLUMNS.get(name, _BASE))
            if name in _NAMED_TABLES and f"{name}.keys" not in state:
                setattr(self, f"_{name}", table)
                continue
            cols = {col: np.asarray(state[f"{name}.{col}"]) for col in table.columns if f"{name}.{col}" in state}
            if not {"keys", "first", "last"} <= cols.keys():
                raise ValueError(f"peer history table {name}: keys, first or last missing")
            n = cols["keys"].shape[0]
            if any(c.ndim != 1 or c.shape[0] != n for c in cols.values()) or (n > 1 and not (cols["keys"][1:] > cols["keys"][:-1]).all()):
                raise ValueError(f"peer history table {name}: columns of unequal length or keys not sorted")
            for col in table.columns:
                setattr(table, col, (cols[col] if col in cols else _missing(col, name, cols)).astype(_DTYPES[col]))
            setattr(self, f"_{name}", table)
        self._last_flows = sorted_unique(np.asarray(state["last_flows"]).astype(np.uint64))
        self.domain_names = _domain_names(state)
        self._carried = None
        pending, self._unshifted = self._unshifted, []
        for answers in pending:
            self.resolve(answers)

    def carry_in(self, state: dict[str, np.ndarray], ended_ns: int, window_ns: int) -> None:
        """Start from the history another stream ended with at `ended_ns` (the training span's,
        which a model bundle keeps), as if this stream went on from it: its times move so that
        `ended_ns` falls where this stream's first window starts (`window_ns` before its end).
        So a daemon's first hour is not blind: an entity the training span knew is warm from
        the first window, and its peers and ports are known, not new. Refuses what
        load_state_dict refuses; a checkpoint loaded after it replaces it."""
        pending, self._unshifted = self._unshifted, []
        self.load_state_dict(state)
        self._carried = (ended_ns, window_ns)
        self._unshifted = pending

    def _take_carried(self, end_ns: int) -> None:
        """At the first window (ending at `end_ns`): carry_in's times moved into this stream's."""
        if self._carried is None:
            return
        ended_ns, window_ns = self._carried
        self._carried = None
        shift = end_ns - window_ns - ended_ns
        for table in self._tables():
            for col in ("first", "last", "back", "met"):
                if col in table.columns:
                    setattr(table, col, getattr(table, col) + np.int64(shift))
        # a carried peer is known, never young: when the network met it says nothing of this
        # stream (the span may be days old, or a later hour of the day), and a peer met in the
        # span's last hours came back as a "young" series in the stream's first ones: on the
        # synthetic demo (trained on its first 4 h, replayed from its start) 14 false beacons
        self._peers.met = np.minimum(self._peers.met, np.int64(end_ns - window_ns - self.history_ns))
        for answers in self._unshifted:
            self.resolve(answers)
        self._unshifted = []

    def expire(self, entity_keys: np.ndarray, now_ns: int) -> None:
        """These entities expired at `now_ns` (the window stage gave their slots back): the rows
        of those whose history is not yet warm go now (see the module's text)."""
        self._take_carried(now_ns)
        keys = np.asarray(entity_keys, np.uint64)
        if not keys.size or not len(self._entities):
            return
        table = self._entities
        pos = np.minimum(np.searchsorted(table.keys, keys), len(table) - 1)
        known = table.keys[pos] == keys
        cold = keys[known][now_ns - table.first[pos[known]] < self.warmup_ns]
        for t in self._tables():
            t.drop_owners(cold)

    def _tables(self) -> list[_Table]:
        return [getattr(self, f"_{name}") for name in _TABLES]

    def resolve(self, answers: DnsAnswers) -> None:
        """DNS answers the capture read (capture.packets._dns, or a Zeek dns.log): each answered address, for its
        client and for the network, stands for the registered domain of the name asked, from
        the answer's time on. `observe` counts a peer standing for a domain the entity already
        talks to as no new peer (see the module's text)."""
        for key, name in answers.names.items():  # the text of each domain, for the evidence
            self.domain_names.pop(key, None)
            self.domain_names[key] = name
        while len(self.domain_names) > _MAX_DOMAIN_NAMES:  # the least recently answered go
            del self.domain_names[next(iter(self.domain_names))]
        named = answers.domain != 0
        if not named.any():
            return
        if self._carried is not None:  # a carried history's times move at the first window: these are this stream's
            self._unshifted.append(answers)
            return
        hi, lo, domain, ts = (c[named] for c in (answers.addr_hi, answers.addr_lo, answers.domain, answers.ts_ns))
        owners = [entity_key(answers.client_hi[named], answers.client_lo[named])]
        if self.network_key is not None:
            owners.append(np.full(hi.shape[0], self.network_key, np.uint64))
        n = len(owners)
        owner = np.concatenate(owners)
        self._names.put(_peer_key(owner ^ _NAME_SALT, np.tile(hi, n), np.tile(lo, n)), np.tile(ts, n).astype(np.int64),
                        owner, domain=np.tile(domain, n))

    def domains_of(self, key: int, hi: np.ndarray, lo: np.ndarray) -> list[str | None]:
        """The registered domain each address (hi, lo) was answered for, to the entity `key`
        (for the network, to any host), as text; None where no answer named it or its text is
        not known (kept for the most recently answered _MAX_DOMAIN_NAMES domains)."""
        if not len(self._names) or not self.domain_names or not len(hi):
            return [None] * len(hi)
        keys = np.full(len(hi), key, np.uint64)
        found, domain = self._names.get(_peer_key(keys ^ _NAME_SALT, np.asarray(hi, np.uint64), np.asarray(lo, np.uint64)),
                                        "domain")
        return [self.domain_names.get(d) if f else None for f, d in zip(found.tolist(), domain.tolist(), strict=True)]

    def observe(self, entity_keys: np.ndarray, peers: Sequence[np.ndarray], flows: Sequence[np.ndarray],
                end_ns: int) -> np.ndarray:
        """One closed window (every window, in order, empty ones too): `entity_keys` (uint64
        per entity row of the window, any unique key per entity), `peers` (row, addr_hi,
        addr_lo) and `flows` (row, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, as
        the initiator sent them[, answers: packets the entity sent in it that were no refusal;
        without it, every flow counts as answered]) columns, rows indexing entity_keys. Returns float32
        (entities, 3): HISTORY_FEATURES per window (the caller spreads counts over the bins).
        Leaves in `lead` the peer behind each row's young_peer_returns (row, level, addr_hi,
        addr_lo; level > 0), in this window or not: the beacon an incident should name."""
        self._take_carried(end_ns)
        n = entity_keys.shape[0]
        out = np.zeros((n, len(HISTORY_FEATURES)), np.float32)
        self.lead = _NO_LEAD
        self.warm = np.zeros(n, bool)
        before = end_ns - self.history_ns
        for table in self._tables():
            table.forget(before, self.max_rows)
        p_row, p_hi, p_lo = (np.asarray(c) for c in peers[:3])
        f_row, f_proto, s_hi, s_lo, d_hi, d_lo, f_sport, f_dport = (np.asarray(c) for c in flows[:8])
        answered = np.asarray(flows[8]) > 0 if len(flows) > 8 else np.ones(f_row.shape[0], bool)
        p_row, f_row = p_row.astype(np.int64), f_row.astype(np.int64)
        # a flow is fresh when the entity's previous window did not hold it: a new connection,
        # or one that came back after a silence (not the next window of a long session)
        u64 = np.uint64
        f_key = mix(mix(mix(mix(mix(mix(entity_keys[f_row] ^ _FLOW_SALT) ^ s_hi.astype(u64)) ^ s_lo.astype(u64))
                                ^ d_hi.astype(u64)) ^ d_lo.astype(u64))
                    ^ ((f_proto.astype(u64) << u64(32)) | (f_sport.astype(u64) << u64(16)) | f_dport.astype(u64)))
        fresh = ~in_sorted(f_key, self._last_flows)
        self._last_flows = sorted_unique(f_key)
        active = sorted_unique(np.concatenate([p_row, f_row]))
        if active.size == 0:
            return out
        _, since, _, _ = self._entities.touch(entity_keys[active], end_ns, entity_keys[active])
        started = np.full(n, end_ns, np.int64)
        started[active] = since
        warm = end_ns - started >= self.warmup_ns
        self.warm = warm
        if p_row.size:
            key = _peer_key(entity_keys[p_row], p_hi, p_lo)
            key, first_row = np.unique(key, return_index=True)
            rows = p_row[first_row]
            a_hi, a_lo = p_hi[first_row].astype(u64), p_lo[first_row].astype(u64)
            both_ends = np.concatenate([_peer_key(entity_keys[f_row[fresh]], s_hi[fresh], s_lo[fresh]),
                                        _peer_key(entity_keys[f_row[fresh]], d_hi[fresh], d_lo[fresh])])
            returned = in_sorted(key, np.sort(both_ends))
            returned &= ~group_address(a_hi, a_lo)  # nor is a multicast group: many hosts' announcements
            if self.is_home is not None:  # a peer inside home_net is never young: its returns are not counted
                returned &= ~self.is_home(a_hi, a_lo)
            network_met = None if self.network_key is None else (lambda new: self._network_met(a_hi[new], a_lo[new], end_ns))
            new, met, returns, longest = self._peers.touch(key, end_ns, entity_keys[rows], returned=returned,
                                                           met=network_met, addr=(a_hi, a_lo))
            counted = warm[rows]
            out[:, 0] = np.bincount(rows[new & ~self._named_known(entity_keys[rows], a_hi, a_lo, end_ns) & counted],
                                    minlength=n)
            young = ~new & counted & self._young(met, started[rows], longest, end_ns)
            young &= returns >= 2
            here = (rows[young], returns[young] - 1, a_hi[young], a_lo[young])
        else:
            here = _NO_LEAD
        self.lead = _leads(here, self._in_series(entity_keys, active, started, warm, end_ns))
        out[self.lead[0], 2] = self.lead[1]
        tcp_udp = np.isin(f_proto.astype(u64), (PROTO_TCP, PROTO_UDP))
        if tcp_udp.any():
            # a flow's service port is the lower of its two: the local port of a reply is an
            # ephemeral one, new for every connection the entity opens, and no news. It is
            # served when it is the entity's own end's: a port used and a port served are two
            # facts (see the module's text)
            q_row = f_row[tcp_udp]
            q_key = entity_keys[q_row]
            sport, dport = f_sport[tcp_udp].astype(u64), f_dport[tcp_udp].astype(u64)
            served = self._served(q_key, s_hi[tcp_udp], s_lo[tcp_udp], d_hi[tcp_udp], d_lo[tcp_udp], sport, dport)
            # a port the entity served: 1 if it answered, 2 if it only was reached (a probe)
            role = np.where(served, np.where(answered[tcp_udp], u64(1), u64(2)), u64(0)) << u64(24)
            service = np.minimum(sport, dport)
            key = mix(mix(q_key ^ _PORT_SALT) ^ mix(role | (f_proto[tcp_udp].astype(u64) << u64(16)) | service))
            key, first_row = np.unique(key, return_index=True)
            rows = q_row[first_row]
            new, _, _, _ = self._ports.touch(key, end_ns, entity_keys[rows])
            out[:, 1] = np.bincount(rows[new & warm[rows]], minlength=n)
        return out


    def _named_known(self, keys: np.ndarray, hi: np.ndarray, lo: np.ndarray, end_ns: int) -> np.ndarray:
        """Per peer row (entity `keys`, address hi/lo) of a window ending at `end_ns`: whether
        the address stands for a registered domain the entity talked to in an earlier window
        within history_s (a cloud service's new address, not a new peer); and each named
        row's domain is talked to now."""
        if not len(self._names):
            return np.zeros(keys.shape[0], bool)
        n_key = _peer_key(keys ^ _NAME_SALT, hi, lo)
        found, domain = self._names.get(n_key, "domain")
        _, first = self._names.get(n_key, "first")
        named = found & (first < end_ns)  # answered before the window ended
        known = np.zeros(keys.shape[0], bool)
        if named.any():
            d_key = mix(mix(keys[named] ^ _DOMAIN_SALT) ^ domain[named])
            known[named], _ = self._domains.get(d_key, "last")
            now = np.full(d_key.shape[0], end_ns, np.int64)
            self._domains.put(d_key, now, keys[named])
            # an address in use keeps its name (a client reuses an answer as long as it likes)
            self._names.put(n_key[named], now, keys[named], domain=domain[named])
        return known

    def _served(self, keys: np.ndarray, s_hi: np.ndarray, s_lo: np.ndarray, d_hi: np.ndarray, d_lo: np.ndarray,
                sport: np.ndarray, dport: np.ndarray) -> np.ndarray:
        """Whether each flow's entity (`keys`) is the service end of it: its own end's port is
        the lower one. A host's end is the one whose address hashes to its key (entity_key);
        any other key (a test's) takes the destination's. The network's (network_key) is the
        end inside home_net of a flow that crosses it; a flow between two hosts inside is
        none of its services (whichever packet of it the capture saw first), and with no
        home_net every flow is one it used."""
        from_src = entity_key(s_hi, s_lo) == keys
        local, remote = np.where(from_src, sport, dport), np.where(from_src, dport, sport)
        served = local < remote
        if self.network_key is not None:
            network = keys == self.network_key
            if self.is_home is None:
                served[network] = False
            elif network.any():
                u64 = np.uint64
                s_home = self.is_home(s_hi[network].astype(u64), s_lo[network].astype(u64))
                d_home = self.is_home(d_hi[network].astype(u64), d_lo[network].astype(u64))
                own = np.where(s_home, sport[network], dport[network])
                other = np.where(s_home, dport[network], sport[network])
                served[network] = (s_home != d_home) & (own < other)
        return served

    def _young(self, met: np.ndarray, started: np.ndarray, longest: np.ndarray, end_ns: int) -> np.ndarray:
        """Whether peers the network met at `met` are young to entities whose history started
        at `started`, each silent for at most `longest` s before a return so far: met after
        the entity's warm-up, less than history_s ago, and after the entity had been watched
        for at least that longest silence. A peer that calls every 70 minutes, first seen 63
        minutes into a history, may have called at that beat all along, its last call just
        before the history began: it is not known to be new. (Fold B's 6 h of honeypot
        training began 8 minutes after the device's NTP sync, which comes about every 70
        minutes: its server, met 3 minutes after the warm-up, became a "young" regular series
        of 5 returns, and its error on held-out windows gave `young_peer_returns` a scale
        that hid the beacons: docs/EVALUATION.md, section xvii.)"""
        watched_s = (met - started) / 1e9
        return (met >= started + self.warmup_ns) & (end_ns - met < self.history_ns) & (watched_s >= longest)

    def _network_met(self, hi: np.ndarray, lo: np.ndarray, end_ns: int) -> np.ndarray:
        """When the network first met each peer (hi, lo): the network entity's own row's first
        sighting, or this window if it has none. A peer the other hosts have used for hours is
        not young to a host that meets it now (a workstation that starts the day, and its
        agent's check-ins), whatever the host's own history says."""
        t = self._peers
        key = _peer_key(np.full(hi.shape[0], self.network_key), hi, lo)
        pos = np.minimum(np.searchsorted(t.keys, key), max(len(t) - 1, 0))
        known = (t.keys[pos] == key) if len(t) else np.zeros(key.shape[0], bool)
        return np.where(known, t.first[pos] if len(t) else 0, end_ns)

    def _in_series(self, entity_keys: np.ndarray, active: np.ndarray, started: np.ndarray, warm: np.ndarray,
                   end_ns: int) -> tuple[np.ndarray, ...]:
        """The young peers of the active warm entities in a regular series, in this window or
        not, as (row, returns, addr_hi, addr_lo): at
        least two returns, gaps between contacts whose standard deviation is at most half their
        mean (a clock's is 0, random visits' about their mean), and a silence since the peer
        was last seen of at most twice that mean."""
        t = self._peers
        if active.size == 0:
            return _NO_LEAD
        # the two cheap tests over the whole table first: a flood's spoofed sources that come
        # back (a replayed flood, one a day) are hundreds of thousands of rows past their youth
        idx = np.flatnonzero((t.returns >= 2) & (t.met > end_ns - self.history_ns))
        if idx.size == 0:
            return _NO_LEAD
        mean = (t.back[idx] - t.first[idx]) / 1e9 / t.returns[idx]
        regular = t.gap_sq[idx] / t.returns[idx] - mean**2 <= (mean / 2) ** 2
        idx, mean = idx[regular], mean[regular]
        met, last, returns, longest = t.met[idx], t.last[idx], t.returns[idx], t.silence_max[idx]
        order = np.argsort(entity_keys[active])
        sorted_keys = entity_keys[active][order]
        pos = np.minimum(np.searchsorted(sorted_keys, t.owner[idx]), sorted_keys.shape[0] - 1)
        mine = sorted_keys[pos] == t.owner[idx]
        row = active[order[pos[mine]]]
        met, last, returns, longest = met[mine], last[mine], returns[mine], longest[mine]
        mean = mean[mine]
        young = (warm[row] & self._young(met, started[row], longest, end_ns)
                 & ((end_ns - last) / 1e9 <= 2.0 * mean))
        at = idx[mine][young]
        return row[young], returns[young], t.hi[at], t.lo[at]


def _missing(col: str, table: str, cols: dict[str, np.ndarray]) -> np.ndarray:
    """What a checkpoint written before column `col` gives the rows of `table`."""
    n = cols["keys"].shape[0]
    if col == "owner":  # an entity owns its own row; a peer's or port's is not known
        return cols["keys"].copy() if table == "entities" else np.zeros(n, np.uint64)
    if col in ("back", "met"):  # no return yet; the network's first sighting: the row's own
        return cols["last" if col == "back" else "first"].copy()
    if col == "gap_sq":  # no regular series until it has its own gaps
        return np.full(n, np.inf)
    return np.zeros(n, _DTYPES[col])


_NO_LEAD = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64))


def _leads(*candidates: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Per entity row, the candidate (row, level, addr_hi, addr_lo) with the highest level."""
    row, level, hi, lo = (np.concatenate(c) for c in zip(*candidates, strict=True))
    order = np.lexsort((-level, row))
    _, first = np.unique(row[order], return_index=True)
    pick = order[first]
    return row[pick], level[pick].astype(np.float32), hi[pick].astype(np.uint64), lo[pick].astype(np.uint64)


def _domain_names(state: dict[str, np.ndarray]) -> dict[int, str]:
    """state_dict's domain texts back (none in a checkpoint written before them)."""
    if "domain_names.keys" not in state:
        return {}
    keys = np.asarray(state["domain_names.keys"]).astype(np.uint64).tolist()
    try:
        texts = bytes(np.asarray(state.get("domain_names.text", np.zeros(0, np.uint8))).astype(np.uint8)).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("peer history: domain texts are not UTF-8") from None
    names = texts.split("\n") if keys else []
    if len(names) != len(keys):
        raise ValueError(f"peer history: {len(keys)} domain keys but {len(names)} texts")
    return dict(zip(keys, names, strict=True))


def entity_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A host entity's key in the history: its address (hi, lo) hashed (the window stage's
    slots are reused, addresses not); never 0, which the window stage gives `global`."""
    return mix(mix(np.asarray(hi, np.uint64)) ^ np.asarray(lo, np.uint64)) | np.uint64(1)


def _peer_key(entity_keys: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return mix(mix(entity_keys ^ _PEER_SALT) ^ mix(mix(hi.astype(np.uint64)) ^ lo.astype(np.uint64)))
