"""`netad train` wiring: captures (or Zeek conn.logs) -> the daemon's window stages -> training.

Training sees exactly the windows the daemon will compute, because it builds them with the
same stages (service.pipeline.window_stream). A model trained on conn.logs has the flow
feature schema and scores flow sources (netflow, zeek); one trained on captures, packets.

One exception, so that training reads what scoring will: the peer history's warm-up
(`windows.history_warmup_s`: nothing counts as new before an entity's history is that old)
takes at most WARMUP_SHARE of the training span. A daemon starts from the history its
model's span ended with (the bundle's), so an entity the span knew is warm once its history
is that old, an hour by default, and from then on its windows count new peers and ports. A
span shorter than the warm-up never counted one: the model learned those inputs as always 0
and read every later count as an anomaly of the whole window. The synthetic office of the
test suite, trained on 25 minutes, opened 19 incidents on it, 8 of them benign (6 on
workstations once their histories warmed); with the warm-up cut to a quarter of the span, 7,
none of them benign (docs/EVALUATION.md, section xxiii).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import structlog

from detector.config import Config
from detector.contracts import ENTITY_GLOBAL, CarriedHistory, FlowRecordBatch, PacketBatch, WindowBatch
from detector.errors import OutputError, TrainingDataError
from detector.model.bundle import ModelBundle
from detector.model.training import TrainingParams, train
from detector.service.pipeline import input_batches, window_stream
from detector.truth import load_truth

log = structlog.get_logger()

WARMUP_SHARE = 0.25  # at most this share of a training span goes to the peer history's warm-up


def training_params(cfg: Config) -> TrainingParams:
    t = cfg.training
    return TrainingParams(
        hidden_size=t.hidden_size,
        members=t.members,
        epochs=t.epochs,
        learning_rate=t.learning_rate,
        batch_streams=t.batch_streams,
        seed=t.seed,
        validation_fraction=t.validation_fraction,
        trim_fraction=t.trim_fraction,
        threshold_quantile=t.threshold_quantile,
        target_false_alarm=t.target_false_alarm,
        threads=cfg.model.threads,
        host_groups=t.host_groups,
    )


def _time_slice(batches: Iterator[PacketBatch | FlowRecordBatch], start_s: float | None, end_s: float | None,
                stop_ns: int | None) -> Iterator[PacketBatch | FlowRecordBatch]:
    """Packets (or flow records, by their start) from start_s to end_s after the first one,
    and before stop_ns."""
    t0: int | None = None
    for b in batches:
        if len(b) == 0:
            continue
        ts = b.ts_ns if isinstance(b, PacketBatch) else b.start_ns
        if t0 is None:
            t0 = int(ts[0])
        keep = None
        if start_s is not None:
            keep = ts >= t0 + int(start_s * 1e9)
        if end_s is not None:
            k = ts < t0 + int(end_s * 1e9)
            keep = k if keep is None else keep & k
        if stop_ns is not None:
            k = ts < stop_ns
            keep = k if keep is None else keep & k
        if keep is not None:
            if not keep.any():
                # a capture is in time order: nothing later can be kept. A conn.log is in
                # the order connections ended, so it is read to its end
                ended = (end_s is not None and ts[0] >= t0 + int(end_s * 1e9)) or (stop_ns is not None and ts[0] >= stop_ns)
                if ended and isinstance(b, PacketBatch):
                    return
                continue
            b = b.take(keep)
        yield b


def train_from_captures(
    cfg: Config,
    pcaps: list[Path],
    out: Path,
    truth: str | Path | None = None,
    before_first_attack: bool = False,
    start_s: float | None = None,
    end_s: float | None = None,
    progress: bool = False,
    flow_records: bool = False,
    damage: dict[str, str] | None = None,
) -> ModelBundle:
    """Train on `pcaps`: capture files, or Zeek conn.logs when `flow_records`; captures cut
    short by damage are used up to it and named in `damage` (path -> what and where)."""
    exclude: list[tuple[int, int]] = []
    stop_ns = None
    if truth is not None:
        positives = [iv for iv in load_truth(truth) if iv.positive]
        exclude = [(iv.start_ns, iv.end_ns) for iv in positives]
        if before_first_attack and positives:
            stop_ns = min(iv.start_ns for iv in positives)

    def build(c: Config) -> tuple[list[WindowBatch], list[CarriedHistory]]:
        carried: list[CarriedHistory] = []
        batches = _time_slice(input_batches(pcaps, flow_records, c.source.batch_packets, damage), start_s, end_s, stop_ns)
        built = list(window_stream(c, batches, flow_records, ended=carried.append))
        if stop_ns is not None:
            built = [w for w in built if w.window_end_ns <= stop_ns]
        return built, carried

    windows, carried = build(cfg)
    warmup_s = cfg.windows.history_warmup_s
    if windows:
        span_s = (windows[-1].window_end_ns - windows[0].window_end_ns) / 1e9 + cfg.windows.bin_s * cfg.windows.bins
        if warmup_s > WARMUP_SHARE * span_s:  # built again: see the module's text
            warmup_s = WARMUP_SHARE * span_s
            log.info("training_history_warmup_shortened", history_warmup_s=round(warmup_s, 1), span_s=round(span_s, 1),
                     configured_s=cfg.windows.history_warmup_s)
            windows, carried = build(cfg.model_copy(update={
                "windows": cfg.windows.model_copy(update={"history_warmup_s": warmup_s})}))
    log.info("training_windows_built", windows=len(windows), captures=[str(p) for p in pcaps])
    try:
        bundle = train(windows, training_params(cfg), cfg.windows.bin_s, cfg.windows.bins, exclude=exclude, progress=progress)
    except ValueError as exc:  # the model layer's word for "these windows cannot make a model"
        span_s = len(windows) * cfg.windows.bin_s * cfg.windows.bins
        raise TrainingDataError(f"cannot train on {', '.join(str(p) for p in pcaps)}: {exc} ({len(windows)} window(s) of "
                                f"{cfg.windows.bins} x {cfg.windows.bin_s:g} s, {span_s / 3600:.2f} h; train on at least "
                                "a few hours of benign traffic)") from None
    bundle.training["conn_logs" if flow_records else "captures"] = [str(p) for p in pcaps]
    bundle.training["home_net"] = cfg.home_net
    if set(bundle.classes) <= {ENTITY_GLOBAL}:  # a first run's home_net that misses the network
        warning = (f"no host of home_net ({', '.join(cfg.home_net)}) in the training span: the model scores the link "
                   "only, and no host will ever have an incident; set home_net (or NETAD_HOME_NET) to the networks "
                   "your hosts are on")
        log.warning("training_warning", entity_class="host", warning=warning)
        bundle.training["warnings"] = [warning]
    for name, nets in cfg.training.host_groups.items():
        if name not in bundle.host_groups:  # model.groups: its hosts are scored as hosts
            warning = (f"no host of host group {name} ({', '.join(nets)}) in the training span: the group has no model, and "
                       "its hosts are scored with the other hosts'")
            log.warning("training_warning", entity_class=name, warning=warning)
            bundle.training.setdefault("warnings", []).append(warning)
    bundle.training["history_warmup_s"] = warmup_s
    bundle.history = carried[0] if carried else None
    try:
        bundle.save(out)
    except OSError as exc:  # after minutes of training: one line that says why, not a traceback
        raise OutputError(f"{out}: the trained model could not be written: {exc}") from exc
    log.info("model_saved", path=str(out), version=bundle.version)
    return bundle
