"""The base of every error lorafleet shows a user.

    LorafleetError                 message + optional hint; the CLI prints both, exits 1
     +-- RegistryError
     |    +-- AdapterNotFoundError  no such task or version in the registry
     |    +-- InvalidVersionNameError
     |    +-- VersionExistsError
     +-- BaseModelError             the base model cannot be found or prepared
     +-- ConfigFileError            a YAML/JSON config file is unreadable or invalid

Each package (training, serve, router, monitor) derives its own errors from LorafleetError.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class LorafleetError(Exception):
    """An error with a message for the user and, where one helps, what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class RegistryError(LorafleetError):
    pass


class AdapterNotFoundError(RegistryError):
    def __init__(self, name: str, registry: Path | str) -> None:
        super().__init__(
            f"no adapter task or version named '{name}' in the registry {registry}",
            hint="list what is there with `lorafleet registry list`",
        )
        self.name = name


class InvalidVersionNameError(RegistryError):
    pass


class VersionExistsError(RegistryError):
    pass


class BaseModelError(LorafleetError):
    pass


class ConfigFileError(LorafleetError):
    pass


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the field path and the bad value: `source: a.b: message`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        lines.append(f"{source}: {loc}: {message}{shown}")
    return "\n".join(lines)
