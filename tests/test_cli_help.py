"""Every CLI command and subcommand says what it does in `--help`."""
from __future__ import annotations

import click
from click.testing import CliRunner

from lead_orchestrator.cli.main import main


def commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def test_every_subcommand_has_help_text():
    found = dict(commands(main))
    assert {("status",), ("sql",), ("shops", "add"), ("templates", "link"), ("why",)} <= set(found)
    missing = [" ".join(path) for path, command in found.items() if not (command.help or "").strip()]
    assert missing == []
    runner = CliRunner()
    for path, command in found.items():
        shown = runner.invoke(main, [*path, "--help"])
        assert shown.exit_code == 0 and command.help.split()[0] in shown.output, path
