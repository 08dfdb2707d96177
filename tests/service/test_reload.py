"""Reload's sink reconciliation: unchanged sinks are kept as they run, new ones built, gone
ones retired; a bad URL changes nothing; a sink whose URL changes under the same name takes
over its spool (two live sinks cannot hold one)."""

from __future__ import annotations

import pytest

from detector.alerting.sinks import SinkSet
from detector.errors import ConfigError
from detector.service._reload import build_sinks, reconcile_sinks


@pytest.fixture
def current(tmp_path):
    sinks = build_sinks([(f"jsonl://{tmp_path / 'a.jsonl'}", "a"),
                         ("syslog+tcp://127.0.0.1:9?backoff_max_s=0.5", "siem")], tmp_path / "spool")
    yield sinks
    sinks.close(timeout_s=0.1)


def _close(new: SinkSet, retired: list) -> None:
    for s in retired:
        s.close(timeout_s=0.1)
    new.close(timeout_s=0.1)


def test_unchanged_sinks_are_kept_as_they_are(tmp_path, current):
    wanted = [(s.url, s.name) for s in current]
    new, retired = reconcile_sinks(current, wanted, tmp_path / "spool")
    assert [id(s) for s in current] == [id(s) for s in new] and [] == retired


def test_new_sinks_are_built_and_gone_ones_retired(tmp_path, current):
    wanted = [(current.sinks[0].url, "a"), (f"jsonl://{tmp_path / 'b.jsonl'}", "b")]
    new, retired = reconcile_sinks(current, wanted, tmp_path / "spool")
    try:
        assert ["a", "b"] == [s.name for s in new] and new.sinks[0] is current.sinks[0]
        assert ["siem"] == [s.name for s in retired]
    finally:
        new.sinks[1].close(timeout_s=0.1)
        for s in retired:
            s.close(timeout_s=0.1)


def test_a_bad_url_changes_nothing(tmp_path, current):
    wanted = [(s.url, s.name) for s in current] + [("syslog+tcp://127.0.0.1:9?colour=blue", "c")]
    with pytest.raises(ConfigError, match=r"sinks\[2\].*colour"):
        reconcile_sinks(current, wanted, tmp_path / "spool")
    with pytest.raises(ConfigError, match=r"sinks\[1\]: named 'x', as sinks\[0\] is"):
        reconcile_sinks(current, [(current.sinks[0].url, "x"), (f"jsonl://{tmp_path / 'c.jsonl'}", "x")], tmp_path / "spool")
    with pytest.raises(ConfigError, match=r"outputs.scores: .*a.jsonl is the file of sinks\[0\]"):
        reconcile_sinks(current, [(s.url, s.name) for s in current], tmp_path / "spool", scores=tmp_path / "a.jsonl")
    assert not any(s.stats["disabled"] for s in current)
    assert (tmp_path / "spool" / "siem" / ".lock").exists()


def test_same_name_new_url_takes_over_the_spool(tmp_path, current):
    old_siem = current.sinks[1]
    wanted = [(current.sinks[0].url, "a"), ("syslog+tcp://127.0.0.1:10?backoff_max_s=0.5", "siem")]
    new, retired = reconcile_sinks(current, wanted, tmp_path / "spool")
    try:
        assert new.sinks[1] is not old_siem and "siem" == new.sinks[1].name
        assert new.sinks[1].url.endswith(":10?backoff_max_s=0.5")
        assert [] == retired  # the old one was closed to make room, not left for the caller
        with pytest.raises(RuntimeError, match="closed"):
            old_siem.publish(None)  # type: ignore[arg-type]
    finally:
        new.sinks[1].close(timeout_s=0.1)


def test_a_new_model_trained_with_other_home_networks_is_refused_and_the_sinks_are_left(tmp_path, current):
    """SIGHUP to a model.path whose model was trained with another home_net: refused
    (ModelError, the daemon logs reload_failed and keeps its model) before any sink is
    reconciled, as a model of other windows is; the same networks in the daemon's spelling
    are taken."""
    import yaml

    from detector.capture.windows import PACKET_SCHEMA
    from detector.config import load_config
    from detector.errors import ModelError
    from detector.service._reload import plan_reload
    from tests.model.test_scorer import _bundle

    running = load_config(None, env={"NETAD_HOME_NET": "10.20.0.0/16", "NETAD_STATE_DIR": str(tmp_path / "state")})
    config = tmp_path / "netad.yaml"
    for trained, refused in ((["172.31.0.0/16"], True), (["10.20.7.0/16"], False)):
        bundle = _bundle()
        bundle.training["home_net"] = trained
        model = bundle.save(tmp_path / f"model-{trained[0].replace('/', '_')}")
        config.write_text(yaml.safe_dump({"home_net": ["10.20.0.0/16"], "model": {"path": str(model)},
                                          "state_dir": str(tmp_path / "state"),
                                          "sinks": [{"url": s.url, "name": s.name} for s in current]}))
        if refused:
            with pytest.raises(ModelError, match=r"trained with home_net 172\.31\.0\.0/16 and the daemon runs 10\.20\.0\.0/16"):
                plan_reload(str(config), running, current, [], PACKET_SCHEMA)
        else:
            plan = plan_reload(str(config), running, current, [], PACKET_SCHEMA)
            assert plan.bundle is not None and [] == plan.retired  # the same sinks, kept


def test_sinks_that_clash_are_refused_at_start_before_any_is_built(tmp_path):
    """The daemon's and the Kafka scorer's build_sinks: two jsonl sinks on one file (each
    event written twice), or the window scores on a sink's file, refused before anything is
    opened or spooled."""
    out = tmp_path / "out" / "incidents.jsonl"
    with pytest.raises(ConfigError, match=r"sinks\[1\]: writes .*incidents.jsonl, as sinks\[0\] does"):
        build_sinks([(f"jsonl://{out}", "a"), (f"jsonl://{tmp_path}/out/./incidents.jsonl", "b")], tmp_path / "spool")
    with pytest.raises(ConfigError, match=r"outputs.scores: .*incidents.jsonl is the file of sinks\[0\]"):
        build_sinks([(f"jsonl://{out}", None), ("syslog+tcp://127.0.0.1:9", None)], tmp_path / "spool", scores=out)
    assert not (tmp_path / "out").exists() and not (tmp_path / "spool").exists()
