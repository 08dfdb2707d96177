"""Config loading: schema, unknown keys, file:line errors, env overrides, exit code 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import load_config
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


def _netad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_check_config_exit_codes(tmp_path: Path):
    """check-config: 0 on the default config, 78 with file:line on a bad one (rules too)."""
    ok = _netad("check-config", "-c", "configs/default.yaml")
    assert 0 == ok.returncode, ok.stderr
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
