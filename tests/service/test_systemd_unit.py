"""The unit files in systemd/: valid for systemd (`systemd-analyze verify`, no complaint at
all), hardened (`systemd-analyze security --offline=yes`: exposure at most 2.5), and saying
what the daemon relies on (Type=notify, the watchdog, exit code 78 not restarted, only the
two capabilities capture needs).

`verify` insists that ExecStart= names an existing executable; the installed path
(/usr/local/bin/netad) does not exist here, so each unit is checked as a copy whose
ExecStart= runs this interpreter with `-m detector.cli`, the same command line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = {"netad.service": "netad.service", "netad@.service": "netad@eth0.service"}
MAX_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _checkable_copy(unit: str, tmp_path: Path) -> Path:
    text = (REPO / "systemd" / unit).read_text()
    text, n = re.subn(r"^ExecStart=/usr/local/bin/netad ", f"ExecStart={sys.executable} -m detector.cli ", text, flags=re.M)
    assert 1 == n, "ExecStart= should run /usr/local/bin/netad"
    path = tmp_path / UNITS[unit]
    path.write_text(text)
    return path


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies_without_a_word(unit, tmp_path):
    path = _checkable_copy(unit, tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert "" == res.stderr
    assert 0 == res.returncode


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_exposure_is_at_most_2_5(unit, tmp_path):
    path = _checkable_copy(unit, tmp_path)
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    if res.returncode != 0 and "offline" in res.stderr:
        pytest.skip(f"this systemd-analyze has no --offline mode: {res.stderr.strip()[:200]}")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert found, res.stdout[-2000:] + res.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, res.stdout


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_says_what_the_daemon_relies_on(unit):
    d = _directives((REPO / "systemd" / unit).read_text())
    assert ["notify"] == d["Type"]
    assert "time-sync.target" in d["After"][0].split()  # a live capture is dated by the system clock
    assert ["60"] == d["WatchdogSec"]
    assert ["on-failure"] == d["Restart"]
    assert ["78"] == d["RestartPreventExitStatus"]
    assert ["/bin/kill -HUP $MAINPID"] == d["ExecReload"]
    assert ["yes"] == d["DynamicUser"]
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        assert [{"CAP_NET_RAW", "CAP_NET_ADMIN"}] == [set(v.split()) for v in d[key]]
    assert "MemoryDenyWriteExecute" not in d  # PyTorch and numba's JIT need W+X memory
    assert any(v.startswith("NUMBA_CACHE_DIR=/var/lib/netad/") for v in d["Environment"])
    assert d["ExecStart"][0].startswith("/usr/local/bin/netad run -c /etc/netad/netad.yaml")
    assert ["3G"] == d["MemoryMax"]  # sized in README, "Memory"
    assert {"netad-sink-url", "netad-kafka-password"} == set(d["LoadCredential"])  # the config's credential:NAME
