"""`netad check-config`: what `netad run -c CONFIG` would refuse at start-up, found without
starting it, as `suricata -T` does: the config and its rule files, the source (the capture
file is readable, the interface exists), the model bundle (there, intact, made for this
config's source and windows and entity classes), the sinks (their URLs parse and their hosts
resolve, a jsonl file can be written), the state directory (the spools, checkpoints and
models go there: writable) and the window scores' file (writable).

Where it stands: in service, the one layer that sees every stage. It creates nothing (no
file, no directory, no socket), sends nothing, and imports no torch or scipy, so it answers
at once: the bundle is judged by model.json and the weights' header (model.meta), its
feature schema against the running code's (capture.schemas, apart from the numba kernels).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from detector.alerting.rules import load_rules
from detector.alerting.sinks import parse_sink_url, sink_clashes, unwritable
from detector.capture.packets.bpf import bpf_problem
from detector.capture.schemas import FLOW_SCHEMA, PACKET_SCHEMA
from detector.config import FLOW_RECORD_SOURCES, Config, home_net_change, key_location
from detector.errors import CaptureError, ConfigError, ModelError
from detector.model.meta import describe, schema_mismatch, trained_home_net

# the feature schema a source's windows have (capture.windows: PACKET_SCHEMA, FLOW_SCHEMA)
_SCHEMA_OF_SOURCE = {"pcap": "packet", "interface": "packet", "netflow": "flow", "zeek": "flow"}
_TRAIN_HINT = {"packet": "netad train -c CONFIG --pcap CAPTURE --out DIR", "flow": "netad train -c CONFIG --conn-log CONN_LOG --out DIR"}

Problem = tuple[tuple[Any, ...], str]  # (the config key, what is wrong)


def check(cfg: Config, path: str | Path | None) -> list[str]:
    """Every problem, one line each: `file:line: key: reason` (or a rule file's own
    `file:line: key: reason`). Empty when `netad run` would start."""
    lines: list[str] = []
    try:
        load_rules(cfg.incidents.rules)
    except ConfigError as exc:
        lines.append(str(exc))
    problems: list[Problem] = []
    if cfg.role != "scorer":  # a scorer reads windows from Kafka, not a source
        problems += _source(cfg)
    if cfg.role != "sensor":  # a sensor publishes windows: the scorers hold the model
        problems += _model(cfg)
        problems += _sinks(cfg)
    else:  # ... which reads them as the home_net it was trained with counted them
        change = home_net_change(trained_home_net(cfg.model.path), cfg.home_net)
        if change:
            problems.append((("home_net",), f"{change} (model {cfg.model.path})"))
    problems += _state_dir(cfg)
    problem = unwritable(cfg.outputs.scores) if cfg.outputs.scores is not None and cfg.role != "sensor" else None
    if problem:
        problems.append((("outputs", "scores"), problem))
    return lines + [f"{key_location(path, key)}: {reason}" for key, reason in problems]


def _source(cfg: Config) -> list[Problem]:
    src = cfg.source
    if src.type == "interface":
        if not src.interface:
            return [(("source", "interface"), "source.type interface needs an interface")]
        try:
            socket.if_nametoindex(src.interface)
        except OSError:
            have = ", ".join(name for _, name in socket.if_nameindex())
            return [(("source", "interface"), f"no network interface {src.interface!r} on this machine (it has: {have})")]
        try:
            problem = bpf_problem(src.bpf, src.snaplen)
        except CaptureError as exc:  # no libpcap binding: `run` says the same
            problem = str(exc)
        return [(("source", "bpf"), problem)] if problem else []
    if src.type in ("pcap", "zeek"):
        if src.path is None:
            return [(("source", "path"), f"source.type {src.type} needs a path")]
        if src.type == "zeek" and src.follow and not src.path.exists():
            return []  # a followed log may not have been written yet: run waits for it
        if not src.path.is_file():
            return [(("source", "path"), f"{src.path}: no such file")]
        if not os.access(src.path, os.R_OK):
            return [(("source", "path"), f"{src.path}: not readable")]
    return []


def _model(cfg: Config) -> list[Problem]:
    key = ("model", "path")
    wanted = "flow" if cfg.source.type in FLOW_RECORD_SOURCES else "packet"
    if not (cfg.model.path / "model.json").exists():
        demo = "; `make model` makes the demo's" if cfg.model.path == Path("var/model") else ""
        return [(key, f"no model bundle at {cfg.model.path}: train one "
                      f"({_TRAIN_HINT[wanted].replace('DIR', str(cfg.model.path))}{demo})")]
    try:
        bundle = describe(cfg.model.path)
    except ModelError as exc:
        return [(key, str(exc))]
    problems: list[Problem] = []
    schema = bundle.schema
    if cfg.role == "all-in-one" and schema.name != _SCHEMA_OF_SOURCE[cfg.source.type]:
        problems.append((key, f"the model was trained on {schema.name} features (feature schema {schema.name} "
                              f"v{schema.version}) and source.type {cfg.source.type} gives {wanted} features: "
                              f"use a model trained on them ({_TRAIN_HINT[wanted]})"))
    elif schema.name in ("packet", "flow"):
        mismatch = schema_mismatch(cfg.model.path, schema, PACKET_SCHEMA if schema.name == "packet" else FLOW_SCHEMA)
        if mismatch:
            problems.append((key, mismatch.removeprefix(f"{cfg.model.path}: ")))
    missing = [c for c in cfg.entity_classes if c not in bundle.classes]
    if missing:
        problems.append((key, f"no model for entity class {', '.join(missing)} (it has {', '.join(bundle.classes)}); "
                              "this config scores them: retrain with this config"))
    change = home_net_change(bundle.home_net, cfg.home_net)
    if change:
        problems.append((("home_net",), f"{change} (model {cfg.model.path})"))
    if (bundle.bin_s, bundle.bins) != (cfg.windows.bin_s, cfg.windows.bins):
        key_w = ("windows", "bins") if bundle.bins != cfg.windows.bins else ("windows", "bin_s")
        problems.append((key_w, f"the model was trained on windows of {bundle.bins} x {bundle.bin_s:g} s bins, "
                                f"this config has {cfg.windows.bins} x {cfg.windows.bin_s:g} s; retrain or fix windows.*"))
    return problems


def _sinks(cfg: Config) -> list[Problem]:
    problems: list[Problem] = []
    for i, sink in enumerate(cfg.sinks):
        key = ("sinks", i, "url")
        try:
            spec = parse_sink_url(sink.url, name=sink.name or None)
        except ConfigError as exc:
            problems.append((key, str(exc).removeprefix("sinks: ")))
            continue
        problem = spec.transport.check()
        if problem:
            problems.append((key, problem))
    wanted = [(sink.url, sink.name or None) for sink in cfg.sinks]
    for index, why in sink_clashes(wanted, cfg.outputs.scores):
        problems.append((("outputs", "scores") if index is None else ("sinks", index, "url"), why))
    return problems


def _state_dir(cfg: Config) -> list[Problem]:
    """The state directory and the sinks' spools in it can be written (or created)."""
    problem = unwritable(cfg.state_dir) or unwritable(cfg.state_dir / "spool")
    return [(("state_dir",), f"{problem} (the sinks' spools, checkpoints and models are kept there)")] if problem else []
