"""Malformed model bundles (tests/hostile/_hostile.py: MALFORMED_BUNDLES, every kind): refused
by ModelBundle.load with the file and the reason; at start-up `netad run` exits 78 saying so,
without a traceback; on SIGHUP to a new `model.path` that is bad, the daemon keeps scoring
with the model it runs and logs why. The bundles `netad train` writes, and those written
before model.json carried its own hash, still load.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from detector.errors import ModelError
from detector.model.bundle import META, WEIGHTS, ModelBundle
from tests.hostile._hostile import EX_CONFIG, MALFORMED_BUNDLES, Malformed, assert_no_traceback, malformed_copy, netad_cli
from tests.model.test_scorer import _bundle
from tests.service._daemon import DaemonProcess, base_config, wait_until, write_config

CLASSES = ("global", "host")
# `netad run` at start-up: every kind goes through ModelBundle.load (the first test below)
# and through SIGHUP to one running daemon (further down); a process per kind costs seconds,
# so `netad run` itself is shown refusing one kind per stage of the load: the file missing,
# its JSON's shape, its values, the weights' hash, and weights that pass the hash but not
# the model
AT_START_UP = ["no model.json", "model.json a JSON array", "threshold NaN", "weights damaged",
               "weights of other shapes, hashes edited to match"]


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle as ModelBundle.save writes it (random weights, fitted scalers): seconds, no training."""
    return _bundle().save(tmp_path_factory.mktemp("bundle") / "model")


@pytest.mark.parametrize("case", MALFORMED_BUNDLES, ids=lambda c: c.kind)
def test_every_malformed_bundle_is_refused_with_the_file_and_the_reason(tmp_path: Path, small_bundle: Path, case: Malformed):
    bad = malformed_copy(small_bundle, tmp_path / "bad", case)
    with pytest.raises(ModelError) as refused:
        ModelBundle.load(bad, classes=CLASSES)
    assert str(bad / case.file) in str(refused.value)
    assert case.reason in str(refused.value)


def test_a_saved_bundle_loads_and_its_json_is_hashed(tmp_path: Path, small_bundle: Path):
    """What ModelBundle.save writes loads; its model.json carries a SHA-256 of itself."""
    meta = json.loads((small_bundle / META).read_text())
    assert 64 == len(meta["meta_sha256"]) and 3 == meta["format_version"]
    back = ModelBundle.load(small_bundle, classes=CLASSES)
    assert meta["weights_sha256"][:12] == back.version


def test_a_bundle_from_before_the_json_hash_still_loads_and_is_still_checked(tmp_path: Path, small_bundle: Path):
    """Format 2 (written before model.json was hashed) loads; its values are checked all the same."""
    legacy = shutil.copytree(small_bundle, tmp_path / "legacy")
    meta = json.loads((legacy / META).read_text())
    meta.pop("meta_sha256")
    meta["format_version"] = 2
    (legacy / META).write_text(json.dumps(meta))
    assert ModelBundle.load(legacy, classes=CLASSES).version == meta["weights_sha256"][:12]
    meta["classes"]["host"]["threshold"]["value"] = float("nan")
    (legacy / META).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="threshold.value: nan"):
        ModelBundle.load(legacy)


def test_a_bundle_without_the_class_the_config_scores_is_refused_only_where_it_is_needed(tmp_path: Path, small_bundle: Path):
    """A link-only bundle serves a config without home networks, not one that scores hosts."""
    no_host = next(c for c in MALFORMED_BUNDLES if c.kind == "no host model")
    only_global = malformed_copy(small_bundle, tmp_path / "g", no_host)
    assert ["global"] == list(ModelBundle.load(only_global, classes=("global",)).classes)
    with pytest.raises(ModelError, match="no model for host"):
        ModelBundle.load(only_global, classes=CLASSES)


# ------------------------------------------------------------------------ the daemon
@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in MALFORMED_BUNDLES if c.kind in AT_START_UP], ids=lambda c: c.kind)
def test_netad_run_with_a_malformed_bundle_exits_78_naming_the_file_and_the_reason(tmp_path: Path, demo: dict, case: Malformed):
    bad = malformed_copy(demo["model"], tmp_path / "bad-model", case)
    config = write_config(tmp_path / "netad.yaml", base_config(tmp_path, demo["pcap"], bad))
    res = netad_cli("run", "-c", str(config))
    assert EX_CONFIG == res.returncode, res.stderr
    assert_no_traceback(res.stdout, res.stderr)
    assert f"netad: {bad / case.file}" in res.stderr and case.reason in res.stderr
    assert not (tmp_path / "state" / "checkpoint").exists()  # it stopped before anything ran


@pytest.mark.slow
def test_sighup_to_each_malformed_bundle_keeps_the_running_model(tmp_path: Path, demo: dict):
    """One daemon, one SIGHUP per malformed kind: each reload fails naming the file and the
    reason, the daemon keeps its model and keeps scoring; then a good bundle at a new path
    is taken, and SIGTERM ends it with exit 0. No traceback anywhere."""
    scores = tmp_path / "scores.jsonl"
    cfg = base_config(tmp_path, demo["pcap"], demo["model"], outputs={"scores": str(scores), "summary": False},
                      source={"speed": 40.0})
    config = write_config(tmp_path / "netad.yaml", cfg)
    d = DaemonProcess(config)
    try:
        _, started = d.wait_log("daemon_started", timeout_s=60)
        version = started["model_version"]
        seen = 0
        for i, case in enumerate(MALFORMED_BUNDLES):
            bad = malformed_copy(demo["model"], tmp_path / f"bad-{i}", case)
            write_config(config, {**cfg, "model": {**cfg["model"], "path": str(bad)}})
            d.signal(signal.SIGHUP)
            seen, failed = d.wait_log("config_reload_failed", timeout_s=20, start=seen)
            seen += 1
            assert str(bad / case.file) in failed["reason"] and case.reason in failed["reason"], (case.kind, failed)
            assert version == failed["model_version"]
            assert d.alive()
        lines = len(scores.read_text().splitlines())
        wait_until(lambda: len(scores.read_text().splitlines()) > lines, timeout_s=20, what="windows scored after the failed reloads")
        good = shutil.copytree(demo["model"], tmp_path / "good-model")
        write_config(config, {**cfg, "model": {**cfg["model"], "path": str(good)}})
        d.signal(signal.SIGHUP)
        _, reloaded = d.wait_log("config_reloaded", timeout_s=20)
        assert version == reloaded["model_version"]
        assert 1 == len(d.events("config_reloaded")) and len(MALFORMED_BUNDLES) == len(d.events("config_reload_failed"))
        d.signal(signal.SIGTERM)
        assert 0 == d.wait(timeout_s=30)
    finally:
        d.kill()
    assert_no_traceback("".join(d.stderr), "".join(d.other_stdout), "\n".join(json.dumps(r) for r in d.log.snapshot()))


@pytest.mark.slow
def test_the_bundle_netad_train_wrote_is_the_one_the_daemon_runs(demo: dict):
    """`netad train` (the session's demo model) writes a bundle that passes every check."""
    bundle = ModelBundle.load(demo["model"], classes=CLASSES)
    meta = json.loads((demo["model"] / META).read_text())
    assert meta["meta_sha256"] and (demo["model"] / WEIGHTS).is_file()
    assert all(cm.threshold.value > 0 for cm in bundle.classes.values())
