"""`netad train` on input that cannot make a model (a capture too short, nothing left after
the time slice) ends in one clear line and exit 65 (EX_DATAERR), and a model it cannot write
in one clear line and exit 73 (EX_CANTCREAT), never a traceback; so does any command's
output on a full disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import can_unshare_mounts, on_a_full_disk
from tests.hostile._hostile import assert_no_traceback, netad_cli
from tests.service._daemon import write_config

EX_DATAERR = 65
EX_CANTCREAT = 73

pytestmark = pytest.mark.slow  # each case runs netad (and trains what it can)


@pytest.fixture(scope="module")
def short_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of the demo office: one window, too few to hold any back for the threshold."""
    pcap = tmp_path_factory.mktemp("short") / "short.pcap"
    res = netad_cli("synth", "--out", str(pcap), "--benign-s", "30", "--attack-s", "0")
    assert 0 == res.returncode, res.stderr
    return pcap


@pytest.mark.parametrize(("extra", "reason"), [
    ((), "no calibration scores (1 window(s) of 6 x 10 s"),
    (("--start-s", "3600"), "no windows to train on"),
], ids=["too short", "sliced to nothing"])
def test_train_on_too_little_traffic_exits_65_with_the_reason(tmp_path: Path, short_capture: Path, extra: tuple, reason: str):
    config = write_config(tmp_path / "train.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu"},
                                                    "training": {"epochs": 1}, "logging": {"format": "json"}})
    out = tmp_path / "model"
    res = netad_cli("train", "-c", str(config), "--pcap", str(short_capture), "--out", str(out), *extra)
    assert EX_DATAERR == res.returncode, res.stderr
    assert_no_traceback(res.stdout, res.stderr)
    assert f"netad: cannot train on {short_capture}: " in res.stderr and reason in res.stderr
    assert not out.exists()  # no half bundle


def test_train_on_a_capture_cut_mid_record_writes_the_model_says_so_and_exits_65(tmp_path: Path, demo):
    """`netad train` trains on what comes before the damage (score's code), writes the bundle
    and says where the damage is, on stderr and with exit status 65: a script must not take a
    model of half a capture for one of the whole."""
    whole = demo["pcap"].read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[: len(whole) // 5])  # mid-record, in the benign part
    config = write_config(tmp_path / "train.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu"},
                                                    "training": {"epochs": 1}, "logging": {"format": "json"}})
    out = tmp_path / "model"
    res = netad_cli("train", "-c", str(config), "--pcap", str(cut), "--out", str(out))
    assert EX_DATAERR == res.returncode, res.stderr
    assert_no_traceback(res.stdout, res.stderr)
    assert f"netad: {cut}: truncated: the record at byte" in res.stderr and "trained on what came before it" in res.stderr
    assert "capture_damaged" in res.stderr
    assert (out / "model.json").is_file() and f"written to {out}" in res.stdout



def test_train_with_a_home_net_that_holds_no_host_says_only_the_link_was_learned_and_scoring_with_another_is_refused(tmp_path: Path, demo):
    """A first run whose home_net misses the capture's network learns the link alone: the model
    is written (the link is still scored), and `netad train` says that no host will ever be
    scored and what to set, on stdout and in its log. Before, it printed the link's line and
    nothing about hosts."""
    config = write_config(tmp_path / "train.yaml", {"home_net": ["172.31.0.0/16"], "model": {"device": "cpu"},
                                                    "training": {"epochs": 1, "members": 1}, "logging": {"format": "json"}})
    out = tmp_path / "model"
    res = netad_cli("train", "-c", str(config), "--pcap", str(demo["pcap"]), "--end-s", "3600", "--out", str(out))
    assert 0 == res.returncode, res.stderr
    assert_no_traceback(res.stdout, res.stderr)
    warning = ("no host of home_net (172.31.0.0/16) in the training span: the model scores the link only, and no host "
               "will ever have an incident")
    assert f"  warning: {warning}" in res.stdout
    assert '"event": "training_warning"' in res.stderr and warning in res.stderr
    classes = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ") and line[2] != " " and " entities " in line]
    assert ["global"] == classes, res.stdout
    # home_net fixed afterwards: this model counted the link's traffic against 172.31/16, and
    # read against 10.20/16 the demo's link alarmed in 59 of its 60 windows; scoring and
    # check-config refuse it (78) and say to retrain
    fixed = write_config(tmp_path / "fixed.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu", "path": str(out)},
                                                   "source": {"type": "pcap", "path": str(demo["pcap"])}})
    for args in (["score", "-c", str(fixed), "--pcap", str(demo["pcap"]), "--model", str(out)], ["check-config", "-c", str(fixed)]):
        res = netad_cli(*args)
        assert 78 == res.returncode, res.stderr
        assert_no_traceback(res.stdout, res.stderr)
        assert "the model was trained with home_net 172.31.0.0/16 and this config has 10.20.0.0/16: " in res.stderr
        assert "retrain with this config, or set home_net back" in res.stderr


@pytest.mark.root
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and unshare(1) for a private mount namespace")
def test_train_whose_model_cannot_be_written_exits_73_with_the_path_and_the_reason(tmp_path: Path, demo):
    """--out on a full disk (a tmpfs filled, in a mount namespace of its own), found only once
    the model is trained: one line with the path and the disk's reason, exit 73 (EX_CANTCREAT),
    no half bundle. It was a traceback and exit 1."""
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    config = write_config(tmp_path / "train.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu"},
                                                    "training": {"epochs": 1, "members": 1}, "logging": {"format": "json"}})
    out = disk / "model"
    args = ["train", "-c", str(config), "--pcap", str(demo["pcap"]), "--truth", str(demo["truth"]), "--before-first-attack",
            "--out", str(out)]
    res = on_a_full_disk(disk, [sys.executable, "-m", "detector.cli", *args])
    assert EX_CANTCREAT == res.returncode, res.stderr[-3000:]
    assert_no_traceback(res.stdout, res.stderr)
    assert f"netad: {out}: the trained model could not be written: " in res.stderr and "No space left on device" in res.stderr


@pytest.mark.root
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and unshare(1) for a private mount namespace")
@pytest.mark.parametrize("command", ["synth", "score"])
def test_a_command_whose_output_meets_a_full_disk_exits_73_with_the_reason(tmp_path: Path, demo, command: str):
    """`netad synth --out` and `netad score --scores` on a full disk (ENOSPC, as a full quota
    or a read-only file system would be): one line with the file and the reason, exit 73,
    where each ended in a traceback and exit 1 (and then in a line without the file)."""
    import sys

    disk = tmp_path / "disk"
    disk.mkdir()
    config = write_config(tmp_path / "score.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu"},
                                                    "logging": {"format": "json"}})
    args = {"synth": ["synth", "--out", str(disk / "office.pcap"), "--benign-s", "60", "--attack-s", "0"],
            "score": ["score", "-c", str(config), "--model", str(demo["model"]), "--pcap", str(demo["pcap"]),
                      "--scores", str(disk / "scores.jsonl")]}[command]
    res = on_a_full_disk(disk, [sys.executable, "-m", "detector.cli", *args], leave_bytes=8192)
    assert EX_CANTCREAT == res.returncode, res.stderr[-3000:]
    assert_no_traceback(res.stdout, res.stderr)
    said = {"synth": f"netad: {disk / 'office.pcap'}: cannot write: No space left on device",
            "score": f"netad: {disk / 'scores.jsonl'}: "}[command]  # then how many lines, and the reason
    assert res.stderr.strip().splitlines()[-1].startswith(said), res.stderr[-3000:]
    assert res.stderr.strip().endswith("No space left on device")
