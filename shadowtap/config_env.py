"""The environment layer of the configuration: `SHADOWTAP_<SECTION>_<KEY>` variables as config keys.

A pydantic-settings source. `_` both joins the levels and appears inside key names, so a variable's
name is matched against the settings' fields rather than split blindly.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings.exceptions import SettingsError

from shadowtap.errors import ConfigError

__all__ = ["ENV_NOT_KEYS", "ENV_PREFIX", "EnvironmentSource", "plugin_env_prefixes"]

ENV_PREFIX = "SHADOWTAP_"
# Plug-ins that may read variables of their own under SHADOWTAP_<NAME>_ (see `plugin_env_prefixes`).
SCORER_ENTRY_POINT_GROUP = "shadowtap.scorers"


# Variables that point somewhere rather than set a key: the config file itself, and a cache directory.
ENV_NOT_KEYS = frozenset({"SHADOWTAP_CONFIG", "SHADOWTAP_CACHE"})


def plugin_env_prefixes() -> frozenset[str]:
    """`SHADOWTAP_<NAME>_` for every scorer plug-in registered under `SCORER_ENTRY_POINT_GROUP`.

    A plug-in reads its own variables there (the judge's `SHADOWTAP_JUDGE_API_KEY`, declared on its
    config model); they are not configuration keys. Only the package metadata is read, nothing imported.
    """
    names = entry_points(group=SCORER_ENTRY_POINT_GROUP).names
    return frozenset(f"{ENV_PREFIX}{name.upper()}_" for name in names)


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (`X | None`, `Literal[False] | dict`), else the annotation itself."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _dict_values(annotation: Any) -> tuple[bool, Any] | None:
    """For a `dict[str, X]` (possibly optional): (whether X is itself a mapping, X)."""
    for member in _members(annotation):
        if get_origin(member) is dict:
            value = get_args(member)[1] if get_args(member) else Any
            nested = any(get_origin(m) is dict or _submodel(m) for m in _members(value))
            return nested, value
    return None


def _key_path(annotation: Any, words: list[str]) -> tuple[list[str], Any] | None:
    """The key path that the words of a variable name mean below a field of type `annotation`, and the
    type of the key it ends at: ["kafka", "bootstrap", "servers"] under `sink` is kafka.bootstrap_servers.
    Field names may contain underscores themselves, so the longest field name that fits is tried first."""
    model = _submodel(annotation)
    if model is not None:
        for n in range(len(words), 0, -1):
            field = model.model_fields.get("_".join(words[:n]))
            if field is None:
                continue
            if n == len(words):
                return ["_".join(words)], field.annotation
            tail = _key_path(field.annotation, words[n:])
            if tail is not None:
                return ["_".join(words[:n]), *tail[0]], tail[1]
        return None
    values = _dict_values(annotation)
    if values is None:
        return None
    nested, value_type = values
    if nested and len(words) > 1:
        tail = _key_path(value_type, words[1:])
        if tail is not None:
            return [words[0], *tail[0]], tail[1]
        return [words[0], "_".join(words[1:])], Any
    return ["_".join(words)], value_type


def _is_text(annotation: Any) -> bool:
    """A key that holds text: a numeric-looking secret or model name given in the environment stays text."""
    members = _members(annotation)
    return str in members and not {bool, int, float} & set(members)


class EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source for `SHADOWTAP_<SECTION>_<KEY>` names.

    `_` both joins the levels and appears inside key names (`SHADOWTAP_SINK_KAFKA_BOOTSTRAP_SERVERS` is
    sink.kafka.bootstrap_servers), so nested names are matched against the fields rather than split
    blindly. Values are read as YAML scalars or flow lists (`0.5`, `true`, `[a, b]`, empty for null).
    A `SHADOWTAP_` variable that is no key, no pointer (`ENV_NOT_KEYS`) and no plug-in's own
    (`plugin_env_prefixes`) is an error naming it.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        # Only upper-case SHADOWTAP_ names are ours; the base class looks them up in lower case.
        self._names = {name.lower(): name for name in environ if name.startswith(ENV_PREFIX)}
        self._environ = environ
        self._names_used: set[str] = set()
        self._problems: list[str] = []
        super().__init__(settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter="_")

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {lower: self._environ[name] for lower, name in self._names.items()}

    def explode_env_vars(
        self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]
    ) -> dict[str, Any]:
        prefix = f"{ENV_PREFIX}{field_name}_".lower()
        tree: dict[str, Any] = {}
        for lower, raw in env_vars.items():
            if not lower.startswith(prefix) or raw is None:
                continue
            name = self._names[lower]
            found = _key_path(field.annotation, lower[len(prefix) :].split("_"))
            if found is None:
                continue
            path, annotation = found
            self._names_used.add(lower)
            if raw == "":
                value = None
            elif _is_text(annotation):
                # Text is taken as given: a key or a model name is never YAML (nor echoed in an error).
                value = raw
            else:
                try:
                    value = yaml.safe_load(raw)
                except yaml.YAMLError as exc:
                    self._problems.append(f"{name}: cannot parse value: {exc}")
                    continue
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        return tree

    def __call__(self) -> dict[str, Any]:
        self._names_used, self._problems = set(), []
        try:
            values = super().__call__()
        except SettingsError as exc:
            raise ConfigError(f"environment: {exc}") from None
        if self._problems:
            raise ConfigError(self._problems[0])
        self._names_used |= {f"{ENV_PREFIX}{name}".lower() for name in values}
        reserved = plugin_env_prefixes()
        for lower, name in sorted(self._names.items()):
            if lower in self._names_used or name in ENV_NOT_KEYS or name.startswith(tuple(reserved)):
                continue
            raise ConfigError(f"{name}: no such configuration key")
        return values
