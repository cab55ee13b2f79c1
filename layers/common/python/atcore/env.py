"""Settings from the environment: one way for every module, typed, failing loudly.

Each concern keeps its settings model where it is used (config.DatabaseSettings,
execution.ExecutionSettings, executors.settings.ExecutorSettings, ...), so a function imports
only the settings it reads. A field names its variable with its alias:

    class ExecutionSettings(BaseModel):
        lease_seconds: float = Field(default=120.0, gt=0, alias="AT_LEASE_SECONDS")

    execution_settings = settings_reader(ExecutionSettings)   # cached; env.reset() forgets it

An unset or blank variable means the default. A value that does not fit raises
ConfigurationError naming the variable, never a silent fallback: a typo in a deploy parameter
must not quietly run the product with another timeout. (pydantic-settings would do this too, but
importing it costs ~140 ms of cold start; this is the part of it AT needs.)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

_readers: list[functools._lru_cache_wrapper[Any]] = []
_models: list[type[BaseModel]] = []


class ConfigurationError(Exception):
    """An environment variable holds a value its setting cannot take."""


def from_environment[Model: BaseModel](model: type[Model], **values: object) -> Model:
    """`model` validated from the variables its fields alias; `values` (by field name) win."""
    by_alias = {field.alias: name for name, field in model.model_fields.items() if field.alias}
    given = {alias: raw.strip() for alias in by_alias if (raw := os.environ.get(alias, "")).strip()}
    try:
        return model.model_validate(given | {_alias(model, name): value for name, value in values.items()})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid configuration: {problems}") from None


def _alias(model: type[BaseModel], field_name: str) -> str:
    field = model.model_fields[field_name]
    return field.alias or field_name


def cached[Result](read: Callable[[], Result]) -> functools._lru_cache_wrapper[Result]:
    """functools.cache for a settings reader, which reset() forgets."""
    reader = functools.cache(read)
    _readers.append(reader)
    return reader


def settings_reader[Model: BaseModel](model: type[Model]) -> functools._lru_cache_wrapper[Model]:
    """A cached `from_environment(model)`: read once per execution environment, lazily."""
    _models.append(model)
    return cached(lambda: from_environment(model))


def variables() -> frozenset[str]:
    """Every variable the settings read through settings_reader name (tests clear them)."""
    return frozenset(field.alias for model in _models for field in model.model_fields.values() if field.alias)


def reset() -> None:
    """Forget every cached settings object (tests that change the environment; SnapStart restores)."""
    for reader in _readers:
        reader.cache_clear()
