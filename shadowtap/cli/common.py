"""What every subcommand shares: loading the config with the flags on top, as a click error."""

from __future__ import annotations

from typing import Any

import click

from shadowtap.config import Settings, load_settings
from shadowtap.errors import ConfigError


def load(config: str | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def nested(pairs: dict[str, Any]) -> dict[str, Any]:
    """{"primary.url": x} -> {"primary": {"url": x}}, skipping flags that were not given."""
    tree: dict[str, Any] = {}
    for dotted, value in pairs.items():
        if value is None:
            continue
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
