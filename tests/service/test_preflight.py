"""`netad check-config` (service/preflight.py): what `netad run` would refuse, found without
starting it and without creating anything. In process (click's runner): each case is a real
config file, a real model bundle (written by ModelBundle.save, no training) and real paths."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from detector.capture.packets.pcapwriter import global_header
from detector.capture.windows import PACKET_SCHEMA
from detector.cli import main
from detector.errors import ConfigError
from tests.conftest import REPO
from tests.model.test_scorer import _bundle


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packet model of both entity classes, 6 x 10 s bins (the default windows)."""
    return _bundle().save(tmp_path_factory.mktemp("preflight") / "model")


def passing_config(directory: Path) -> Path:
    """A config `netad run` would start with: a capture, a model bundle, a jsonl sink and a
    state directory still to be made (tests/test_cli.py runs check-config on it, torch-free)."""
    (directory / "capture.pcap").write_bytes(global_header())
    _bundle().save(directory / "model")
    config = directory / "netad.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"type": "pcap", "path": str(directory / "capture.pcap")},
        "model": {"path": str(directory / "model")},
        "incidents": {"rules": [str(REPO / "rules" / "default.yaml")]},
        "sinks": [{"url": f"jsonl://{directory}/out/incidents.jsonl"}],
        "state_dir": str(directory / "state"),
    }, sort_keys=False))
    return config


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check(config: Path) -> tuple[int, list[str], str]:
    """(exit code, the problem lines, stdout)."""
    result = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    problems = [line.removeprefix("netad: ") for line in result.stderr.splitlines() if ": " in line and "[" not in line[:30]]
    return result.exit_code, problems, result.stdout


def test_the_default_config_on_a_fresh_clone_names_the_capture_and_model_to_make(tmp_path: Path, model: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/default.yaml in a fresh clone: the demo capture and model are not made yet
    (`make run` makes them), and check-config says so (78, file:line per key); once they are
    there it passes. Either way it creates nothing (no var/, no state directory)."""
    (tmp_path / "rules").symlink_to(REPO / "rules")
    config = shutil.copy(REPO / "configs" / "default.yaml", tmp_path / "default.yaml")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    code, problems, _ = _check(config)
    assert 78 == code
    lines = Path(config).read_text().splitlines()
    source_path = next(i for i, line in enumerate(lines, 1) if line.startswith("  path: var/demo.pcap "))
    model_path = lines.index("model:") + 2  # `path:` is the section's first key
    assert [f"{config}:{source_path}: source.path: var/demo.pcap: no such file",
            f"{config}:{model_path}: model.path: no model bundle at var/model: train one (netad train -c CONFIG --pcap CAPTURE "
            "--out var/model; `make model` makes the demo's)"] == problems
    assert before == _tree(tmp_path)

    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "demo.pcap").write_bytes(global_header())
    shutil.copytree(model, tmp_path / "var" / "model")
    before = _tree(tmp_path)
    code, problems, out = _check(config)
    assert (0, []) == (code, problems), problems
    assert f"{config}: ok" in out
    assert before == _tree(tmp_path)


def test_a_missing_interface_model_and_unwritable_paths_exit_78_naming_each_key(tmp_path: Path) -> None:
    """An interface that does not exist, a model directory that does not, a state directory
    under a file, a jsonl sink and the window scores' file under it: each named by key and
    line; nothing created (the jsonl sink's directory was created by check-config before).
    The scores' file went unchecked, and `netad run` ended in a traceback at its mkdir."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    config = tmp_path / "netad.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"type": "interface", "interface": "netad-nope0"},
        "model": {"path": str(tmp_path / "no-model")},
        "incidents": {"rules": [str(REPO / "rules" / "default.yaml")]},
        "sinks": [{"url": f"jsonl://{tmp_path}/new/dir/incidents.jsonl"}, {"url": f"jsonl://{blocker}/incidents.jsonl"}],
        "state_dir": str(blocker / "state"),
        "outputs": {"scores": str(blocker / "scores.jsonl")},
    }, sort_keys=False))
    before = _tree(tmp_path)
    code, problems, _ = _check(config)
    assert 78 == code
    keys = [line.split(": ")[1] for line in problems]  # file:line: key: reason
    assert ["source.interface", "model.path", "sinks[1].url", "state_dir", "outputs.scores"] == keys, problems
    assert problems[4] == f"{config}:14: outputs.scores: {blocker}/scores.jsonl: {blocker} is not a directory"
    assert problems[0].startswith(f"{config}:3: source.interface: no network interface 'netad-nope0' on this machine")
    assert f"{blocker}/incidents.jsonl: {blocker} is not a directory" in problems[2]
    assert before == _tree(tmp_path)


def test_keys_the_environment_set_are_named_by_their_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`NETAD_SOURCE__TYPE=interface` over a pcap config, and a model path from the
    environment: the interface it lacks is said as such (it was "no network interface None"),
    and the model's problem names NETAD_MODEL__PATH, not the file's line with its good path."""
    config = passing_config(tmp_path)
    monkeypatch.setenv("NETAD_SOURCE__TYPE", "interface")
    monkeypatch.setenv("NETAD_MODEL__PATH", str(tmp_path / "no-model"))
    code, problems, _ = _check(config)
    assert 78 == code
    assert [f"{config}:2: source.interface: source.type interface needs an interface",
            f"environment: NETAD_MODEL__PATH: model.path: no model bundle at {tmp_path}/no-model"] == \
        [line.split(": train one")[0] for line in problems]


def test_sinks_that_clash_are_named_as_run_refuses_them(tmp_path: Path) -> None:
    """Two identical URLs (one name, one spool: each event twice; `run` refused it, and
    check-config said ok), two named jsonl sinks on one file, and window scores on a jsonl
    sink's file (mixed into the incident events): each named by key and line."""
    config = passing_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    incidents = tmp_path / "out" / "incidents.jsonl"
    cfg["sinks"] = [{"url": f"jsonl://{incidents}"}, {"url": f"jsonl://{incidents}"},
                    {"url": f"jsonl://{tmp_path}/out/../out/incidents.jsonl", "name": "again"}]
    cfg["outputs"] = {"scores": str(incidents)}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, problems, _ = _check(config)
    assert 78 == code
    assert [f"{config}:{n}: {key}" for n, key in ((11, "sinks[1].url"), (11, "sinks[1].url"), (12, "sinks[2].url"),
                                                   (16, "outputs.scores"))] == [": ".join(p.split(": ")[:2]) for p in problems], problems
    assert "named 'jsonl-" in problems[0] and "as sinks[0] is" in problems[0]
    assert problems[1].endswith(f"writes {incidents}, as sinks[0] does: each event would be written there twice")
    assert problems[2].endswith(f"writes {incidents}, as sinks[0] does: each event would be written there twice")
    assert f"{incidents} is the file of sinks[0] (jsonl): the window scores would be mixed" in problems[3]
    cfg["sinks"], cfg["outputs"] = cfg["sinks"][:1], {"scores": str(tmp_path / "out" / "scores.jsonl")}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert (0, []) == _check(config)[:2]


def test_a_bpf_filter_that_does_not_compile_is_the_config_s_to_mend(tmp_path: Path) -> None:
    """check-config compiles source.bpf (it said ok), and the daemon refuses it as a config
    error (78) before it opens the capture: opening it with the filter exited 66, which
    systemd restarts."""
    pytest.importorskip("pcapy")
    from detector.config import load_config
    from detector.service._sources import build_source

    config = passing_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["source"] = {"type": "interface", "interface": "lo", "bpf": "tcp port 99999 and"}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, problems, _ = _check(config)
    assert 78 == code
    assert [f"{config}:4: source.bpf: 'tcp port 99999 and' does not compile: illegal port number 99999 > 65535"] == problems
    with pytest.raises(ConfigError, match=r"^source.bpf: 'tcp port 99999 and' does not compile"):
        build_source(load_config(config).source)
    cfg["source"]["bpf"] = "udp port 9"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert (0, []) == _check(config)[:2]


def test_a_model_for_other_windows_or_another_kind_of_input_is_named(tmp_path: Path, model: Path) -> None:
    """A packet model under a Zeek source, or with other windows than the config's, is what
    `run` refuses: check-config says it first, with what to do."""
    conn_log = tmp_path / "conn.log"
    conn_log.write_text("#separator \\x09\n")
    config = tmp_path / "netad.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"type": "zeek", "path": str(conn_log)},
        "windows": {"bins": 12},
        "model": {"path": str(model)},
        "incidents": {"rules": [str(REPO / "rules" / "default.yaml")]},
        "sinks": [],
        "state_dir": str(tmp_path / "state"),
    }, sort_keys=False))
    code, problems, _ = _check(config)
    assert 78 == code
    assert [f"{config}:7: model.path", f"{config}:5: windows.bins"] == [": ".join(line.split(": ")[:2]) for line in problems]
    assert "trained on packet features" in problems[0] and "--conn-log CONN_LOG" in problems[0]
    assert "6 x 10 s bins, this config has 12 x 10 s" in problems[1]


def test_a_model_of_an_older_feature_schema_is_named_with_what_to_do(tmp_path: Path) -> None:
    """After an upgrade that changed the features (schema v2 -> v3), a bundle trained before it
    is what `run` refuses: check-config names the versions, as `run` does, and says retrain."""
    config = passing_config(tmp_path)
    old = _bundle()
    old.schema = dataclasses.replace(PACKET_SCHEMA, version=PACKET_SCHEMA.version - 1)
    shutil.rmtree(tmp_path / "model")
    old.save(tmp_path / "model")
    code, problems, _ = _check(config)
    assert 78 == code and 1 == len(problems), problems
    line = config.read_text().splitlines().index("model:") + 2  # model.path, the line after `model:`
    assert problems[0].startswith(f"{config}:{line}: model.path: trained on feature schema packet v{PACKET_SCHEMA.version - 1}")
    assert f"this netad computes packet v{PACKET_SCHEMA.version}" in problems[0] and "retrain" in problems[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write where the mode says it may not")
def test_an_unwritable_state_directory_exits_78(tmp_path: Path) -> None:
    """A state directory in a directory this user cannot write: named, not created."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = tmp_path / "netad.yaml"
    config.write_text(yaml.safe_dump({"source": {"type": "netflow"}, "role": "sensor", "state_dir": str(locked / "state")}))
    code, problems, _ = _check(config)
    assert 78 == code and [f"{config}:3: state_dir"] == [": ".join(line.split(": ")[:2]) for line in problems]
