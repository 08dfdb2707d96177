"""Config loading: schema, unknown keys, file:line errors, env overrides, exit code 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import home_net_change, key_location, load_config
from detector.errors import ConfigError
from tests.conftest import REPO


def test_default_config_is_valid_and_matches_code_defaults():
    """configs/default.yaml loads and keeps every documented key."""
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert ["10.20.0.0/16"] == cfg.home_net
    assert 10.0 == cfg.windows.bin_s
    assert "auto" == cfg.model.device


def test_unknown_key_is_an_error_with_file_and_line(tmp_path: Path):
    """A typo names the file, the line and the key."""
    p = tmp_path / "c.yaml"
    p.write_text("windows:\n  bin_s: 10\n  binz: 6\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert f"{p}:3: windows.binz: unknown key" == str(exc.value)


def test_every_error_is_reported(tmp_path: Path):
    """All errors of a file are listed, one per line."""
    p = tmp_path / "c.yaml"
    p.write_text("home_net: [10.0.0.0/8, not-a-net]\nmodel:\n  device: tpu\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    lines = str(exc.value).splitlines()
    assert 2 == len(lines)
    assert lines[0].startswith(f"{p}:1: home_net:")
    assert lines[1].startswith(f"{p}:3: model.device:")


def test_flow_source_keys_are_validated_with_file_and_line(tmp_path: Path):
    """netflow and zeek sources: each bad key named with its line; the examples are valid."""
    p = tmp_path / "c.yaml"
    p.write_text("source:\n  type: netflow\n  bind_address: collector.local\n  port: 70000\n"
                 "  allowed_exporters: [10.0.0.0/8, routers]\n  default_sampling_rate: 0\n  from_end: true\n"
                 "windows:\n  flow_lateness_s: -1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p, env={})
    lines = str(exc.value).splitlines()
    assert [f"{p}:{n}: {key}:" for n, key in ((3, "source.bind_address"), (4, "source.port"), (5, "source.allowed_exporters"),
            (6, "source.default_sampling_rate"), (7, "source.from_end"), (9, "windows.flow_lateness_s"))] == [
        line.split(" ", 2)[0] + " " + line.split(" ", 2)[1] for line in lines
    ]
    assert "'collector.local' is not an IP address" in lines[0] and "[1] 'routers' is not a network" in lines[2]
    assert "needs follow: true" in lines[4]
    netflow = load_config(REPO / "configs" / "netflow.yaml", env={})
    assert ("netflow", 2055, True) == (netflow.source.type, netflow.source.port, netflow.source.flow_records)
    zeek = load_config(REPO / "configs" / "zeek.yaml", env={})
    assert ("zeek", True, 360.0) == (zeek.source.type, zeek.source.follow, zeek.windows.flow_lateness_s)


def test_source_workers_are_validated_with_file_and_line(tmp_path: Path):
    """source.workers: a whole number from 1; more than 1 only for packet sources (pcap,
    interface), whose flows the workers split."""
    p = tmp_path / "c.yaml"
    for text, line, why in (("source:\n  workers: 0\n", 2, "greater than or equal to 1"),
                            ("source:\n  type: zeek\n  path: conn.log\n  workers: 2\n", 4, "gives flow records")):
        p.write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_config(p, env={})
        assert str(exc.value).startswith(f"{p}:{line}: source.workers:") and why in str(exc.value)
    p.write_text("source:\n  type: interface\n  interface: eth0\n  workers: 4\n")
    assert 4 == load_config(p, env={}).source.workers


def test_invalid_yaml_reports_line(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("sinks:\n  - url: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+: invalid YAML"):
        load_config(p)


def test_environment_overrides_a_key(tmp_path: Path):
    """NETAD_SECTION__KEY overrides the file; values are YAML scalars."""
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  device: auto\n")
    cfg = load_config(p, env={"NETAD_MODEL__DEVICE": "cpu", "NETAD_WINDOWS__BINS": "4"})
    assert "cpu" == cfg.model.device
    assert 4 == cfg.windows.bins



def test_environment_overrides_top_level_keys_and_lists(tmp_path: Path):
    """NETAD_KEY overrides a top-level key; a list key takes YAML or a comma-separated string."""
    p = tmp_path / "c.yaml"
    p.write_text("home_net: [10.20.0.0/16]\n")
    cfg = load_config(p, env={"NETAD_HOME_NET": "192.168.0.0/16, fd00::/8", "NETAD_STATE_DIR": str(tmp_path / "s"),
                              "NETAD_KAFKA__CLIENT__SASL.MECHANISM": "PLAIN"})
    assert ["192.168.0.0/16", "fd00::/8"] == cfg.home_net
    assert tmp_path / "s" == cfg.state_dir
    assert {"sasl.mechanism": "PLAIN"} == cfg.kafka.client
    assert ["10.0.0.0/8"] == load_config(p, env={"NETAD_HOME_NET": "[10.0.0.0/8]"}).home_net


@pytest.mark.parametrize("name", ["NETAD_HOME_NETS", "NETAD_MODEL__DEVIC", "NETAD_MODEL__DEVICE__X", "NETAD_NOPE__KEY"])
def test_an_environment_override_of_no_key_is_refused(tmp_path: Path, name: str):
    """A NETAD_ variable that names no config key is a ConfigError naming it, not silently ignored."""
    with pytest.raises(ConfigError, match=f"environment: {name}: no config key"):
        load_config(None, env={name: "1"})


def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(tmp_path: Path):
    """A value the environment set and the schema refuses is blamed on its variable: the
    file's line holds a good value, and an operator reading `c.yaml:1` would look there. A
    section's own check of a key the environment set below it names the file and the
    variable; keys the file set keep their file:line."""
    p = tmp_path / "c.yaml"
    p.write_text("home_net: [10.20.0.0/16]\nwindows:\n  entity_idle_s: 60\nkafka:\n  client:\n    acks: all\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, env={"NETAD_HOME_NET": "notanet", "NETAD_WINDOWS__ENTITY_IDLE_S": "soon"})
    lines = str(err.value).splitlines()
    assert 2 == len(lines), lines
    assert lines[0].startswith("environment: NETAD_HOME_NET: home_net: Value error, [0] 'notanet' is not a network")
    assert lines[1].startswith("environment: NETAD_WINDOWS__ENTITY_IDLE_S: windows.entity_idle_s: Input should be a valid number")
    with pytest.raises(ConfigError, match=rf"^{p}:6: kafka.client \(with NETAD_KAFKA__CLIENT__SASL.PASSWORD from the "
                                          r"environment\): Value error, 'credential:nope'"):
        load_config(p, env={"NETAD_KAFKA__CLIENT__SASL.PASSWORD": "credential:nope"})
    p.write_text("windows:\n  entity_idle_s: soon\n")
    with pytest.raises(ConfigError, match=rf"^{p}:2: windows.entity_idle_s: Input should be a valid number"):
        load_config(p, env={"NETAD_HOME_NET": "10.0.0.0/8"})


def test_a_key_the_environment_set_is_located_in_the_environment(tmp_path: Path):
    """check-config's messages about a valid config's values (a model that is not there)
    name the variable that set the key, as load_config's own errors do."""
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  path: var/model\n")
    assert "environment: NETAD_MODEL__PATH: model.path" == key_location(p, ("model", "path"), env={"NETAD_MODEL__PATH": "/x"})
    assert f"{p}:2: model.path" == key_location(p, ("model", "path"), env={"NETAD_MODEL__DEVICE": "cpu"})
    assert "environment: NETAD_SINKS: sinks[1].url" == key_location(p, ("sinks", 1, "url"), env={"NETAD_SINKS": "[]"})


def test_a_model_trained_with_other_home_networks_is_named_and_the_same_ones_in_other_words_are_not():
    """home_net_change: the same networks in another order or spelling (a host bit set, as
    ip_network(strict=False) reads it) are no change; a bundle that recorded none is not
    judged; other networks are, naming both."""
    assert home_net_change(["10.20.0.0/16", "fd00::/8"], ["fd00::/8", "10.20.1.0/16"]) is None
    assert home_net_change(None, ["10.0.0.0/8"]) is None
    change = home_net_change(["172.31.0.0/16"], ["10.20.0.0/16"])
    assert change is not None and change.startswith("the model was trained with home_net 172.31.0.0/16 and this "
                                                    "config has 10.20.0.0/16: ")
    assert home_net_change(["10.20.0.0/16"], ["10.20.0.0/16", "192.168.0.0/16"]) is not None  # a network added


def test_default_home_net_is_the_private_ranges():
    """Without home_net a first run sees the hosts of any private network, IPv6 unique local too."""
    assert ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"] == load_config(None, env={}).home_net

def _netad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.slow
def test_check_config_exit_codes(tmp_path: Path):
    """check-config: 78 with file:line on a bad config (rules too); on a good one 0, and on
    default.yaml before `make run` made its capture and model, 78 naming them
    (tests/service/test_preflight.py)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("sensor:\n  id: x\n  colour: blue\n")
    res = _netad("check-config", "-c", str(bad))
    assert 78 == res.returncode
    assert f"{bad}:3: sensor.colour: unknown key" in res.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text("allow:\n  - name: x\n    cidr: [300.1.1.1/32]\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"incidents:\n  rules: [{rules}]\nsinks: []\n")
    res = _netad("check-config", "-c", str(cfg))
    assert 78 == res.returncode
    assert f"{rules}:3: allow[0].cidr" in res.stderr


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_file_under_configs_is_a_valid_config(path: Path):
    """configs/ holds netad configs only (splice and scenario lists live in docs/eval/)."""
    assert load_config(path, env={}).model.path is not None


def test_secrets_come_from_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A sink URL or a Kafka client setting written credential:NAME is the file NAME of
    $CREDENTIALS_DIRECTORY (LoadCredential=), without its final newline; without that
    directory, or without the file, `netad run` exits 78 naming the line and the credential."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "siem-url").write_text(f"jsonl://{tmp_path / 'incidents.jsonl'}\n")
    (creds / "kafka-password").write_text("hunter2")
    p = tmp_path / "c.yaml"
    p.write_text("sinks:\n  - url: credential:siem-url\nkafka:\n  client: {sasl.password: 'credential:kafka-password'}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_config(p)
    assert (f"jsonl://{tmp_path / 'incidents.jsonl'}", "hunter2") == (cfg.sinks[0].url, cfg.kafka.client["sasl.password"])
    (creds / "kafka-password").unlink()
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).startswith(f"{p}:4: kafka.client: ") and "cannot read credential kafka-password" in str(exc.value)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    res = subprocess.run([sys.executable, "-m", "detector.cli", "run", "-c", str(p)], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert 78 == res.returncode and "Traceback" not in res.stderr
    assert f"{p}:2: sinks[0].url: " in res.stderr and "$CREDENTIALS_DIRECTORY is not set" in res.stderr
