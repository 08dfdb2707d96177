"""Host groups (training.host_groups, model.groups): home hosts modelled apart from the others,
each group an entity class with its own networks and thresholds. What it must keep: the
group's windows train and calibrate its own class and no other's, the bundle carries the
groups so that every scorer of it groups alike, a host's state is found under its group
whoever asks for it by the window stage's class (checkpoints, a Kafka partition handed over),
a bad group is refused with its file and line, and without groups nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.alerting.formats import to_ecs, to_ocsf
from detector.capture.schemas import PACKET_SCHEMA
from detector.config import check_groups, load_config
from detector.contracts import WindowBatch
from detector.errors import ConfigError, ModelError
from detector.model.bundle import META, ModelBundle
from detector.model.groups import HostGroups
from detector.model.scorer import StreamingScorer
from detector.model.training import TrainingParams, train
from tests.alerting.conftest import _make_event
from tests.hostile._hostile import _edit, _set

MINUTE = 60_000_000_000
WORKSTATIONS = [f"10.0.0.{i}" for i in range(1, 9)]
SERVERS = ["10.0.1.1", "10.0.1.2"]
GROUPS = {"servers": ["10.0.1.0/24"]}


def _office(windows: int, seed: int = 3) -> list[WindowBatch]:
    """Eight quiet workstations and two servers whose volumes are a hundred times theirs and
    vary far more (a monitor polling everyone, a file server)."""
    rng = np.random.default_rng(seed)
    n_feat = len(PACKET_SCHEMA.features)
    names = ["global", *WORKSTATIONS, *SERVERS]
    classes = ["global"] + ["host"] * (len(names) - 1)
    out = []
    for k in range(windows):
        feats = rng.poisson(5.0, (len(names), 6, n_feat)).astype(np.float32)
        feats[-2:] *= 100.0 * rng.lognormal(0.0, 1.0, (2, 6, 1)).astype(np.float32)
        out.append(WindowBatch(k * MINUTE, (k + 1) * MINUTE, names, classes, feats, PACKET_SCHEMA))
    return out


def _params(**kw) -> TrainingParams:
    return TrainingParams(epochs=2, hidden_size=8, validation_block_windows=10, **kw)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelBundle, Path]:
    # and a group the training span holds no host of (a DMZ not yet built)
    bundle = train(_office(120), _params(host_groups={**GROUPS, "dmz": ["10.0.7.0/24"]}), bin_s=10, bins=6)
    path = tmp_path_factory.mktemp("grouped") / "model"
    bundle.save(path)
    return bundle, path


def test_a_host_group_trains_and_calibrates_a_class_of_its_own_and_the_bundle_carries_it(grouped):
    """A group without windows (dmz) gets no class, and the bundle does not keep it: its hosts stay hosts."""
    bundle, path = grouped
    assert set(bundle.classes) == {"global", "host", "servers"}
    assert bundle.host_groups == GROUPS
    summary = bundle.training["classes"]
    assert summary["host"]["entities_per_window"] == 8.0 and summary["servers"]["entities_per_window"] == 2.0
    # the workstations' feature scales are theirs alone: fitted without the servers' volumes
    alone = train(_office(120), _params(), bin_s=10, bins=6)
    bytes_out = PACKET_SCHEMA.features.index("bytes_out")
    assert bundle.classes["host"].scaler.center[bytes_out] < alone.classes["host"].scaler.center[bytes_out]
    assert bundle.classes["servers"].scaler.center[bytes_out] > alone.classes["host"].scaler.center[bytes_out] + 3.0
    loaded = ModelBundle.load(path)
    assert loaded.host_groups == GROUPS
    assert set(loaded.classes) == {"global", "host", "servers"}
    # without groups the bundle is what it always was: no record of any
    assert alone.host_groups == {} and set(alone.classes) == {"global", "host"}
    plain = path.parent / "plain"
    alone.save(plain)
    assert "host_groups" not in json.loads((plain / META).read_text())


def test_the_scorer_reads_a_group_hosts_windows_with_its_groups_model_and_threshold(grouped):
    _, path = grouped
    bundle = ModelBundle.load(path)
    windows = _office(4, seed=9)
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    # the same windows with the servers' rows named by their class already: what the group means
    named = StreamingScorer(ModelBundle.load(path), device="cpu", warmup_windows=0)
    for wb in windows:
        out = scorer.score(wb)
        classes = ["servers" if e in SERVERS else c for e, c in zip(wb.entities, wb.entity_classes, strict=True)]
        expected = named.score(WindowBatch(wb.window_start_ns, wb.window_end_ns, wb.entities, classes, wb.features, wb.schema))
        assert list(out.entity_classes) == classes
        np.testing.assert_array_equal(out.scores, expected.scores)
        servers = np.isin(np.asarray(wb.entities), SERVERS)
        assert (out.thresholds[servers] == np.float32(bundle.classes["servers"].threshold.value)).all()
        assert (out.thresholds[~servers][1:] == np.float32(bundle.classes["host"].threshold.value)).all()


def test_a_group_hosts_state_is_found_whoever_asks_for_it_by_the_window_stages_class(grouped):
    """A Kafka scorer hands a partition's entities over by the class their records carry
    (`host`); a checkpoint keeps each bank's. Either way a server's state goes where the
    server is scored, and the next window scores as it would have."""
    _, path = grouped
    windows = _office(6, seed=11)
    first = StreamingScorer(ModelBundle.load(path), device="cpu", warmup_windows=0)
    for wb in windows[:3]:
        first.score(wb)
    asked = ["10.0.0.1", "10.0.1.2", "10.0.9.9"]  # a workstation, a server, one it never met
    held = first.states_of("host", asked)
    assert held["entities"] == ["10.0.0.1", "10.0.1.2"] and held["h"].shape[0] == 2
    last = first.last_scored_ns("host", asked)
    assert last.tolist() == [3 * MINUTE, 3 * MINUTE, -1]
    second = StreamingScorer(ModelBundle.load(path), device="cpu", warmup_windows=0)
    second.load_state_dict({"host": held})
    torch.testing.assert_close(second.states_of("servers", ["10.0.1.2"])["h"], first.states_of("servers", ["10.0.1.2"])["h"])
    assert second.last_scored_ns("host", ["10.0.1.2"]).tolist() == [3 * MINUTE]
    restored = StreamingScorer(ModelBundle.load(path), device="cpu", warmup_windows=0)
    restored.load_state_dict(first.state_dict())  # a checkpoint: by bank
    for wb in windows[3:]:
        a, b = first.score(wb), restored.score(wb)
        np.testing.assert_array_equal(a.scores, b.scores)
    first.forget("host", ["10.0.1.2"])
    assert first.last_scored_ns("host", ["10.0.1.2", "10.0.0.1"]).tolist() == [-1, 6 * MINUTE]


def test_a_bundle_whose_groups_name_a_class_it_has_no_model_for_is_refused(grouped, tmp_path: Path):
    bundle, _ = grouped
    path = tmp_path / "model"
    bundle.save(path)
    _edit(_set("host_groups", {"servers": ["10.0.1.0/24"], "dmz": ["10.0.7.0/24"]}))(path)
    with pytest.raises(ModelError, match="host_groups: no model for dmz"):
        ModelBundle.load(path)
    _edit(_set("host_groups", {"servers": ["10.0.1.0/24"], "dmz": ["10.0.0.0/16"]}))(path)
    with pytest.raises(ModelError, match="overlaps"):
        ModelBundle.load(path)


def test_hosts_match_their_groups_networks_and_nothing_else():
    groups = HostGroups({"servers": ["10.0.1.0/24", "fd00:1::/64"], "printers": ["10.0.2.0/28"]})
    assert groups.classes(["10.0.1.7", "fd00:1::5", "10.0.2.3", "10.0.2.16", "10.0.0.1", "global", "fd00:2::1"],
                          ["host", "host", "host", "host", "host", "global", "host"]) == \
        ["servers", "servers", "printers", "host", "host", "global", "host"]
    assert not HostGroups({})


@pytest.mark.parametrize("groups, reason", [
    ({"host": ["10.0.1.0/24"]}, "not global or host"),
    ({"global": ["10.0.1.0/24"]}, "not global or host"),
    ({"9lives": ["10.0.1.0/24"]}, "a letter, then"),
    ({"servers": []}, "servers: no networks"),
    ({"servers": ["10.0.1.0/33"]}, "servers[0]: '10.0.1.0/33' is not a network"),
    ({"servers": ["10.0.1.0/24"], "dns": ["10.0.1.53/32"]}, "dns[0]: 10.0.1.53/32 overlaps a network of group 'servers'"),
])
def test_groups_that_cannot_be_groups_are_refused(groups: dict, reason: str):
    with pytest.raises(ValueError) as exc:
        check_groups(groups)
    assert reason in str(exc.value)


def test_the_config_refuses_a_bad_group_with_its_file_and_line_and_takes_groups_from_the_environment(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("home_net: [10.20.0.0/16]\ntraining:\n  host_groups:\n    servers: [10.30.0.0/24]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert str(exc.value).startswith(f"{p}:3: training: ")
    assert "training.host_groups.servers[0]: 10.30.0.0/24 is not inside home_net (10.20.0.0/16)" in str(exc.value)
    p.write_text("home_net: [10.20.0.0/16]\ntraining:\n  host_groups:\n    host: [10.20.0.0/24]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    assert str(exc.value).startswith(f"{p}:4: training.host_groups: ")
    p.write_text("home_net: [10.20.0.0/16]\n")
    cfg = load_config(p, env={"NETAD_TRAINING__HOST_GROUPS": "{servers: [10.20.0.0/24], printers: [10.20.9.0/28]}"})
    assert cfg.training.host_groups == {"servers": ["10.20.0.0/24"], "printers": ["10.20.9.0/28"]}
    assert load_config(p, env={}).training.host_groups == {}


def test_a_group_hosts_incident_names_the_host_to_the_siem():
    """A group's host is a host to the SIEM: OCSF's affected device, ECS's related addresses."""
    event = _make_event(entity="10.20.0.10", entity_class="servers", role="", originator=None, target=None)
    assert to_ocsf(event)["device"]["ip"] == "10.20.0.10"
    doc = to_ecs(event)
    assert doc["source"]["ip"] == "10.20.0.10" and "10.20.0.10" in doc["related"]["ip"]
    assert doc["netad"]["entity_class"] == "servers"


def test_a_bundle_whose_every_host_was_in_a_group_is_refused_where_hosts_are_scored(tmp_path: Path):
    """A host outside the groups would have no model to be read with: unscored, unsaid."""
    bundle = train(_office(120), _params(host_groups={"all": ["10.0.0.0/16"]}), bin_s=10, bins=6)
    assert set(bundle.classes) == {"global", "all"}
    bundle.save(tmp_path / "model")
    with pytest.raises(ModelError, match="every home host of its training span was in a host group"):
        ModelBundle.load(tmp_path / "model", classes=("global", "host"))
    assert set(ModelBundle.load(tmp_path / "model", classes=("global",)).classes) == {"global", "all"}
