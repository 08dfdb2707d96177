"""What both window aggregators share: home-net membership, entity slots, open windows,
closing and expiry, and evidence ranked on demand.

Where this stands: the window stage (capture.windows), below its two aggregators:
`packet.WindowAggregator` (PacketBatch + flow annotations, PACKET_SCHEMA) and
`flow.FlowWindowAggregator` (FlowRecordBatch, FLOW_SCHEMA). A subclass sets SCHEMA, SUMS and
DISTINCT and fills its open windows from its own input; everything after that is here.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detector.capture.flows import community_id_of_pairs
from detector.capture.schemas import HISTORY_FEATURES, HISTORY_LEVELS
from detector.capture.windows._history import PeerHistory, entity_key
from detector.contracts import (
    ENTITY_GLOBAL,
    CarriedHistory,
    FeatureSchema,
    LinkHosts,
    WindowBatch,
    WindowEvidence,
    addr_to_pair,
    pair_to_addr,
)

RATIOS = frozenset({"mean_pkt_bytes"})  # features that are a ratio of others: no host's to add up


def known_rows(feats: np.ndarray, schema: FeatureSchema, warm: np.ndarray) -> np.ndarray:
    """Per entity row of a window (`feats`: entities, bins, features, the novelty features
    filled), whether it is *known* in the window: its history past its warm-up (`warm`,
    PeerHistory.warm) and nothing new to it (no peer or port its history did not know, no
    young peer coming back)."""
    novel = sorted(schema.features.index(n) for n, _ in HISTORY_FEATURES if n in schema.features)
    if not novel:
        return np.asarray(warm, bool).copy()
    columns = slice(novel[0], novel[-1] + 1) if novel == list(range(novel[0], novel[-1] + 1)) else novel  # a view, not a copy
    return np.asarray(warm, bool) & ~(feats[:, :, columns] > 0).any(axis=(1, 2))


def link_hosts_of(feats: np.ndarray, names: list[str], schema: FeatureSchema, known: np.ndarray) -> LinkHosts:
    """What a window's link (row 0) holds of its home hosts (the rows after it): `feats`
    (entities, bins, features), `known` (entities,: known_rows). See LinkHosts."""
    where = {name: i for i, name in enumerate(schema.features)}
    means = np.einsum("nbf->nf", feats[1:]).astype(np.float64) / feats.shape[1]  # 4x numpy's mean over the middle axis
    values = means.copy()
    for name, i in where.items():
        other = name[:-4] + "_in" if name.endswith("_out") else name[:-3] + "_out" if name.endswith("_in") else ""
        if other in where:
            values[:, i] += means[:, where[other]]
    ratio = [where[n] for n in RATIOS if n in where]
    values[:, ratio] = np.nan
    known = np.asarray(known[1:], bool)
    news = values[~known].sum(axis=0)
    rows = np.flatnonzero(known)
    if rows.size:
        mine = np.where(np.isnan(values[rows]), -np.inf, values[rows])
        lead = mine.argmax(axis=0)[mine.max(axis=0) > 0]  # the known host with the most of each feature
        rows = rows[np.unique(lead)]
    return LinkHosts([names[1 + r] for r in rows.tolist()], values[rows].astype(np.float32), news.astype(np.float32))


def requested_by_of(keys: np.ndarray, flow_rows: np.ndarray, src_hi: np.ndarray, src_lo: np.ndarray, names: list[str],
                    known: np.ndarray) -> dict[str, str]:
    """Host -> the one other home host that started every flow the host had in the window,
    where the host started none and both are known (known_rows): a host that only answered
    another's requests. `keys`: the window's entity keys (history keys of the hosts' addresses,
    0 for the link); the window's flows per entity row (`flow_rows`) with their initiators'
    addresses (`src_hi`, `src_lo`). See WindowBatch.requested_by."""
    n = keys.shape[0]
    if flow_rows.size == 0 or n < 3:
        return {}
    rows = np.asarray(flow_rows, np.int64)
    src = entity_key(src_hi, src_lo)
    low, high = np.full(n, np.iinfo(np.uint64).max, np.uint64), np.zeros(n, np.uint64)
    np.minimum.at(low, rows, src)
    np.maximum.at(high, rows, src)
    one = np.flatnonzero((low == high) & (low != keys))  # every flow of the row started by one other address
    one = one[(one > 0) & known[one]]
    if one.size == 0:
        return {}
    order = np.argsort(keys)
    at = np.minimum(np.searchsorted(keys[order], low[one]), n - 1)
    requester = order[at]
    host = (keys[requester] == low[one]) & (requester > 0)  # the one initiator is a host of this window
    return {names[r]: names[q] for r, q in zip(one[host].tolist(), requester[host].tolist(), strict=True) if known[q]}


class HomeNet:
    """Membership in the configured home networks, vectorised over (hi, lo) address columns."""

    def __init__(self, networks: list[str]) -> None:
        self.networks = list(networks)
        self._nets: list[tuple[np.uint64, np.uint64, np.uint64, np.uint64]] = []
        for text in networks:
            net = ipaddress.ip_network(text, strict=False)
            plen = net.prefixlen + (96 if net.version == 4 else 0)
            hi, lo = addr_to_pair(str(net.network_address))
            mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
            mhi, mlo = mask >> 64, mask & 0xFFFFFFFFFFFFFFFF
            self._nets.append((np.uint64(hi & mhi), np.uint64(lo & mlo), np.uint64(mhi), np.uint64(mlo)))

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        inside = np.zeros(hi.shape[0], dtype=bool)
        for nhi, nlo, mhi, mlo in self._nets:
            inside |= ((hi & mhi) == nhi) & ((lo & mlo) == nlo)
        return inside


def grown(arr: np.ndarray, rows: int) -> np.ndarray:
    """`arr` with at least `rows` rows (doubling, new rows zero); `arr` itself if it has them."""
    if arr.shape[0] >= rows:
        return arr
    out = np.zeros((max(rows, 2 * arr.shape[0]),) + arr.shape[1:], dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def emptied(arr: np.ndarray) -> np.ndarray:
    """An array like `arr` with no rows (a fresh one: a slice would keep arr's memory)."""
    return np.zeros((0,) + arr.shape[1:], dtype=arr.dtype)


def history_keys(pairs: list[tuple[int, int]]) -> np.ndarray:
    """Host entities' keys in the peer history (_history.entity_key of each address)."""
    arr = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    return entity_key(arr[:, 0], arr[:, 1])


def rows_of(arr: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """arr[slots], zeros for slots past its rows (made after the array last grew)."""
    out = np.zeros((slots.shape[0],) + arr.shape[1:], dtype=arr.dtype)
    inside = slots < arr.shape[0]
    out[inside] = arr[slots[inside]]
    return out



class WindowAcc(Protocol):
    """One open window's aggregates, as the base class closes it (each aggregator has its own)."""

    sums: np.ndarray  # (slots, bins, len(SUMS))

    def fit(self, n_slots: int) -> None: ...
    def distinct_counts(self, n_slots: int, bins: int) -> np.ndarray: ...
    def finish(self) -> None: ...
    def evidence_columns(self) -> dict[str, tuple[np.ndarray, ...]]: ...


@dataclass
class Closing:
    """A window the clock has closed, up to building its batch (EntityWindows._closing):
    its aggregates, and the entities it is emitted for (slots, names, history keys) as they
    were at its close; `slots` is the size of the slot table then."""

    start_ns: int
    end_ns: int
    acc: WindowAcc | None
    alive: np.ndarray
    names: list[str]
    keys: np.ndarray
    slots: int


class EntityWindows:
    """What both aggregators share: entity slots, open windows, closing and expiry.
    Subclasses set SCHEMA, SUMS and DISTINCT (the summed and distinct-counted features)
    and fill `_open` windows from their own input (packets or flow records)."""

    SCHEMA: FeatureSchema
    SUMS: tuple[str, ...]
    DISTINCT: tuple[str, ...]

    def __init__(self, home_net: list[str], bin_s: float, bins: int, lateness_s: float, max_entities: int,
                 entity_idle_s: float, evidence_top_k: int, history_s: float, history_warmup_s: float) -> None:
        self.home_net = list(home_net)
        self.bin_s = bin_s
        self.bins = bins
        self.lateness_s = lateness_s
        self.max_entities = max_entities
        self.entity_idle_s = max(entity_idle_s, bin_s * bins)
        self.evidence_top_k = evidence_top_k
        self.schema = self.SCHEMA
        self._home = HomeNet(home_net)
        self._bin_ns = int(round(bin_s * 1e9))
        self._window_ns = self._bin_ns * bins
        self._lateness_ns = int(round(lateness_s * 1e9))
        self._idle_ns = int(round(self.entity_idle_s * 1e9))
        # entity slots: 0 is global; hosts get the others; freed slots are reused
        self._slot_of: dict[tuple[int, int], int] = {}
        self._slot_addr: list[tuple[int, int] | None] = [None]
        # each slot's name in its windows, formatted at its first close and dropped with the
        # slot: a cache beside the slots (an lru_cache held a key and a link per name, 190 B
        # more per entity than the name) kept a flood's 40,000 names in small objects that
        # outlived it, scattered through the allocator's arenas
        self._slot_name: list[str | None] = [ENTITY_GLOBAL]
        # per-slot times in arrays, not lists of ints: an int per entity was one more small
        # object per flood source left to pin the allocator's arenas after it
        self._slot_first_ns = np.zeros(1, dtype=np.int64)
        self._slot_last_ns = np.zeros(1, dtype=np.int64)
        self._free: list[int] = []
        self._next_close: int | None = None  # index of the oldest window not yet emitted
        self.watermark_ns: int | None = None
        self._last_data_ns = 0  # the newest record time taken into a window
        self.entities_expired = 0
        self.windows_closed = 0
        self.windows_skipped = 0  # empty windows of a long silence, skipped (a quiet capture's gap)
        self.windows_partial = 0  # windows not watched or reported whole: not handed on (stop, watch_from)
        self._watched_from_ns: int | None = None  # when the source began watching (watch_from)
        self.history = PeerHistory(history_s, history_warmup_s, is_home=self._home.contains, network_key=0)  # `global`: key 0
        self._leads: dict[int, tuple[str, int]] = {}  # the last closed window's (LazyEvidence)
        self._initiators: tuple[np.ndarray, ...] = (np.zeros(0, np.int64),) * 3  # _remember's: its flows' rows and initiators

    @property
    def entities(self) -> int:
        return 1 + len(self._slot_of)

    def carry_in(self, carried: CarriedHistory) -> None:
        """Start the peer history from the one a training span ended with (PeerHistory.carry_in)."""
        self.history.carry_in(carried.state, carried.ended_ns, self._window_ns)

    @property
    def slots(self) -> int:
        """Entity slots the tables are sized for (shrinks back after a flood expires)."""
        return len(self._slot_addr)

    def _new_slot(self, addr: tuple[int, int], ts_ns: int) -> int:
        if len(self._slot_of) >= self.max_entities:
            return -1
        if self._free:
            slot = self._free.pop()
            self._slot_addr[slot] = addr
            self._slot_name[slot] = None
            self._slot_first_ns[slot] = ts_ns
            self._slot_last_ns[slot] = ts_ns
        else:
            slot = len(self._slot_addr)
            self._slot_addr.append(addr)
            self._slot_name.append(None)
            self._slot_first_ns = grown(self._slot_first_ns, max(16, slot + 1))
            self._slot_first_ns[slot] = ts_ns
            self._slot_last_ns = grown(self._slot_last_ns, max(16, slot + 1))
            self._slot_last_ns[slot] = ts_ns
        self._slot_of[addr] = slot
        return slot

    @property
    def lateness_ns(self) -> int:
        """How late records may come: a window closes this long after its end."""
        return self._lateness_ns

    @property
    def passed_ns(self) -> int | None:
        """The time a replay stopped midway closes its windows up to (advance): those its
        watermark has passed, not the partial one, which a restart resumed at its start sees
        whole. None before any record."""
        return None if self.watermark_ns is None else self.watermark_ns + self._lateness_ns

    def advance(self, now_ns: int) -> list[WindowBatch]:
        """Close windows by the clock (a quiet link or exporter): time `now_ns` has passed.
        Every window is closed, the empty ones of a long silence too: a live daemon shows
        that it keeps time by them (the watchdog)."""
        return list(self._advance(now_ns, skip_quiet=False))

    def _advance(self, now_ns: int, skip_quiet: bool) -> Iterator[WindowBatch]:
        if self._next_close is None:
            return
        self.watermark_ns = now_ns if self.watermark_ns is None else max(self.watermark_ns, now_ns)
        yield from self._close_until(self.watermark_ns - self._lateness_ns, skip_quiet)

    def watch_from(self, start_ns: int) -> None:
        """The source began watching at `start_ns`: a live link's capture opened then, a
        resumed replay goes on from there. A window it came into after its first bin is
        built (its peers join the history) but not handed on, and counted in
        `windows_partial`: its bins before the start are empty because nothing was watched,
        and scored they read as the link springing to life (`make run`'s office demo begun
        20 or 40 s into a minute scored its link at 15 and 30 times its threshold there; a
        live restart, whose restored entities are past their warm-up, alerted on it).
        Without it, every window is handed on (a replay's stages say where its capture
        began: WindowStages.push)."""
        self._watched_from_ns = start_ns

    @property
    def watched_from_ns(self) -> int | None:
        return self._watched_from_ns

    def flush(self) -> list[WindowBatch]:
        """Close every open window (flow records' end; a capture's ends at stop: WindowStages.flush)."""
        return self._close_open(whole=True)

    def stop(self, owed_ns: int = 0) -> list[WindowBatch]:
        """A live source stopped: close the windows it was watched through, and let go the
        last one when the stop came before its last bin. Its bins past the stop are empty
        because nothing was watched, not because the network fell silent, and scored they
        read as the link going quiet (the 1 h office demo cut 20 or 40 s into a minute
        scored its link at 45 and 23 times its threshold in that window, 0.23 uncut: a
        false incident at every restart). Counted in `windows_partial`.
        `owed_ns`: how long the source takes to report what it watched (a NetFlow
        exporter's reporting lag): the windows that ended less than that before the stop
        are still owed records that will never come, and are let go the same way."""
        return self._close_open(whole=False, owed_ns=owed_ns)

    def _close_open(self, whole: bool, owed_ns: int = 0) -> list[WindowBatch]:
        if not self._open:
            return []
        last = max(self._open)
        limit = (last + 1) * self._window_ns
        if not whole and self.watermark_ns is not None:  # whole: those reported to their last bin
            limit = min(limit, (self.watermark_ns - owed_ns + self._bin_ns) // self._window_ns * self._window_ns)
        closed = list(self._close_until(limit, skip_quiet=True))
        for w in [w for w in self._open if w * self._window_ns >= limit]:
            self._open.pop(w)
        partial = max(0, last + 1 - (self._next_close or 0))
        self._next_close = max(self._next_close or 0, last + 1)
        self.windows_partial += partial
        return closed

    def _ingest(self, times: np.ndarray, push_part: Callable[[int, int], Iterator[WindowBatch]]) -> Iterator[WindowBatch]:
        """A batch's records at `times`, cut where their time passes a window's closing point:
        the windows due before each part close, then `push_part(start, stop)` takes the part
        in (and closes what it makes due). So windows close, and entities expire, as the
        records' time passes, not at the end of the batch: a batch of a quiet capture can
        span days, and one holding both sides of a month-long gap must not keep every host
        alive across it. Each window is handed on as it closes, before the next is built:
        a batch of a sparse capture can close dozens of windows, each with every entity of
        a flood, and held together they were a transient half a GiB that left glibc's heap
        fragmented for good (issue 19's flood bench on the 5 h demo)."""
        # the watermark each record finds: that of the records before it (as lateness is judged)
        wm = np.empty_like(times)
        wm[0] = times[0] if self.watermark_ns is None else self.watermark_ns
        np.maximum(np.maximum.accumulate(times)[:-1], wm[0], out=wm[1:])
        step = (wm - self._lateness_ns) // self._window_ns
        # ... except a record after a silence longer than the idle time: it finds the clock
        # at its own time, so that the silence closes (and hosts expire) before it counts
        silence = times - wm > self._idle_ns
        cut = np.zeros(times.shape[0], bool)
        cut[1:] = step[1:] != step[:-1]
        cut |= silence
        cuts = [0, *np.flatnonzero(cut[1:]).__add__(1).tolist(), int(times.shape[0])]
        for a, b in itertools.pairwise(cuts):
            yield from self._advance(int(times[a] if silence[a] else wm[a]), skip_quiet=True)
            if self._next_close is not None and self._quiet(self._next_close):
                # after a silence, windows start again where the records do, as in a replay
                # that began here: not with an empty window before them
                resume = self._first_window(times[a:b])
                if resume > self._next_close:
                    self.windows_skipped += resume - self._next_close
                    self._next_close = resume
            yield from push_part(a, b)

    def _first_window(self, times: np.ndarray) -> int:
        """The first window records at these times open when nothing is open before them."""
        raise NotImplementedError

    def _new_acc(self, n_slots: int) -> WindowAcc:
        raise NotImplementedError

    def _acc(self, w: int) -> WindowAcc:
        n_slots = len(self._slot_addr)
        acc = self._open.get(w)
        if acc is None:
            acc = self._open[w] = self._new_acc(n_slots)
        else:
            acc.fit(n_slots)
        return acc

    def _close_until(self, limit_ns: int | None, skip_quiet: bool = False) -> Iterator[WindowBatch]:
        """Close the windows that end by `limit_ns`, each handed on as it closes (the stage's
        state is whole at every window handed on). `skip_quiet`: once a silence has lasted
        the entities' idle time (every host expired, nothing open), the rest of it is skipped
        in one step to the next window with data: a month-long gap in a capture costs the
        windows of one idle period, not 43,200 empty ones."""
        if limit_ns is None or self._next_close is None:
            return
        while (self._next_close + 1) * self._window_ns <= limit_ns:
            if skip_quiet and self._quiet(self._next_close):
                last = limit_ns // self._window_ns  # the window that limit_ns falls in, not closed
                target = min([w for w in self._open if w > self._next_close] + [last])
                if target > self._next_close:
                    self.windows_skipped += target - self._next_close
                    self._next_close = target
                    continue
            w = self._next_close
            self._next_close += 1
            yield from self._closed(w)

    def _quiet(self, w: int) -> bool:
        """Window w holds nothing and starts an idle period after the last record: no host
        is left to emit it for (all expired), and `global` would only count the silence."""
        return w not in self._open and not self._slot_of and w * self._window_ns >= self._last_data_ns + self._idle_ns

    def _closed(self, w: int) -> Iterator[WindowBatch]:
        """Window w is closed: its batch, handed on now (a subclass may hand it on later)."""
        yield from self._handed(self._closing(w))

    def _handed(self, closing: Closing) -> list[WindowBatch]:
        """A closed window's batch, built (the history takes every window, in order) and
        handed on if it was watched from its first bin (watch_from)."""
        batch = self._built(closing)
        if self._watched_from_ns is not None and closing.start_ns + self._bin_ns <= self._watched_from_ns:
            self.windows_partial += 1
            return []
        self.windows_closed += 1
        return [batch]

    def _closing(self, w: int) -> Closing:
        """Window w's closing on the entity side, in the stream's order: entities idle past its
        end expire (their slots are freed for the records after it), and the entities it is
        emitted for are fixed, with their names and history keys, while their slots are theirs."""
        start_ns = w * self._window_ns
        end_ns = start_ns + self._window_ns
        self._expire_entities(end_ns)
        self._shrink()
        acc = self._open.pop(w, None)
        began = (self._slot_first_ns[: len(self._slot_addr)] < end_ns).tolist()
        alive = [0] + sorted(s for s, a in enumerate(self._slot_addr) if s and a is not None and began[s])
        keys = np.zeros(len(alive), np.uint64)  # the entity's address (`global`: 0): slots are reused, addresses not
        if len(alive) > 1:
            keys[1:] = history_keys([self._slot_addr[s] for s in alive[1:]])
        names = [ENTITY_GLOBAL] + [self._name(s) for s in alive[1:]]
        return Closing(start_ns, end_ns, acc, np.array(alive, dtype=np.int64), names, keys, len(self._slot_addr))

    def _built(self, closing: Closing) -> WindowBatch:
        """A closing window's batch: its features, what its peers add to the history, its
        evidence. Closings are built in the order they were made (the history is one stream)."""
        alive_arr, acc = closing.alive, closing.acc
        fidx = {name: i for i, name in enumerate(self.SCHEMA.features)}
        feats = np.zeros((alive_arr.shape[0], self.bins, len(self.SCHEMA.features)), dtype=np.float32)
        if acc is not None:
            sums = rows_of(acc.sums, alive_arr)
            for k, name in enumerate(self.SUMS):
                feats[:, :, fidx[name]] = sums[:, :, k]
            counts = rows_of(acc.distinct_counts(closing.slots, self.bins), alive_arr)
            for kind, name in enumerate(self.DISTINCT):
                feats[:, :, fidx[name]] = counts[:, :, kind]
            pk = feats[:, :, fidx["pkts_out"]] + feats[:, :, fidx["pkts_in"]]
            by = feats[:, :, fidx["bytes_out"]] + feats[:, :, fidx["bytes_in"]]
            feats[:, :, fidx["mean_pkt_bytes"]] = np.divide(by, pk, out=np.zeros_like(by), where=pk > 0)
            acc.finish()
            columns = acc.evidence_columns()
        else:
            columns = None
        self._remember(closing, columns, feats, fidx)
        names = closing.names
        classes = ["global"] + ["host"] * (len(names) - 1)
        key_of = dict(zip(alive_arr.tolist(), closing.keys.tolist(), strict=True))
        evidence = (LazyEvidence(columns, dict(zip(names, alive_arr.tolist(), strict=True)), self.evidence_top_k, self._leads,
                                 lambda slot, hi, lo: self.history.domains_of(key_of[slot], hi, lo))
                    if columns is not None else {})
        known = known_rows(feats, self.SCHEMA, self.history.warm)
        return WindowBatch(closing.start_ns, closing.end_ns, names, classes, feats, self.SCHEMA, evidence,
                           link_hosts=link_hosts_of(feats, names, self.SCHEMA, known),
                           requested_by=requested_by_of(closing.keys, *self._initiators, names, known))

    def _name(self, slot: int) -> str:
        """The slot's entity name (its address), formatted once while the entity stays."""
        name = self._slot_name[slot]
        if name is None:
            name = self._slot_name[slot] = pair_to_addr(*self._slot_addr[slot])  # type: ignore[misc]
        return name

    def _remember(self, closing: Closing, columns: dict[str, tuple[np.ndarray, ...]] | None, feats: np.ndarray,
                  fidx: dict[str, int]) -> None:
        """The window's peers and ports into each entity's history; its novelty features out."""
        alive = closing.alive
        row_of = np.full(closing.slots, -1, np.int64)
        row_of[alive] = np.arange(alive.shape[0])
        empty = np.zeros(0, np.int64)
        peers, flows = ((empty,) * 3, (empty,) * 10) if columns is None else (columns["peers"], columns["flows"])

        def rows(slot_col: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
            r = row_of[np.asarray(slot_col, np.int64)] if len(slot_col) else empty
            keep = r >= 0
            return (r[keep],) + tuple(np.asarray(c)[keep] for c in cols)

        flow_rows = rows(*flows[:8], flows[9])
        self._initiators = flow_rows[:1] + flow_rows[2:4]  # each flow's entity row and initiator (hi, lo)
        novelty = self.history.observe(closing.keys, rows(*peers[:3]), flow_rows, closing.end_ns)
        lead_row, level, hi, lo = self.history.lead
        self._leads = {int(alive[r]): (pair_to_addr(int(h), int(low)), int(v))
                       for r, v, h, low in zip(lead_row.tolist(), level.tolist(), hi.tolist(), lo.tolist(), strict=True)}
        for k, (name, _) in enumerate(HISTORY_FEATURES):
            if name in fidx:
                feats[:, :, fidx[name]] = novelty[:, k : k + 1] / (1 if name in HISTORY_LEVELS else self.bins)

    def _expire_entities(self, now_ns: int) -> None:
        n = len(self._slot_addr)
        idle = np.flatnonzero(self._slot_last_ns[:n] < now_ns - self._idle_ns)
        gone: list[tuple[int, int]] = []
        for s in idle.tolist():
            addr = self._slot_addr[s]
            if s == 0 or addr is None:
                continue
            # slots with traffic in a still-open window stay until that window closes
            if any(acc.sums.shape[0] > s and acc.sums[s].any() for acc in self._open.values()):
                continue
            del self._slot_of[addr]
            self._slot_addr[s] = None
            self._slot_name[s] = None
            self._free.append(s)
            self.entities_expired += 1
            gone.append(addr)
        # every close, in the stream's order (before the window is built, which capture
        # workers may do later): a carried-in history takes its times from the first one
        self.history.expire(history_keys(gone), now_ns)


    # ---------------------------------------------------------------- shrinking back
    def _shrink(self) -> None:
        """Give the slots of expired entities back: after a flood of spoofed home addresses
        the slot table (and every array sized by it: the open windows' aggregates, the
        kernels' address arrays, the walk over slots at each close) returns to the size of
        what is alive. Living entities in high slots move down to free low ones; only those
        without data in an open window move (an open window's tallies are keyed by slot);
        then the free tail is cut off."""
        n = len(self._slot_addr)
        keep = max(64, 2 * (len(self._slot_of) + 1))
        if n <= 2 * keep:
            return
        busy = np.zeros(n, bool)
        for acc in self._open.values():
            m = min(acc.sums.shape[0], n)
            busy[:m] |= acc.sums[:m].reshape(m, -1).any(axis=1)
        shrunk_from = n
        low_free = sorted(s for s in self._free if s < keep)
        for src in range(n - 1, keep - 1, -1):
            if not low_free:
                break
            addr = self._slot_addr[src]
            if addr is None or busy[src]:
                continue
            dst = low_free.pop(0)
            self._slot_addr[dst], self._slot_addr[src] = addr, None
            self._slot_name[dst], self._slot_name[src] = self._slot_name[src], None
            self._slot_first_ns[dst] = self._slot_first_ns[src]
            self._slot_last_ns[dst] = self._slot_last_ns[src]
            self._slot_of[addr] = dst
            self._moved(src, dst)
        while len(self._slot_addr) > 1 and self._slot_addr[-1] is None:
            self._slot_addr.pop()
        n = len(self._slot_addr)
        del self._slot_name[n:]
        self._slot_first_ns = self._slot_first_ns[: max(16, n)].copy()
        self._slot_last_ns = self._slot_last_ns[: max(16, n)].copy()
        self._free = sorted((s for s in range(1, n) if self._slot_addr[s] is None), reverse=True)  # lowest reused first
        self._resized(n)
        if n < shrunk_from:  # a dict keeps its table at its largest (1.3 MB at 40,000 keys) until copied
            self._slot_of = dict(self._slot_of)

    def _moved(self, src: int, dst: int) -> None:
        """An entity moved from slot src to dst (a subclass moves its own per-slot arrays)."""

    def _resized(self, n_slots: int) -> None:
        """The slot table now has n_slots slots (a subclass cuts its own per-slot arrays)."""


class LazyEvidence(Mapping):
    """entity -> WindowEvidence, ranked from a window's aggregates only when asked."""

    def __init__(self, columns: dict[str, tuple[np.ndarray, ...]], slots: dict[str, int], top_k: int,
                 leads: dict[int, tuple[str, int]] | None = None,
                 domains: Callable[[int, np.ndarray, np.ndarray], list[str | None]] | None = None) -> None:
        self._columns = columns
        self._leads = leads or {}  # slot -> the young peer behind its young_peer_returns, and that level
        self._domains = domains  # (slot, addr_hi, addr_lo) -> the domain the DNS answered each address for
        self._slots = slots
        self._top_k = top_k
        self._cache: dict[str, WindowEvidence] = {}
        self._ranked: dict[str, tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]] | None = None

    def __getitem__(self, entity: str) -> WindowEvidence:
        if entity not in self._slots:
            raise KeyError(entity)
        if entity not in self._cache:
            self._cache[entity] = self._build(self._slots[entity])
        return self._cache[entity]

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def _rank(self) -> dict[str, tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
        """Per table: its columns, and its rows ordered by slot, then weight (packets)
        descending, ties in key-hash order (lexsort is stable); with the slots in that order."""
        if self._ranked is None:
            columns = self._columns
            self._ranked = {}
            for name, weight in (("peers", 3), ("ports", 3), ("flows", 8)):
                cols = columns[name]
                order = np.lexsort((-cols[weight], cols[0]))
                self._ranked[name] = (cols, order, cols[0][order])
        return self._ranked

    def _top(self, name: str, slot: int) -> tuple[tuple[np.ndarray, ...], list[int]]:
        cols, order, slots = self._rank()[name]
        start, stop = np.searchsorted(slots, slot, "left"), np.searchsorted(slots, slot, "right")
        return cols, order[start : min(stop, start + self._top_k)].tolist()

    def _build(self, slot: int) -> WindowEvidence:
        ev = WindowEvidence()
        peers, rows = self._top("peers", slot)
        addrs: list[tuple[int, int]] = []  # each listed peer's (hi, lo)
        for r in rows:
            ev.top_peers.append(
                {"ip": pair_to_addr(peers[1][r], peers[2][r]), "packets": int(peers[3][r]), "bytes": int(peers[4][r])}
            )
            addrs.append((int(peers[1][r]), int(peers[2][r])))
        if slot in self._leads:
            # the young peer that keeps coming back, named with its returns even in a window
            # between its contacts (a beacon's level holds there, its packets do not)
            ip, returns = self._leads[slot]
            listed = next((p for p in ev.top_peers if p["ip"] == ip), None)
            if listed is None:
                ev.top_peers.insert(0, listed := {"ip": ip, "packets": 0, "bytes": 0})
                addrs.insert(0, addr_to_pair(ip))
            listed["returns"] = returns
        if self._domains is not None and addrs:  # the registered domain the DNS answered each peer for
            hi, lo = (np.array(c, np.uint64) for c in zip(*addrs, strict=True))
            for p, domain in zip(ev.top_peers, self._domains(slot, hi, lo), strict=True):
                if domain is not None:
                    p["domain"] = domain
        ports, rows = self._top("ports", slot)
        for r in rows:
            ev.top_ports.append({"port": int(ports[2][r]), "proto": _proto_name(int(ports[1][r])), "packets": int(ports[3][r])})
        flows, rows = self._top("flows", slot)
        for r in rows:
            proto = int(flows[1][r])
            sport, dport = int(flows[6][r]), int(flows[7][r])
            ev.top_flows.append(
                {
                    "community_id": community_id_of_pairs(
                        proto, flows[2][r], flows[3][r], flows[4][r], flows[5][r], sport, dport
                    ),
                    "src": pair_to_addr(flows[2][r], flows[3][r]),
                    "dst": pair_to_addr(flows[4][r], flows[5][r]),
                    "sport": sport,
                    "dport": dport,
                    "proto": _proto_name(proto),
                    "packets": int(flows[8][r]),
                }
            )
        return ev


def _proto_name(proto: int) -> str:
    return {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}.get(proto, str(proto))
