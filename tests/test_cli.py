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


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["check-config", "-c", "configs/default.yaml"], ["bench", "--help"]])
def test_light_commands_import_no_torch_scipy_or_numba(args: list[str]):
    """--help, --version, check-config and a group's help run without the heavy libraries."""
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
