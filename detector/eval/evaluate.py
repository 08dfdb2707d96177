"""`netad eval`: labelled evaluation, wiring the daemon's very stages offline.

Where it stands: on top of everything, like the daemon. A model is trained (the `netad
train` path, `service.training.train_from_captures`) or loaded; the test captures are
replayed through `service.pipeline.Pipeline` (capture -> flows -> windows -> streaming
scorer with carried state -> incidents), exactly as `netad score` and the daemon do; a
second pass through the same capture/flow/window stages (`window_stream`) gives the
windows' features to the baselines (`eval.baselines`). Every (entity, window) is labelled
from the ground truth, and `eval.metrics` turns scores and labels into numbers;
`eval.report` draws and writes them.

Labels (DESIGN: window scores are per entity per window):

- `global` windows: positive when they overlap a positive interval (is_attack_or_fault = 1);
  windows overlapping only normal (0) intervals, or none, are negatives.
- host windows: positive when they overlap a positive interval AND the host is one of the
  interval's attackers or targets. Those come from `attacker=IP` / `target=IP` (also
  `target: IP`) in the description; a description with neither names its hosts by any IP
  literal in it (e.g. Westermo's "nmap 198.18.134.37"), counted as targets; `--attacker
  [EVENT=]IP` adds the attacker of intervals whose description names none. When an interval
  names no host at all, the host windows that overlap it are *unlabelled*: left out of the
  host metrics (neither positive nor negative) and counted as such.
- An interval is *visible* when the test captures hold at least `visible_min_packets`
  packets inside it sent by its attackers (or, when no attacker is known, sent to or by its
  targets); None when it names no host. A named host is visible in it when it has at least
  as many packets of the attack: an attacker's own, a target's exchanged with the attackers
  (to or from anybody when no attacker is known). Per-class numbers are given over all
  intervals and over the visible ones; for hosts, the visible variant's positives are the
  visible hosts of the visible intervals (Westermo: a scan naming three targets of which
  this link carries packets to one).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from detector import __version__
from detector.config import Config
from detector.contracts import (
    ENTITY_GLOBAL,
    ENTITY_HOST,
    CarriedHistory,
    FlowRecordBatch,
    IncidentEvent,
    PacketBatch,
    WindowBatch,
    addr_to_pair,
    ns_to_iso,
)
from detector.errors import ConfigError
from detector.eval import metrics as M
from detector.eval.baselines import RobustZScore, stateless_scores, without_history
from detector.eval.samples import LabelledInterval, Windows
from detector.files import naming
from detector.model.bundle import ModelBundle
from detector.model.groups import HostGroups
from detector.model.scorer import set_torch_threads
from detector.model.training import trail
from detector.progress import Progress, tracked
from detector.service.pipeline import Pipeline, input_batches, window_stream
from detector.service.scoring import ScoresFile
from detector.service.training import train_from_captures
from detector.truth import Interval, load_truth

log = structlog.get_logger()

# lstm: the daemon's accumulated score (what its threshold is compared with); lstm_window: the
# same network's score of the window alone, without what the entity's previous window carried in
DETECTORS = ("lstm", "stateless_ae", "reset_hc", "zscore", "lstm_window")
_FROM_RECORDS = ("lstm", "lstm_window")
BOOTSTRAP_RESAMPLES = 1000
ENTITY_CLASSES = ("global", "host")
FPR_POINTS = (1e-3, 1e-2)


@dataclass
class EvalPlan:
    """What `netad eval` was asked to do."""

    pcaps: list[Path]  # test captures (conn.logs with flow_records); with a time split, the one that is split
    out: Path
    truth: Path | None = None  # None: all traffic is benign (false alarms only)
    train_pcaps: list[Path] = field(default_factory=list)
    train_end_s: float | None = None  # time split: train on [0, S) of pcaps, test on [S, end)
    train_start_s: float | None = None  # the mirror split: train on [S, end), test on [0, S)
    model_dir: Path | None = None  # reuse a trained bundle instead of training
    attackers: list[str] = field(default_factory=list)  # "[EVENT-GLOB=]IP"
    visible_min_packets: int = 10
    config_path: str | None = None
    flow_records: bool = False  # the inputs are Zeek conn.logs, scored as flow records

    @property
    def split_s(self) -> float | None:
        return self.train_end_s if self.train_end_s is not None else self.train_start_s

    def check(self) -> None:
        if not self.pcaps:
            raise ConfigError("eval: give the test capture(s)")
        if sum(x is not None and x != [] for x in (self.train_end_s, self.train_start_s, self.train_pcaps)) > 1:
            raise ConfigError("eval: use one of --train-end-s, --train-start-s (time splits of one capture) or --train-pcap")
        if self.split_s is not None and len(self.pcaps) != 1:
            raise ConfigError("eval: --train-end-s / --train-start-s split exactly one capture in time")
        if self.split_s is not None and self.split_s <= 0:
            raise ConfigError("eval: the time split must be after the first packet (S > 0)")
        if self.split_s is None and not self.train_pcaps and self.model_dir is None:
            raise ConfigError("eval: say what to train on: --train-end-s S, --train-start-s S, --train-pcap FILE, or give --model DIR")

    def test_range_ns(self, t0_ns: int) -> tuple[int, int]:
        """[lo, hi) of the test part: a window is a test window when it lies inside it."""
        far = 1 << 62
        if self.split_s is None:
            return -far, far
        split_ns = t0_ns + int(round(self.split_s * 1e9))
        return (split_ns, far) if self.train_end_s is not None else (-far, split_ns)


class _Collector:
    """A sink that keeps the incident events the pipeline emits."""

    def __init__(self) -> None:
        self.opened: list[IncidentEvent] = []

    def publish(self, event: IncidentEvent) -> None:
        if event.action == "opened":
            self.opened.append(event)


# --------------------------------------------------------------------------------------
# Ground truth -> hosts, visibility, labels
# --------------------------------------------------------------------------------------

_IP_LITERAL = re.compile(r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")


def hosts_of(description: str) -> tuple[list[str], list[str]]:
    """(attackers, targets) named in a truth description (see the module docstring)."""
    attackers, targets = [], []
    for key, value in re.findall(r"\b(attacker|target)\s*[=:]\s*([0-9A-Fa-f:.]+)", description):
        try:
            ip = str(ipaddress.ip_address(value.rstrip(".:")))
        except ValueError:
            continue
        (attackers if key == "attacker" else targets).append(ip)
    if not attackers and not targets:
        for literal in _IP_LITERAL.findall(description):
            try:
                targets.append(str(ipaddress.ip_address(literal)))
            except ValueError:
                continue
    return sorted(set(attackers)), sorted(set(targets))


def parse_attacker_hints(hints: list[str]) -> list[tuple[str, str]]:
    """`[EVENT-GLOB=]IP` -> (glob, ip); a bare IP applies to every event."""
    out = []
    for text in hints:
        pattern, _, ip = text.rpartition("=")
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise ConfigError(f"--attacker {text!r}: expected [EVENT=]IP") from None
        out.append((pattern or "*", ip))
    return out


def label_intervals(intervals: list[Interval], hints: list[tuple[str, str]]) -> list[LabelledInterval]:
    out = []
    for iv in intervals:
        attackers, targets = hosts_of(iv.description)
        if iv.positive and not attackers:
            attackers = sorted({ip for pattern, ip in hints if fnmatch.fnmatchcase(iv.event, pattern)})
        out.append(LabelledInterval(iv, attackers, targets))
    return out


def _addr_keys(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return lo ^ (hi * np.uint64(0x9E3779B97F4A7C15))


def _keys_of(ips: Iterable[str]) -> np.ndarray:
    pairs = [addr_to_pair(ip) for ip in ips]
    return _addr_keys(np.array([p[0] for p in pairs], np.uint64), np.array([p[1] for p in pairs], np.uint64))


def _tally(batches: Iterable[PacketBatch | FlowRecordBatch], intervals: list[LabelledInterval],
           window_ns: int) -> Iterator[PacketBatch | FlowRecordBatch]:
    """Pass batches through, counting per positive interval the packets of its hosts (flow
    records: the packets of the records that overlap it), in all and per window."""
    watch = []
    for li in intervals:
        if li.interval.positive and li.hosts:
            li.attacker_packets = 0
            li.host_packets = dict.fromkeys(sorted(li.hosts), 0)
            li.window_packets = {key: {} for key in ("", *li.host_packets)}
            named = dict(zip(li.host_packets, _keys_of(li.host_packets), strict=True))
            watch.append((li, _keys_of(li.attackers) if li.attackers else None, _keys_of(li.targets), named))
    for b in batches:
        if watch and len(b):
            if isinstance(b, PacketBatch):
                first, last, count = b.ts_ns, b.ts_ns, None
            else:
                first, last, count = b.start_ns, b.end_ns, b.packets.astype(np.int64)
            lo_ns, hi_ns = int(first.min()), int(last.max())
            src = dst = None
            for li, attackers, targets, named in watch:
                if li.interval.end_ns <= lo_ns or li.interval.start_ns > hi_ns:
                    continue
                inside = (last >= li.interval.start_ns) & (first < li.interval.end_ns)
                if src is None:
                    src, dst = _addr_keys(b.src_hi, b.src_lo), _addr_keys(b.dst_hi, b.dst_lo)
                if attackers is not None:
                    mine = np.isin(src, attackers)
                    to_attackers = inside & (mine | np.isin(dst, attackers))
                else:
                    mine = np.isin(src, targets) | np.isin(dst, targets)  # type: ignore[arg-type]
                    to_attackers = inside
                li.attacker_packets = (li.attacker_packets or 0) + _packets(inside & mine, count)
                span = (li.interval.start_ns, li.interval.end_ns, window_ns)
                _per_window(li.window_packets[""], to_attackers if attackers is not None else inside & mine, first, last, count, span)  # type: ignore[index]
                for ip, key in named.items():
                    n = inside & (src == key) if ip in li.attackers else to_attackers & ((src == key) | (dst == key))
                    li.host_packets[ip] += _packets(n, count)
                    _per_window(li.window_packets[ip], n, first, last, count, span)  # type: ignore[index]
        yield b


def _per_window(into: dict[int, int], rows: np.ndarray, first: np.ndarray, last: np.ndarray, count: np.ndarray | None,
                span: tuple[int, int, int]) -> None:
    """Add the selected packets (records: their packets, in every window a record touches
    inside the interval) to `into`, keyed by the start of the window they fall in. `span`:
    the interval's [start, end) and the window length."""
    idx = np.flatnonzero(rows)
    if idx.size == 0:
        return
    lo_ns, hi_ns, window_ns = span
    w0, w1 = np.maximum(first[idx], lo_ns) // window_ns, np.minimum(last[idx], hi_ns - 1) // window_ns
    n = np.ones(idx.size, dtype=np.int64) if count is None else count[idx]
    touched = w1 - w0 + 1  # windows per row
    starts = (np.repeat(w0, touched) + (np.arange(touched.sum()) - np.repeat(np.cumsum(touched) - touched, touched))) * window_ns
    keys, inverse = np.unique(starts, return_inverse=True)
    totals = np.bincount(inverse, weights=np.repeat(n, touched))
    for start, k in zip(keys.tolist(), totals.tolist(), strict=True):
        into[start] = into.get(start, 0) + int(k)


def _packets(rows: np.ndarray, count: np.ndarray | None) -> int:
    """Packets in the selected rows: one per row (a PacketBatch), or the records' counts."""
    return int(rows.sum()) if count is None else int(count[rows].sum())


def label_windows(w: Windows, intervals: list[LabelledInterval], levels: list[int] | None = None) -> None:
    n = w.start_ns.shape[0]
    is_host = w.entity_class == "host"
    w.label = np.zeros(n, dtype=bool)
    w.unlabelled = np.zeros(n, dtype=bool)
    w.benign = np.ones(n, dtype=bool)
    for li in intervals:
        if not li.interval.positive:
            continue
        hit = M.overlaps(w.start_ns, w.end_ns, li.interval.start_ns, li.interval.end_ns)
        w.benign &= ~hit
        w.label |= hit & ~is_host
        if li.hosts:
            w.label |= hit & is_host & np.isin(w.entity, list(li.hosts))
        else:
            w.unlabelled |= hit & is_host
    w.unlabelled &= ~w.label
    trailing = _trail(w, levels or [])
    w.trail = trailing
    w.unlabelled |= trailing
    w.benign &= ~trailing


def _trail(w: Windows, levels: list[int]) -> np.ndarray:
    """The windows after a positive interval in which the entity still carries a history level
    out of it, up to its first window without one (or a window it did not have): its packets
    have ended, but its state has not (a beacon's peer stays in its series for up to twice
    its period). Neither positive nor negative, as training leaves them out (model.training.trail)."""
    out = np.zeros(w.start_ns.shape[0], dtype=bool)
    if not levels or w.benign is None:
        return out
    carried = (w.features[:, :, levels] > 0).any(axis=(1, 2))
    for entity in np.unique(w.entity):
        rows = np.flatnonzero(w.entity == entity)
        rows = rows[np.argsort(w.start_ns[rows], kind="stable")]
        # a window the entity did not have ends its trail: the next one carries nothing in
        joined = np.r_[False, w.start_ns[rows[1:]] == w.end_ns[rows[:-1]]]
        out[rows] = trail(~w.benign[rows], (carried[rows] & joined)[None, :])[0]
    return out


def _class_rows(w: Windows, li: LabelledInterval, entity_class: str, visible_only: bool = False) -> np.ndarray:
    """Rows of `entity_class` that are positives because of this interval; with
    `visible_only`, only the windows that hold packets of the attack, of its visible hosts
    (a slow attack's interval has windows with nothing of it in them)."""
    hit = M.overlaps(w.start_ns, w.end_ns, li.interval.start_ns, li.interval.end_ns) & (w.entity_class == entity_class)
    if entity_class == "host":
        hosts = li.visible_hosts if visible_only else li.hosts
        hit &= np.isin(w.entity, list(hosts)) if hosts else False
    if visible_only and li.window_packets is not None:
        for row in np.flatnonzero(hit):
            packets = li.window_packets["" if entity_class == "global" else str(w.entity[row])]
            hit[row] = packets.get(int(w.start_ns[row]), 0) > 0
    return hit


def _clusters(w: Windows, intervals: list[LabelledInterval], entity_class: str, window_ns: int,
              visible_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap clusters for M.auc_difference: a positive window belongs to the first attack
    interval that makes it positive; every other window to its moment (all entities of one
    window together, since one moment's traffic moves every host's score). With each row's
    kind, its interval's truth event ("" for a moment): the bootstrap's strata."""
    moment = w.start_ns // window_ns
    clusters = moment - moment.min() + len(intervals)
    assigned = np.zeros(clusters.shape[0], dtype=bool)
    for k, li in enumerate(intervals):
        hit = _class_rows(w, li, entity_class, visible_only) & ~assigned
        clusters[hit] = k
        assigned |= hit
    events = np.array([li.interval.event for li in intervals] + [""], dtype=object)
    return clusters, events[np.minimum(clusters, len(intervals))]


def _lstm_minus(w: Windows, sel: np.ndarray, pos: np.ndarray, strata: tuple[np.ndarray, np.ndarray]) -> dict:
    """LSTM ROC AUC minus each baseline's on the rows `sel` (labels `pos`), with 95% intervals
    (`strata`: each row's cluster and kind, from _clusters)."""
    clusters, kinds = strata
    out = {}
    for det in DETECTORS[1:]:
        a, b = w.scores["lstm"][sel], w.scores[det][sel]
        ok = a.size and np.all(np.isfinite(b))
        out[det] = M.auc_difference(a, b, pos[sel], clusters[sel], resamples=BOOTSTRAP_RESAMPLES, kinds=kinds[sel]) if ok else None
    return out


# --------------------------------------------------------------------------------------
# Passes over the captures
# --------------------------------------------------------------------------------------


def first_packet_ns(paths: list[Path], batch_packets: int, flow_records: bool = False) -> int:
    """The time the split counts from: the first packet's (or the first flow record's start),
    as `netad train --start-s/--end-s` counts."""
    for b in input_batches(paths, flow_records, batch_packets):
        if len(b):
            return int(b.ts_ns[0] if isinstance(b, PacketBatch) else b.start_ns[0])
    raise ConfigError(f"{', '.join(map(str, paths))}: no {'flow records' if flow_records else 'IP packets'}")


def _ms(ns: int) -> int:
    return int(round(ns / 1e6))


def _score_pass(
    cfg: Config, bundle: ModelBundle, pcaps: list[Path], scores_path: Path, test_lo: int, test_hi: int, flow_records: bool = False,
    progress: bool = False,
) -> tuple[list[dict], list[IncidentEvent]]:
    """The daemon's stages over the test captures; returns the test windows' score records
    and the incidents opened in the test part."""
    collector = _Collector()
    scores_out = ScoresFile(scores_path, append=False)
    pipeline = Pipeline(cfg, bundle, sinks=[collector], scores_out=scores_out, flow_records=flow_records)
    bar = Progress("eval: score", unit="flow records" if flow_records else "packets", enabled=progress)
    for batch in tracked(input_batches(pcaps, flow_records, cfg.source.batch_packets), bar):
        pipeline.push(batch)
    pipeline.finish()
    scores_out.close()  # OutputError (exit 73) when the disk dropped lines: the metrics read them back
    records = []
    with open(scores_path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            r["start_ns"] = _iso_ns(r["window_start"])
            r["end_ns"] = _iso_ns(r["window_end"])
            if r["start_ns"] >= test_lo and r["end_ns"] <= test_hi:
                records.append(r)
    log.info("eval_scored", windows=len(records), stats=pipeline.stats())
    return records, [e for e in collector.opened if test_lo <= e.first_seen_ns < test_hi]


def _iso_ns(text: str) -> int:
    """A window-score timestamp (ISO 8601, milliseconds, Z) as ns."""
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(round(stamp.timestamp() * 1000)) * 1_000_000


def _feature_pass(cfg: Config, batches: Iterable[PacketBatch | FlowRecordBatch], on_window: Callable[[WindowBatch], None],
                  flow_records: bool = False, progress: bool = False, carried: CarriedHistory | None = None) -> None:
    """The windows again (for the baselines and the training windows they fit on); over the
    scored captures from the bundle's peer history, as the score pass, so that they equal its."""
    bar = Progress("eval: baselines", unit="flow records" if flow_records else "packets", enabled=progress)
    for wb in window_stream(cfg, tracked(batches, bar), flow_records, carried=carried):
        on_window(wb)


def _collect_train(train: dict[str, list[np.ndarray]], wb: WindowBatch, positives: list[Interval], trailing: set[str],
                   groups: HostGroups) -> None:
    """The baselines' training windows: as the model's (model.training.collect), per class (a
    host group's hosts in its own), a positive interval's windows are left out, and so is each
    entity's trail after it (`trailing`: the entities still carrying a history level out of
    an interval)."""
    if any(wb.window_start_ns < iv.end_ns and wb.window_end_ns > iv.start_ns for iv in positives):
        trailing.clear()
        trailing.update(wb.entities)
        return
    levels = [wb.schema.features.index(n) for n in wb.schema.levels]
    still = set()
    classes = groups.classes(wb.entities, wb.entity_classes) if groups else wb.entity_classes
    for name, cls, feats in zip(wb.entities, classes, wb.features, strict=True):
        if name in trailing and levels and (feats[:, levels] > 0).any():
            still.add(name)
            continue
        train.setdefault(cls, []).append(feats)
    trailing.intersection_update(still)


# --------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------


def evaluate(cfg: Config, plan: EvalPlan, progress: bool = False) -> dict:
    """Run the evaluation of `plan`; writes scores.jsonl, metrics.json, report.md and
    report.png under plan.out and returns the metrics."""
    from detector.eval.report import write_report

    plan.check()
    set_torch_threads(cfg.model.threads)
    plan.out.mkdir(parents=True, exist_ok=True)
    intervals = label_intervals(load_truth(plan.truth) if plan.truth else [], parse_attacker_hints(plan.attackers))
    positives = [li.interval for li in intervals if li.interval.positive]
    t0_ns = first_packet_ns(plan.pcaps, cfg.source.batch_packets, plan.flow_records)
    test_lo, test_hi = plan.test_range_ns(t0_ns)

    training_s = None
    if plan.model_dir is not None:
        model_dir = plan.model_dir
        bundle = ModelBundle.load(model_dir)
    else:
        model_dir = plan.out / "model"
        started = time.monotonic()
        train_pcaps = plan.train_pcaps or plan.pcaps
        bundle = train_from_captures(cfg, train_pcaps, model_dir, truth=plan.truth, start_s=plan.train_start_s,
                                     end_s=plan.train_end_s, progress=progress, flow_records=plan.flow_records)
        training_s = round(time.monotonic() - started, 2)
        log.info("eval_trained", seconds=training_s, version=bundle.version)
        bundle = ModelBundle.load(model_dir)  # score what was saved, as the daemon would

    records, incidents = _score_pass(cfg, bundle, plan.pcaps, plan.out / "scores.jsonl", test_lo, test_hi, plan.flow_records,
                                     progress)
    if not records:
        raise ConfigError("eval: no test windows (is the split past the end of the capture?)")
    row_of = {(r["entity"], _ms(r["start_ns"])): i for i, r in enumerate(records)}
    n_bins, n_feat = bundle.bins, len(bundle.schema.features)
    features = np.zeros((len(records), n_bins, n_feat), dtype=np.float32)
    filled = np.zeros(len(records), dtype=bool)
    train_feats: dict[str, list[np.ndarray]] = {}
    trailing: set[str] = set()
    groups = HostGroups(bundle.host_groups)

    def on_window(wb: WindowBatch) -> None:
        if plan.split_s is not None and (wb.window_end_ns <= test_lo or wb.window_start_ns >= test_hi):
            _collect_train(train_feats, wb, positives, trailing, groups)
            return
        for name, feats in zip(wb.entities, wb.features, strict=True):
            row = row_of.get((name, _ms(wb.window_start_ns)))
            if row is not None:
                features[row] = feats
                filled[row] = True

    batch_size, flow_records = cfg.source.batch_packets, plan.flow_records
    window_ns = int(round(bundle.bin_s * bundle.bins * 1e9))
    _feature_pass(cfg, _tally(input_batches(plan.pcaps, flow_records, batch_size), intervals, window_ns), on_window, flow_records,
                  progress, carried=bundle.history)
    if plan.train_pcaps:
        train_trailing: set[str] = set()
        _feature_pass(cfg, input_batches(plan.train_pcaps, flow_records, batch_size),
                      lambda wb: _collect_train(train_feats, wb, positives, train_trailing, groups), flow_records, progress)
    if not filled.all():
        raise RuntimeError(f"eval: {int((~filled).sum())} scored windows were not rebuilt by the feature pass")
    for li in intervals:
        if li.attacker_packets is not None:
            li.visible = li.attacker_packets >= plan.visible_min_packets
            li.visible_hosts = {ip for ip, n in li.host_packets.items() if n >= plan.visible_min_packets}

    w = Windows(
        start_ns=np.array([r["start_ns"] for r in records], dtype=np.int64),
        end_ns=np.array([r["end_ns"] for r in records], dtype=np.int64),
        entity=np.array([r["entity"] for r in records], dtype=object).astype(str),
        entity_class=np.array([r["entity_class"] for r in records]).astype(str),
        scores={"lstm": np.array([r.get("accumulated", r["score"]) for r in records], dtype=np.float64),
                "lstm_window": np.array([r["score"] for r in records], dtype=np.float64)},
        anomalous=np.array([r["anomalous"] for r in records], dtype=bool),
        threshold=np.array([r["threshold"] for r in records], dtype=np.float64),
        features=features,
    )
    for det in DETECTORS:
        if det not in _FROM_RECORDS:
            w.scores[det] = np.full(len(records), np.nan)
    baselines_fitted: dict[str, int] = {}
    for cls in bundle.classes:  # each model class's own baselines: a host group's too
        rows = np.flatnonzero(w.entity_class == cls)
        if rows.size == 0:
            continue
        no_history = without_history(features[rows], bundle.schema)
        entities = w.entity[rows].tolist()  # each judged in its own level, as the daemon judges it (model.levels)
        w.scores["stateless_ae"][rows] = stateless_scores(bundle.classes[cls], no_history, w.start_ns[rows], entities)
        w.scores["reset_hc"][rows] = stateless_scores(bundle.classes[cls], features[rows], w.start_ns[rows], entities)
        if train_feats.get(cls):
            zs = RobustZScore.fit(np.stack(train_feats[cls]))
            w.scores["zscore"][rows] = zs.score(features[rows])
            baselines_fitted[cls] = len(train_feats[cls])
    # measured per kind of entity (ENTITY_CLASSES): every host group's windows are hosts'
    w.entity_class = np.where(w.entity_class == ENTITY_GLOBAL, ENTITY_GLOBAL, ENTITY_HOST)
    label_windows(w, intervals, [bundle.schema.features.index(n) for n in bundle.schema.levels])
    result = {
        "netad_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": {
            "pcaps": [str(p) for p in plan.pcaps],
            "truth": str(plan.truth) if plan.truth else None,
            "config": plan.config_path,
            "attacker_hints": plan.attackers,
            "visible_min_packets": plan.visible_min_packets,
        },
        "split": _split_summary(plan, t0_ns, w),
        "model": {
            "dir": str(model_dir),
            "version": bundle.version,
            "trained_here": plan.model_dir is None,
            "training_s": training_s,
            "bin_s": bundle.bin_s,
            "bins": bundle.bins,
            "window_s": window_ns / 1e9,
            "thresholds": {cls: round(cm.threshold.value, 6) for cls, cm in bundle.classes.items()},
            "threshold_methods": {cls: cm.threshold.method for cls, cm in bundle.classes.items()},
            "allowances": {cls: cm.threshold.allowance for cls, cm in bundle.classes.items()},
            "zscore_training_windows": baselines_fitted,
        },
        "intervals": [_interval_record(li) for li in intervals if li.interval.end_ns > test_lo and li.interval.start_ns < test_hi],
    }
    test_hours = (int(w.end_ns.max()) - int(w.start_ns.min())) / 3.6e12
    g = w.entity_class == "global"
    benign_hours = float(np.sum(w.benign[g])) * window_ns / 3.6e12
    result["test"] = {
        "hours": round(test_hours, 4),
        "benign_hours": round(benign_hours, 4),
        "hosts": int(len(set(w.entity[w.entity_class == "host"].tolist()))),
    }
    test_intervals = [li for li in intervals if li.interval.positive and li.interval.end_ns > test_lo and li.interval.start_ns < test_hi]
    for cls in ENTITY_CLASSES:
        result[cls] = _entity_class_metrics(w, cls, test_intervals, incidents, bundle, window_ns, benign_hours, test_hours)
    result["most_relevant_host"] = most_relevant_host(w)
    with naming(plan.out / "metrics.json"):
        (plan.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_report(plan.out, result, w, intervals, incidents)
    return result


def _split_summary(plan: EvalPlan, t0_ns: int, w: Windows) -> dict:
    if plan.train_end_s is not None:
        kind, text = "time", f"train on [0, {plan.train_end_s:g}) s of the capture (positive intervals left out), test on the rest"
    elif plan.train_start_s is not None:
        kind, text = "time", (f"train on [{plan.train_start_s:g} s, end) of the capture (positive intervals left out),"
                              f" test on [0, {plan.train_start_s:g}) s")
    elif plan.train_pcaps:
        kind, text = "captures", "train on --train-pcap captures, test on --pcap captures"
    else:
        kind, text = "model", "model given (--model); all of the test captures are test"
    return {
        "kind": kind,
        "description": text,
        "train_end_s": plan.train_end_s,
        "train_start_s": plan.train_start_s,
        "train_pcaps": [str(p) for p in plan.train_pcaps],
        "test_start": ns_to_iso(int(w.start_ns.min())),
        "test_end": ns_to_iso(int(w.end_ns.max())),
        "capture_start": ns_to_iso(t0_ns),
    }


def _interval_record(li: LabelledInterval) -> dict:
    return {
        "event": li.interval.event,
        "positive": li.interval.positive,
        "start": ns_to_iso(li.interval.start_ns),
        "end": ns_to_iso(li.interval.end_ns),
        "attackers": li.attackers,
        "targets": li.targets,
        "attack_packets": li.attacker_packets,
        "visible": li.visible,
        "host_packets": li.host_packets,
        "visible_hosts": sorted(li.visible_hosts),
        # windows holding packets of it (what the visible variant counts as positives)
        "windows_with_attack_packets": None if li.window_packets is None else len(li.window_packets[""]),
    }


def _entity_class_metrics(
    w: Windows, cls: str, intervals: list[LabelledInterval], incidents: list[IncidentEvent], bundle: ModelBundle,
    window_ns: int, benign_hours: float, test_hours: float,
) -> dict:
    rows = (w.entity_class == cls) & ~w.unlabelled  # type: ignore[operator]
    y = w.label[rows]  # type: ignore[index]
    out: dict = {
        "windows": int((w.entity_class == cls).sum()),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "unlabelled": int((w.unlabelled & (w.entity_class == cls)).sum()),  # type: ignore[operator]
        "trail": int((w.trail & (w.entity_class == cls)).sum()),  # type: ignore[operator]
        "threshold": round(bundle.classes[cls].threshold.value, 6) if cls in bundle.classes else None,
        "detectors": {},
    }
    for det in DETECTORS:
        s = w.scores[det][rows]
        out["detectors"][det] = M.summary(s, y, FPR_POINTS) if np.all(np.isfinite(s)) and s.size else None
    labelled_positive = np.zeros(rows.shape[0], dtype=bool)
    labelled_positive[rows] = y
    out["lstm_minus"] = _lstm_minus(w, rows, labelled_positive, _clusters(w, intervals, cls, window_ns))
    # the same, pooled over the visible windows of every class (what the per-class visible
    # variant counts), so that attacks of all kinds give the interval enough clusters
    visible = [li for li in intervals if li.visible]
    pos = np.zeros(rows.shape[0], dtype=bool)
    for li in visible:
        pos |= _class_rows(w, li, cls, visible_only=True)
    sel = pos | ((w.entity_class == cls) & w.benign)  # type: ignore[operator]
    out["lstm_minus_visible"] = _lstm_minus(w, sel, pos, _clusters(w, visible, cls, window_ns, visible_only=True))
    flags = w.anomalous[rows]
    out["at_threshold"] = {
        "tpr": M._round(M.recall(flags[y])),
        "fpr": M._round(float(flags[~y].mean()) if (~y).any() else None),
    }
    negatives = (w.entity_class == cls) & w.benign  # type: ignore[operator]
    classes: dict[str, dict] = {}
    for event in sorted({li.interval.event for li in intervals}):
        of_event = [li for li in intervals if li.interval.event == event]
        entry = {}
        for variant, chosen in (("all", of_event), ("visible", [li for li in of_event if li.visible])):
            pos = np.zeros(w.start_ns.shape[0], dtype=bool)
            for li in chosen:
                pos |= _class_rows(w, li, cls, visible_only=variant == "visible")
            sel = pos | negatives
            entry[variant] = {
                "intervals": len(chosen),
                "positives": int(pos.sum()),
                "negatives": int(negatives.sum()),
                "recall": M._round(M.recall(w.anomalous[pos])),
                "roc_auc": {
                    det: (M._round(M.roc_auc(w.scores[det][sel], pos[sel])) if np.all(np.isfinite(w.scores[det][sel])) else None)
                    for det in DETECTORS
                },
                "lstm_minus": _lstm_minus(w, sel, pos, _clusters(w, chosen, cls, window_ns, visible_only=variant == "visible")),
            }
        entry["visible_unknown"] = sum(1 for li in of_event if li.visible is None)
        classes[event] = entry
    out["classes"] = classes
    detections = []
    for li in intervals:
        sel = w.entity_class == cls
        if cls == "host":
            sel = sel & np.isin(w.entity, list(li.hosts)) if li.hosts else np.zeros_like(sel)
        d = M.detection_delay(w.start_ns[sel], w.end_ns[sel], w.anomalous[sel], li.interval.start_ns, li.interval.end_ns, window_ns)
        detections.append({"event": li.interval.event, "start": ns_to_iso(li.interval.start_ns), "visible": li.visible,
                           "hosts": sorted(li.hosts), **d})
    out["detection"] = detections
    mine = [e for e in incidents if (e.entity_class == ENTITY_GLOBAL) == (cls == ENTITY_GLOBAL)]
    benign_inc = [e for e in mine if not any(
        e.first_seen_ns < li.interval.end_ns and e.first_seen_ns + window_ns > li.interval.start_ns for li in intervals)]
    per_hour = M.rate_per_hour(len(benign_inc), benign_hours)
    out["incidents"] = {
        "opened": len(mine),
        "benign": len(benign_inc),
        "per_hour": M._round(per_hour),
        "per_day": M._round(per_hour * 24 if per_hour is not None else None),
        "benign_list": [{"entity": e.entity, "start": ns_to_iso(e.first_seen_ns), "score": round(e.score, 4),
                         "category": e.category} for e in benign_inc],
    }
    if cls != ENTITY_GLOBAL:
        # the benign hours are the time no interval covers: on a list whose beacons last hours a
        # sliver of the test span (0.18 h of the office's 6), and a host's incident during
        # another host's instance went uncounted (17 on the office, 3 counted: EVALUATION li).
        # Hosts no interval names are benign all through the test span
        touched = set().union(*(li.hosts for li in intervals)) if intervals else set()
        untouched = [e for e in mine if e.entity not in touched]
        per_hour = M.rate_per_hour(len(untouched), test_hours)
        out["incidents"]["untouched_hosts"] = {
            "benign": len(untouched),
            "per_day": M._round(per_hour * 24 if per_hour is not None else None),
            "list": [{"entity": e.entity, "start": ns_to_iso(e.first_seen_ns), "score": round(e.score, 4),
                      "category": e.category} for e in untouched],
        }
    return out


def most_relevant_host(w: Windows) -> str | None:
    """The host with the most positive windows; without any, the highest-scoring one."""
    host = w.entity_class == "host"
    if not host.any():
        return None
    pos = host & w.label  # type: ignore[operator]
    if pos.any():
        names, counts = np.unique(w.entity[pos], return_counts=True)
        return str(names[np.argmax(counts)])
    rows = np.flatnonzero(host)
    return str(w.entity[rows[np.argmax(w.scores["lstm"][rows])]])
