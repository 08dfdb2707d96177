"""The Scoring stage: closed windows -> StreamingScorer -> window scores -> IncidentTracker -> sinks.

Where it stands: after the window stages (capture), before the sinks (alerting). This is the
one place a closed window is scored and turned into incident events, built once from the
config and a model bundle: the daemon and the offline commands (`netad score`, `netad eval`,
`netad bench`) reach it through service.pipeline.Pipeline, the Kafka scorer
(service.kafka.scorer) holds one per sensor. So live, replayed and scaled-out runs give the
same scores and the same incident ids.

It owns the scorer (hidden state per entity) and the tracker (streaks, open incidents), and
counts what it scored and emitted. The events' evidence is ranked by cause before they are
published (service.explain.evidence: the flows behind the top features, not the busiest). `apply` puts a reloaded config's incident settings in
force, every field of `incidents.*` (rules included), so a setting added to the config is
applied on SIGHUP without another line here; `swap_model` changes the model between windows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import structlog
import torch

from detector.alerting.incidents import IncidentTracker
from detector.alerting.rules import RuleSet, load_rules
from detector.config import Config, IncidentsConfig, key_location
from detector.contracts import IncidentEvent, ScoreBatch, WindowBatch
from detector.errors import ConfigError, OutputError
from detector.files import AppendFile
from detector.model.bundle import ModelBundle
from detector.model.scorer import StreamingScorer
from detector.service.explain.evidence import CauseRanker
from detector.service.state import EntityStates

log = structlog.get_logger()

_SCORES_BUFFER = 1 << 20  # characters of score lines held before they are written


class ScoresFile:
    """The window-score JSON lines (`outputs.scores`, `--scores`): a side output of scoring,
    which a disk that refuses it (full, a quota, read-only) must not stop. The daemon, the
    Kafka scorer, `netad score` and `netad eval` write through this one class.

    Lines are held until flush() or 1 MiB, then written in one append. A write that fails
    drops the lines it held, counted, and cuts off the file what the disk took of them, so
    that the file stays whole lines; the first failure of an outage and the end of one are
    logged with the path (`scores_write_failed`, `scores_write_recovered`). The window's
    incidents go on regardless. Before, the failed write raised out of the scoring stage,
    ahead of the window's incidents: a daemon whose scores file sat on a full disk stopped
    at its first window, exit 73, with no incident delivered, and again at every restart.
    `netad score` and `netad eval` score to the end and then say what was dropped: close()
    raises OutputError (exit 73), the daemon's close() logs it. A file an outside logrotate
    moved away or deleted is followed (files.AppendFile): the next flush writes a new file at
    the path. Before, the daemon wrote on into the rotated file (or a deleted one) for as long
    as it ran, and the path stayed empty."""

    def __init__(self, path: str | Path, *, append: bool) -> None:
        self.path = Path(path)
        self._file = AppendFile(self.path, 0o644, truncate=not append)
        try:
            self._file.open()
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename not in (None, str(self.path)) else ""  # a directory on the way
            raise OutputError(f"{self.path}: cannot write the window scores: {where}{exc.strerror or exc}") from None
        self._closed = False
        self._held: list[str] = []
        self._held_chars = 0
        self.lines_dropped = 0
        self._outage: int | None = None  # lines_dropped when the ongoing outage began
        self.error: str | None = None  # the reason of the first failure

    def write(self, text: str) -> None:
        self._held.append(text)
        self._held_chars += len(text)
        if self._held_chars >= _SCORES_BUFFER:
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        data = "".join(self._held).encode("utf-8")
        self._held, self._held_chars = [], 0
        try:
            self._file.append(data)  # or nothing of it: the file stays whole lines
        except OSError as exc:
            self._dropped(data.count(b"\n"), exc)
            return
        if self._outage is not None:
            log.info("scores_write_recovered", path=str(self.path), lines_dropped=self.lines_dropped - self._outage)
            self._outage = None

    def sync(self) -> None:
        """flush() and fsync (the Kafka scorer, before it commits the windows' offsets)."""
        self.flush()
        try:
            self._file.sync()
        except OSError as exc:
            self._dropped(0, exc)

    def close(self) -> None:
        """Write what is held and close. OutputError when lines were dropped on the way."""
        if self._closed:
            return
        self.flush()
        self._file.close()
        self._closed = True
        if self.lines_dropped:
            raise OutputError(f"{self.path}: {self.lines_dropped:,} window-score lines could not be written: {self.error}")

    def _dropped(self, lines: int, exc: OSError) -> None:
        self.lines_dropped += lines
        if self.error is None:
            self.error = exc.strerror or repr(exc)
        if self._outage is None:
            self._outage = self.lines_dropped - lines
            log.error("scores_write_failed", path=str(self.path), error=exc.strerror or repr(exc), lines_dropped=lines,
                      reason="the window scores are dropped while the disk refuses them; scoring and incidents go on")


def open_scores(cfg: Config, config_path: str | None, append: bool) -> ScoresFile | None:
    """The daemon's and the Kafka scorer's `outputs.scores` (None when not set). A path that
    cannot be made is the config's to mend: ConfigError with its line (78, not restarted)."""
    if cfg.outputs.scores is None:
        return None
    try:
        return ScoresFile(cfg.outputs.scores, append=append)
    except OutputError as exc:
        raise ConfigError(f"{key_location(config_path, ('outputs', 'scores'))}: {exc}") from None


def close_scores(scores: ScoresFile | None) -> None:
    """The daemon's and the Kafka scorer's: lines the disk dropped are said as it stops, not
    fatal (scoring went on without them)."""
    if scores is None:
        return
    try:
        scores.close()
    except OutputError as exc:
        log.error("scores_lines_dropped", path=str(scores.path), lines=scores.lines_dropped, reason=str(exc))


class IncidentSink(Protocol):
    def publish(self, event: IncidentEvent) -> None: ...


# told of every scored window after its events were published: (window, its scores, the
# events); the incident page keeps its history through one (service.explain.board)
ScoringWatcher = Callable[[WindowBatch, ScoreBatch, list[IncidentEvent]], None]


def check_device(device: str) -> None:
    """A device the config asks for that this host lacks is a config error, said before
    anything is built (not a traceback from the first tensor moved there)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: cuda requested but no CUDA device is available on this host "
                          "(use auto to take CUDA when there is one, or cpu)")


def build_scorer(cfg: Config, bundle: ModelBundle) -> StreamingScorer:
    check_device(cfg.model.device)
    return StreamingScorer(bundle, device=cfg.model.device, warmup_windows=cfg.model.warmup_windows,
                           max_entities=cfg.windows.max_entities, entity_idle_s=cfg.windows.entity_idle_s,
                           precision=cfg.model.precision)


def incident_settings(incidents: IncidentsConfig) -> dict[str, Any]:
    """The tracker's settings from `incidents.*`, every field but the rule files (loaded into a RuleSet)."""
    return {name: getattr(incidents, name) for name in type(incidents).model_fields if name != "rules"}


def incident_settings_of(incidents: IncidentsConfig) -> dict[str, Any]:
    """Every `incidents.*` setting, as `Scoring.settings()` reports them (rule files as strings)."""
    return {"rules": [str(p) for p in incidents.rules], **incident_settings(incidents)}


class Scoring:
    """`process(window)` -> (its scores, the incident events they caused), published to `sinks`."""

    def __init__(
        self,
        cfg: Config,
        bundle: ModelBundle,
        observer: dict[str, str],
        rules: RuleSet | None = None,
        sinks: Iterable[IncidentSink] = (),
        scores_out: IO[str] | ScoresFile | None = None,
        score_fields: Mapping[str, str] | None = None,
        on_scored: Callable[[WindowBatch, ScoreBatch, float], None] | None = None,
        annotate: Callable[[IncidentEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.scorer = build_scorer(cfg, bundle)
        self.rule_files = [str(p) for p in cfg.incidents.rules]
        self.tracker = IncidentTracker(rules=rules if rules is not None else load_rules(cfg.incidents.rules),
                                       observer=dict(observer), model_version=bundle.version,
                                       **incident_settings(cfg.incidents))
        self.sinks = list(sinks)
        self.scores_out = scores_out
        self.score_fields = dict(score_fields or {})  # fields put first in each score line (the Kafka scorer: sensor)
        # called after each window is scored: (window, its scores, seconds the scorer took);
        # the daemon observes latency and keeps recent windows for retraining through it
        self.on_scored = on_scored
        self.annotate = annotate  # adds to an event before it is published (flow records: the exporter)
        self.causes = CauseRanker()  # events' evidence: the flows, peers and ports behind their top features
        self.watchers: list[ScoringWatcher] = []
        self.entity_windows = 0
        self.anomalous_windows = 0
        self.alarms_left = 0  # windows over the threshold left to the home host whose doing they were (model.scorer)
        self.events: Counter[tuple[str, str]] = Counter()  # (action, severity)
        self.opened_by_entity: Counter[str] = Counter()
        self.last_window_end_ns: int | None = None

    # ---------------------------------------------------------------- the stage
    def process(self, window: WindowBatch) -> tuple[ScoreBatch, list[IncidentEvent]]:
        started = time.perf_counter()
        scores = self.scorer.score(window)
        if self.on_scored is not None:
            self.on_scored(window, scores, time.perf_counter() - started)
        self.entity_windows += len(scores)
        self.anomalous_windows += int(np.count_nonzero(scores.anomalous))
        self.alarms_left += len(scores.left_to)
        if self.scores_out is not None:
            self.scores_out.write(scores.jsonl(**self.score_fields))
        events = self.tracker.push(scores)
        self.causes.explain(window, scores, events)
        for event in events:
            if self.annotate is not None:
                self.annotate(event)
            self.publish(event)
        self.last_window_end_ns = window.window_end_ns
        for watch in self.watchers:
            watch(window, scores, events)
        return scores, events

    def publish(self, event: IncidentEvent) -> None:
        """An event to every sink, counted (the scored windows' and the event clock's)."""
        self.events[(event.action, event.severity)] += 1
        if event.action == "opened":
            self.opened_by_entity[event.entity] += 1
        for sink in self.sinks:
            sink.publish(event)

    def count(self, action: str) -> int:
        """Incident events emitted with this action (opened, updated, resolved)."""
        return sum(n for (a, _severity), n in self.events.items() if a == action)

    @property
    def observer(self) -> dict[str, str]:
        return self.tracker.observer

    @observer.setter
    def observer(self, observer: dict[str, str]) -> None:
        self.tracker.observer = observer

    # ---------------------------------------------------------------- changes while running
    def apply(self, incidents: IncidentsConfig, rules: RuleSet) -> dict[str, Any]:
        """Put every incident setting of a reloaded config in force from the next window;
        returns the settings now in force (as `settings()`)."""
        self.tracker.rules, self.rule_files = rules, [str(p) for p in incidents.rules]
        for name, value in incident_settings(incidents).items():
            setattr(self.tracker, name, value)
        return self.settings()

    def settings(self) -> dict[str, Any]:
        """The incident settings in force, read back from the tracker, under their config names."""
        return {"rules": list(self.rule_files), **{name: getattr(self.tracker, name) for name in incident_settings(self.cfg.incidents)}}

    def swap_model(self, bundle: ModelBundle) -> bool:
        """Score with `bundle` from the next window on; True if hidden states were kept
        (same feature schema and state size: the entities' memory carries over)."""
        old = self.scorer
        scorer = build_scorer(self.cfg, bundle)
        kept = bundle.schema == old.bundle.schema and bundle.state_size == old.bundle.state_size
        if kept:
            scorer.load_state_dict(old.state_dict())
        self.scorer, self.bundle = scorer, bundle
        self.tracker.model_version = bundle.version
        return kept

    # ---------------------------------------------------------------- state
    def entity_states(self) -> dict[str, EntityStates]:
        return {cls: EntityStates.of(entry) for cls, entry in self.scorer.state_dict().items()}

    def entity_states_of(self, entity_class: str, entities: list[str]) -> EntityStates:
        return EntityStates.of(self.scorer.states_of(entity_class, entities))

    def load_entity_states(self, states: Mapping[str, EntityStates]) -> None:
        """Put states back, merged: entities not in `states` keep theirs."""
        self.scorer.load_state_dict({cls: s.as_scorer_dict() for cls, s in states.items()})

    def forget(self, entity_class: str, entities: list[str]) -> None:
        """Let go of some entities (their Kafka partition moved to another scorer)."""
        self.scorer.forget(entity_class, entities)
        self.tracker.forget(entities)
        self.causes.forget(entities)


class ScoringThread:
    """The Scoring stage's work on a thread of its own, in the order it was handed over: with
    capture workers (`source.workers` > 1) the parent merges their tallies and closes windows
    while the windows before are scored, so capture does not wait on the LSTM (torch lets go
    of the GIL while it runs the network; the numba kernels of the window stage do not, hence
    a thread here and processes for the workers).

    `submit(fn, *args)` queues a call (it waits while `depth` calls are queued: a scorer
    slower than capture holds capture back rather than windows piling up); `settle()` waits
    until every call queued has run. Whoever reads or changes the stage's state (a checkpoint,
    a reload, a model swap, the end of the input) settles first. A call that raises stops the
    thread's work: the calls queued after it are dropped, and `submit` or `settle` raises the
    error in the caller's thread, as if the call had run there."""

    def __init__(self, depth: int = 4) -> None:
        self._calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="netad-scoring", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        self._calls.put((fn, args))

    def settle(self) -> None:
        self._calls.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            fn, args = self._calls.get()
            try:
                if self._error is None:
                    fn(*args)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._calls.task_done()
