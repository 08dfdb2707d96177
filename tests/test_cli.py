"""The command line: lazy commands list their real help, and the light commands import no
torch, scipy or numba (issue 17: `netad --help` and `check-config` answer at once)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from detector import cli
from detector.bench import cli as bench_cli
from tests.conftest import REPO

HEAVY = ("torch", "scipy", "numba")


@pytest.mark.parametrize("group", [cli.main, bench_cli.bench], ids=["netad", "netad bench"])
def test_lazy_commands_list_the_short_help_their_command_has(group: click.Group):
    """The short help a lazy group lists without importing a command is that command's own."""
    for name, (_, stored) in group.lazy.items():
        command = group.load(name)
        assert command.help is not None
        assert command.help.split("\n\n")[0].split() == stored.split(), name


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["check-config"], ["bench", "--help"]])
def test_light_commands_import_no_torch_scipy_or_numba(args: list[str], tmp_path_factory: pytest.TempPathFactory):
    """--help, --version, check-config and a group's help run without the heavy libraries;
    check-config on a config that passes, so with a model bundle checked (model.json and the
    weights' header: tests/service/test_preflight.py)."""
    if args == ["check-config"]:
        from tests.service.test_preflight import passing_config

        args = ["check-config", "-c", str(passing_config(tmp_path_factory.mktemp("light")))]
    probe = (
        "import sys\n"
        "from detector.cli import main\n"
        f"try:\n    main({args!r})\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
        "print('exit', code, 'heavy', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "exit 0 heavy []" == res.stdout.strip().splitlines()[-1], res.stderr


def test_a_missing_capture_exits_66_and_touches_no_output(tmp_path):
    """`netad score --pcap MISSING` exits 66 (EX_NOINPUT, as documented), naming the file,
    before anything is opened: an incidents file from an earlier run is left as it was."""
    from click.testing import CliRunner

    earlier = tmp_path / "incidents.jsonl"
    earlier.write_text('{"earlier": true}\n')
    for args in (["score", "--pcap", str(tmp_path / "nope.pcap"), "--incidents", str(earlier)],
                 ["train", "--conn-log", str(tmp_path / "nope.log"), "--out", str(tmp_path / "model")]):
        result = CliRunner().invoke(cli.main, args)
        assert 66 == result.exit_code, result.output
        assert "does not exist" in result.stderr and "nope." in result.stderr
    assert '{"earlier": true}\n' == earlier.read_text()
    assert not (tmp_path / "model").exists()


def test_before_first_attack_without_the_truth_is_an_error(tmp_path):
    """`train --before-first-attack` without --truth would train on the attacks (thresholds
    4-8x higher): a usage error saying what is missing."""
    from click.testing import CliRunner

    capture = tmp_path / "c.pcap"
    capture.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20))
    result = CliRunner().invoke(cli.main, ["train", "--pcap", str(capture), "--out", str(tmp_path / "m"), "--before-first-attack"])
    assert 2 == result.exit_code
    assert "--before-first-attack needs --truth" in result.stderr
    assert not (tmp_path / "m").exists()


_FAST_EXIT = """
import atexit, sys
import click
from detector._exit import without_teardown

MARKER = sys.argv[1] if __name__ == "__main__" else None

class Teardown:
    def __del__(self):
        sys.__stderr__.write("torn down\\n")

keep = Teardown()  # freed only by the interpreter's teardown

@click.command()
@without_teardown
def command():
    if MARKER:
        atexit.register(lambda: open(MARKER, "w").write("atexit ran"))
    sys.stdout.write("no newline, still buffered")
    sys.exit(65)

if __name__ == "__main__":
    command([])
"""


def test_a_command_without_teardown_loses_nothing_and_keeps_its_exit_status(tmp_path):
    """`without_teardown` (netad score) ends the process without the interpreter's teardown,
    yet runs the atexit handlers, flushes stdout and keeps the exit status; run inside
    another program (click's CliRunner) it exits normally, leaving that program running."""
    from click.testing import CliRunner

    marker = tmp_path / "atexit.txt"
    res = subprocess.run([sys.executable, "-c", _FAST_EXIT, str(marker)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (65, "no newline, still buffered", "", "atexit ran") == (res.returncode, res.stdout, res.stderr, marker.read_text())
    namespace: dict = {"__name__": "probe"}
    exec(_FAST_EXIT, namespace)
    namespace["Teardown"].__del__ = lambda self: None  # this process's teardown is pytest's business
    result = CliRunner().invoke(namespace["command"], [])
    assert (65, "no newline, still buffered") == (result.exit_code, result.output)
