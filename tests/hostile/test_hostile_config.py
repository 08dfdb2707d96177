"""Hostile configs: every value finite and within the schema's bounds, no key given twice, a
state_dir that can be a directory. Each is a ConfigError naming the file, the line and the
key; `netad check-config` and `netad run` exit 78 with it (systemd does not restart a config
error), never 1 with a traceback; a SIGHUP to any of them keeps the running config and logs why.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from detector.config import Config, load_config, read_yaml
from detector.errors import ConfigError
from tests.hostile._hostile import EX_CONFIG, assert_no_traceback, netad_cli
from tests.service._daemon import DaemonProcess, base_config, wait_until, write_config

# (YAML, the line and key the error must name, the reason)
BAD_VALUES = [
    ("windows: {lateness_s: .inf}\n", ":1: windows.lateness_s", "finite number"),
    ("windows:\n  lateness_s: .nan\n", ":2: windows.lateness_s", "finite number"),
    ("windows:\n  bin_s: -.inf\n", ":2: windows.bin_s", "finite number"),
    ("windows:\n  lateness_s: 1e300\n", ":2: windows.lateness_s", "less than or equal to 86400"),
    ("service:\n  checkpoint_interval_s: 1.0e+300\n", ":2: service.checkpoint_interval_s", "less than or equal to 2592000"),
    ("service:\n  shutdown_timeout_s: 1e30\n", ":2: service.shutdown_timeout_s", "less than or equal to"),
    ("flows:\n  tcp_idle_timeout_s: 1e300\n", ":2: flows.tcp_idle_timeout_s", "less than or equal to"),
    ("windows:\n  max_entities: 100000000000000000000\n", ":2: windows.max_entities", "less than or equal to"),
    ("source:\n  speed: .inf\n", ":2: source.speed", "finite number"),
    ("training:\n  seed: -1\n", ":2: training.seed", "greater than or equal to 0"),
    ("training:\n  learning_rate: .nan\n", ":2: training.learning_rate", "finite number"),
    ("kafka:\n  client: {socket.timeout.ms: .inf}\n", ":2: kafka.client", "finite number"),
]


@pytest.mark.parametrize(("text", "where", "reason"), BAD_VALUES, ids=[t.replace("\n", " ") for t, _, _ in BAD_VALUES])
def test_values_that_are_not_finite_or_out_of_bounds_are_config_errors(tmp_path: Path, text: str, where: str, reason: str):
    path = tmp_path / "netad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})
    assert f"{path}{where}" in str(refused.value) and reason in str(refused.value)


def test_every_bound_holds_its_default():
    """The bounds leave every default (and so configs/default.yaml) valid."""
    assert Config() == load_config(None, env={})


def test_an_environment_override_is_bounded_too():
    with pytest.raises(ConfigError, match="windows.lateness_s: Input should be a finite number"):
        load_config(None, env={"NETAD_WINDOWS__LATENESS_S": ".inf"})
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_config(None, env={"NETAD_KAFKA__CLIENT": "{a: 1, a: 2}"})


DUPLICATES = [
    ("windows:\n  bin_s: 10\n  lateness_s: 2\n  lateness_s: 5\n", 4, "lateness_s' (first on line 3)"),
    ("state_dir: /a\nsensor: {id: x}\nstate_dir: /b\n", 3, "state_dir' (first on line 1)"),
    ("sinks:\n  - {url: 'stdout://', url: 'jsonl:///tmp/x'}\n", 2, "url'"),
]


@pytest.mark.parametrize(("text", "line", "key"), DUPLICATES, ids=["nested", "top level", "in a list"])
def test_a_key_given_twice_is_refused_with_file_and_line(tmp_path: Path, text: str, line: int, key: str):
    path = tmp_path / "netad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        read_yaml(path)
    assert f"{path}:{line}: invalid YAML: duplicate key '{key}" in str(refused.value)


def test_a_merge_may_still_override_what_it_brings_in(tmp_path: Path):
    """`<<: *base` then the same key: YAML's override, not a duplicate."""
    path = tmp_path / "netad.yaml"
    path.write_text("base: &f {a: 1, b: 2}\nother:\n  <<: *f\n  a: 3\n")
    data, _ = read_yaml(path)
    assert {"a": 3, "b": 2} == data["other"]


def test_a_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    path = tmp_path / "netad.yaml"
    path.write_text(f"sensor: {{id: x}}\nstate_dir: {a_file}\n")
    with pytest.raises(ConfigError, match=f"{path}:2: state_dir: .*exists and is not a directory"):
        load_config(path, env={})


# ------------------------------------------------------------------------ the command line
CLI_CASES = {
    "lateness_s .inf": ("windows: {lateness_s: .inf}\n", ":1: windows.lateness_s: Input should be a finite number"),
    "lateness_s 1e300": ("windows:\n  lateness_s: 1e300\n", ":2: windows.lateness_s: Input should be less than or equal to"),
    "duplicate key": ("windows:\n  bin_s: 10\n  bin_s: 5\n", ":3: invalid YAML: duplicate key 'bin_s' (first on line 2)"),
    "state_dir a file": ("state_dir: {file}\n", ":1: state_dir: Value error, "),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_check_config_and_run_exit_78_with_file_line_and_reason(tmp_path: Path, command: str, case: str):
    text, message = CLI_CASES[case]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config = tmp_path / "netad.yaml"
    config.write_text(text.replace("{file}", str(a_file)))
    res = netad_cli(command, "-c", str(config))
    assert EX_CONFIG == res.returncode, res.stderr
    assert f"netad: {config}{message}" in res.stderr
    assert_no_traceback(res.stdout, res.stderr)


@pytest.mark.slow
def test_run_with_a_state_dir_below_a_file_exits_78(tmp_path: Path):
    """The config cannot see it (the path does not exist); taking the directory fails: 78."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config = write_config(tmp_path / "netad.yaml", {"state_dir": str(a_file / "state"), "model": {"path": str(tmp_path / "none")}})
    res = netad_cli("run", "-c", str(config))
    assert EX_CONFIG == res.returncode, res.stderr
    assert f"netad: state_dir: {a_file / 'state'}: cannot use it: Not a directory" in res.stderr
    assert_no_traceback(res.stdout, res.stderr)


# ------------------------------------------------------------------------ SIGHUP
@pytest.mark.slow
def test_sighup_with_each_broken_config_keeps_the_running_one(tmp_path: Path, demo: dict):
    """One daemon, one SIGHUP per broken config: each reload fails and says where and why,
    the daemon goes on scoring with the config it runs (its checkpoint interval too: a huge
    one once crashed the scheduler), and a good config is then taken. No traceback."""
    scores = tmp_path / "scores.jsonl"
    cfg = base_config(tmp_path, demo["pcap"], demo["model"], outputs={"scores": str(scores), "summary": False},
                      service={"checkpoint_interval_s": 0.5}, source={"speed": 40.0})
    config = write_config(tmp_path / "netad.yaml", cfg)
    good = config.read_text()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    broken = [
        (good.replace("checkpoint_interval_s: 0.5", "checkpoint_interval_s: 1.0e+300"), "service.checkpoint_interval_s"),
        (good.replace("checkpoint_interval_s: 0.5", "checkpoint_interval_s: .inf"), "service.checkpoint_interval_s"),
        (good.replace("checkpoint_interval_s: 0.5", "heartbeat_interval_s: 1e300\n  checkpoint_interval_s: 0.5"),
         "service.heartbeat_interval_s"),
        (good.replace("checkpoint_interval_s: 0.5", "shutdown_timeout_s: 1e300\n  checkpoint_interval_s: 0.5"),
         "service.shutdown_timeout_s"),
        (good + "\nwindows: {lateness_s: .inf}\n", "windows.lateness_s"),
        (good + "\nsensor: {id: again}\n", "duplicate key 'sensor'"),
        (good + f"\nstate_dir: {a_file}\n", "duplicate key 'state_dir'"),
        (good.replace(f"state_dir: {tmp_path / 'state'}", f"state_dir: {a_file}"), "is not a directory"),
        ("[1, 2]\n", "the top level must be a mapping"),
        ("sinks: [\n", "invalid YAML"),
        ("\udcff", "cannot read"),
    ]
    d = DaemonProcess(config)
    try:
        d.wait_log("daemon_started", timeout_s=60)
        seen = 0
        for text, reason in broken:
            config.write_bytes(text.encode("utf-8", "surrogateescape"))
            d.signal(signal.SIGHUP)
            seen, failed = d.wait_log("config_reload_failed", timeout_s=20, start=seen)
            seen += 1
            assert reason in failed["reason"] and str(config) in failed["reason"], failed
        assert d.alive()
        saved = len(d.events("checkpoint_saved"))
        wait_until(lambda: len(d.events("checkpoint_saved")) > saved + 2, timeout_s=20, what="checkpoints on the old schedule")
        lines = len(scores.read_text().splitlines())
        wait_until(lambda: len(scores.read_text().splitlines()) > lines, timeout_s=20, what="windows scored after the failed reloads")
        config.write_text(good)
        d.signal(signal.SIGHUP)
        d.wait_log("config_reloaded", timeout_s=20)
        assert len(broken) == len(d.events("config_reload_failed"))
        d.signal(signal.SIGTERM)
        assert 0 == d.wait(timeout_s=30)
    finally:
        d.kill()
    assert_no_traceback("".join(d.stderr), "".join(d.other_stdout), "\n".join(json.dumps(r) for r in d.log.snapshot()))
