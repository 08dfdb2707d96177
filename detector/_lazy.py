"""Lazily loaded click subcommands (click docs, "Lazily Loading Subcommands"): the command line
answers `--help` and `--version` at once, without importing torch, scipy or numba."""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """A group whose commands named in `lazy` are imported only when one of them runs (or its
    own help is asked for), so `netad --help`, `netad --version` and the light commands never
    import torch, scipy or numba. `lazy` maps a command name to ("module:attribute", short
    help); the short help is what the group's help lists, so listing the commands imports
    nothing: keep it the first paragraph of the command's docstring."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            return self.load(cmd_name)
        return super().get_command(ctx, cmd_name)

    def load(self, cmd_name: str) -> click.Command:
        """Import the lazy command `cmd_name` and add it to the group."""
        module, attr = self.lazy[cmd_name][0].split(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{module}:{attr} is not a click command")
        self.add_command(cmd, cmd_name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click.Group.format_commands, with the stored short help of commands not loaded yet."""
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None and name in self.lazy:
                cmd = click.Command(name, help=self.lazy[name][1])  # a stand-in: its help is all the listing reads
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])
