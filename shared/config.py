"""Settings helpers: each process has one pydantic-settings class, read from a TOML file
and overridden by ``FEDFORGE_*`` environment variables, built in its entry point only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from shared.errors import ConfigError

S = TypeVar("S", bound="FedforgeSettings")


class FedforgeSettings(BaseSettings):
    """Base class: environment (``FEDFORGE_`` prefix) beats the TOML file beats defaults."""

    model_config = SettingsConfigDict(env_prefix="FEDFORGE_", env_nested_delimiter="__", extra="forbid")
    toml_file_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = cls.toml_file_path
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_settings(cls: type[S], path: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from an optional TOML file; a clear ``ConfigError`` on any problem."""
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    bound = type(cls.__name__, (cls,), {"toml_file_path": path})
    try:
        return bound(**overrides)  # type: ignore[no-any-return]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings{f' in {path}' if path else ''}: {problems}") from None
