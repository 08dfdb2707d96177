"""SIGHUP: build the new config, rules, sinks (and model, if its path changed) completely,
before anything is swapped. Any problem raises ConfigError/ModelError and the daemon keeps
what it runs (uvicorn's and nginx's rule: validate, then swap). The new config is validated
as strictly as at start-up (every value finite and within the schema's bounds, no key given
twice); a new model is verified as at start-up (ModelBundle.load: hashes, values, the entity
classes the running config scores).

Sinks are reconciled rather than rebuilt: a sink whose URL and name did not change is kept
as it is (its delivery thread, connection and backlog go on undisturbed); new sinks are
built; sinks no longer configured are retired (closed by the daemon after the swap, their
undelivered events left in their spool). Two live sinks can never hold one spool directory
(the spool's flock refuses it), so a sink whose name stays but whose URL changes is the one
case where the old one must be closed before the new one can be built; should building it
fail, the old one is rebuilt from its URL and the reload fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from detector.alerting.rules import RuleSet, load_rules
from detector.alerting.sinks import Sink, SinkSet, build_sink, parse_sink_url, sink_clashes
from detector.config import Config, home_net_change, load_config
from detector.contracts import FeatureSchema
from detector.errors import ConfigError, ModelError
from detector.model.bundle import ModelBundle

log = structlog.get_logger()

# config sections the running pipeline was built from: a change needs a restart
_RESTART_SECTIONS = ("role", "sensor", "home_net", "source", "flows", "windows", "state_dir", "outputs", "kafka")
_RESTART_MODEL_KEYS = ("device", "warmup_windows", "threads", "precision")


_RETIRE_TIMEOUT_S = 1.0  # a sink dropped by a reload gets this long to deliver, then its spool waits


def retire_sinks(sinks: list[Sink]) -> None:
    """Close the sinks a reload dropped (after the swap): what they could not deliver in
    time stays in their spools."""
    for sink in sinks:
        backlog = sink.stats["backlog"]
        sink.close(timeout_s=_RETIRE_TIMEOUT_S)
        log.info("sink_retired", sink=sink.name, backlog=backlog)


def wanted_sinks(cfg: Config, extra_urls: list[str]) -> list[tuple[str, str | None]]:
    """(url, explicit name) of every sink: the config's, then the command line's."""
    return [(s.url, s.name or None) for s in cfg.sinks] + [(u, None) for u in extra_urls]


def _refuse_clashes(wanted: list[tuple[str, str | None]], scores: Path | None) -> None:
    clashes = sink_clashes(wanted, scores)
    if clashes:
        raise ConfigError("\n".join(f"{'outputs.scores' if i is None else f'sinks[{i}]'}: {why}" for i, why in clashes))


def build_sinks(wanted: list[tuple[str, str | None]], spool_dir: Path | None, scores: Path | None = None) -> SinkSet:
    """Every sink or none (none where they clash: sink_clashes, with outputs.scores at
    `scores`); if one fails, those already built are closed."""
    _refuse_clashes(wanted, scores)
    built: list[Sink] = []
    try:
        for i, (url, name) in enumerate(wanted):
            try:
                built.append(build_sink(url, spool_dir=spool_dir, name=name))
            except ConfigError as exc:
                raise ConfigError(f"sinks[{i}]: {exc}") from None
        return SinkSet(built)
    except ConfigError:
        for sink in built:
            sink.close(timeout_s=0.0)
        raise


def _sink_name(url: str, name: str | None, index: int) -> str:
    """The name a URL's sink will have, validating the URL without starting anything."""
    try:
        spec = parse_sink_url(url, name=name)
    except ConfigError as exc:
        raise ConfigError(f"sinks[{index}]: {exc}") from None
    spec.transport.close()
    return spec.name


def reconcile_sinks(current: SinkSet, wanted: list[tuple[str, str | None]], spool_dir: Path | None,
                    scores: Path | None = None) -> tuple[SinkSet, list[Sink]]:
    """(the new SinkSet, the current sinks to retire after the swap). Raises ConfigError
    with the current sinks untouched (but see the module docstring for renamed spools), also
    where the wanted sinks clash (sink_clashes, with outputs.scores at `scores`)."""
    names = [_sink_name(url, name, i) for i, (url, name) in enumerate(wanted)]
    _refuse_clashes(wanted, scores)
    have = {s.name: s for s in current}
    keep = {n for n, (url, _) in zip(names, wanted, strict=True) if n in have and have[n].url == url}
    retire = [s for s in current if s.name not in keep]
    clashing = {s.name for s in retire} & set(names)  # same name, new URL: same spool directory
    built: dict[str, Sink] = {}
    closed: list[Sink] = []
    try:
        for i, (n, (url, name)) in enumerate(zip(names, wanted, strict=True)):
            if n in keep or n in clashing:
                continue
            built[n] = _build(url, name, spool_dir, i)
        for i, (n, (url, name)) in enumerate(zip(names, wanted, strict=True)):
            if n in clashing:
                have[n].close(timeout_s=1.0)
                closed.append(have[n])
                built[n] = _build(url, name, spool_dir, i)
    except ConfigError:
        for sink in built.values():
            sink.close(timeout_s=0.0)
        for old in closed:  # put back what had to make room
            try:
                current.sinks[current.sinks.index(old)] = build_sink(old.url, spool_dir=spool_dir, name=old.name)
            except ConfigError as exc:
                log.error("sink_restore_failed", sink=old.name, reason=str(exc))
        raise
    sinks = [have[n] if n in keep else built[n] for n in names]
    return SinkSet(sinks), [s for s in retire if s not in closed]


def _build(url: str, name: str | None, spool_dir: Path | None, index: int) -> Sink:
    try:
        return build_sink(url, spool_dir=spool_dir, name=name)
    except ConfigError as exc:
        raise ConfigError(f"sinks[{index}]: {exc}") from None


@dataclass
class ReloadPlan:
    cfg: Config  # the effective config: the new one, restart-only sections as they run
    rules: RuleSet
    sinks: SinkSet
    retired: list[Sink]
    bundle: ModelBundle | None  # a new model (model.path changed), validated against the windows
    restart_required: list[str] = field(default_factory=list)


def plan_reload(config_path: str | None, running: Config, current_sinks: SinkSet, extra_urls: list[str],
                running_schema: FeatureSchema) -> ReloadPlan:
    """Build everything a reload needs; raise ConfigError/ModelError and change nothing."""
    new = load_config(config_path) if config_path else running
    rules = load_rules(new.incidents.rules)
    restart = [k for k in _RESTART_SECTIONS if getattr(new, k) != getattr(running, k)]
    restart += [f"model.{k}" for k in _RESTART_MODEL_KEYS
                if hasattr(new.model, k) and getattr(new.model, k) != getattr(running.model, k)]
    if new.service.metrics_address != running.service.metrics_address:
        restart.append("service.metrics_address")
    if new.service.incident_page != running.service.incident_page:
        restart.append("service.incident_page")
    bundle = None
    if new.model.path != running.model.path:
        bundle = ModelBundle.load(new.model.path, expected_schema=running_schema, classes=running.entity_classes)
        if (bundle.bin_s, bundle.bins) != (running.windows.bin_s, running.windows.bins):
            raise ModelError(f"{new.model.path}: trained on windows of {bundle.bins} x {bundle.bin_s} s bins, "
                             f"the daemon runs {running.windows.bins} x {running.windows.bin_s} s")
        change = home_net_change(bundle.training.get("home_net"), running.home_net, ours="the daemon runs")
        if change:
            raise ModelError(f"{new.model.path}: {change}")
    # what needs a restart keeps running as it is until then
    keep_model = {k: getattr(running.model, k) for k in _RESTART_MODEL_KEYS if hasattr(running.model, k)}
    effective = new.model_copy(
        update={
            **{k: getattr(running, k) for k in _RESTART_SECTIONS},
            "model": new.model.model_copy(update=keep_model),
            "service": new.service.model_copy(update={"metrics_address": running.service.metrics_address,
                                                      "incident_page": running.service.incident_page}),
        }
    )
    spool_dir = running.state_dir / "spool"
    sinks, retired = reconcile_sinks(current_sinks, wanted_sinks(new, extra_urls), spool_dir, running.outputs.scores)
    return ReloadPlan(effective, rules, sinks, retired, bundle, restart)
