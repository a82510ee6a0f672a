"""What a command runs with: the settings, read once when the command starts (`main`
checks them before anything runs), and the keys to the secrets stored in the database
they name. `main` leaves one CommandContext on click's context object, click's own way of
handing state down to subcommands; nothing else in the package reads the environment."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import click

from lead_orchestrator.settings import Settings
from lead_orchestrator.store.secret_box import SecretBox


@dataclass
class CommandContext:
    settings: Settings

    @cached_property
    def box(self) -> SecretBox:
        # Built when first needed: local mode creates the key file on first use.
        return SecretBox(self.settings.encryption_keys())


def _current() -> CommandContext:
    found = click.get_current_context().find_object(CommandContext)
    if found is None:
        raise RuntimeError("no CommandContext: commands run under `lead-orchestrator` (cli.main)")
    return found


def command_settings() -> Settings:
    """The running command's settings."""
    return _current().settings


def command_box() -> SecretBox:
    """The keys to the running command's database secrets."""
    return _current().box
