"""Method configs: frozen, keyword-only dataclasses that round-trip to ``adapter_config.json``.

Every method declares one subclass of :class:`MethodConfig`. Each field is documented once, in the
field's ``metadata["help"]``; the CLI help and the error messages read that same text.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from typing import Any, ClassVar, Self

from peftlab.core.errors import UserError

CONFIG_FORMAT_VERSION = 1


class ConfigError(UserError, ValueError):
    """A config value or file is invalid; the message names the field and the fix."""


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A documented config field: ``rank: int = option(8, "LoRA rank r.")``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: configs are immutable")
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Options shared by every method."""

    method: ClassVar[str] = ""

    modules_to_save: tuple[str, ...] = option(
        (),
        "Module name patterns trained in full beside the method and saved with the adapter "
        "(e.g. a new classification head: 'classifier').",
    )
    token_indices: tuple[int, ...] = option(
        (),
        "Rows of the input embedding trained beside the method (e.g. the ids of new special tokens), saved with "
        "the adapter as those rows and their indices; a tied output head shares them (core/token_rows.py).",
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        indices = self.token_indices
        require(all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices), self,
                "token_indices", "token indices are non-negative integers (token ids)")
        require(len(set(indices)) == len(indices), self, "token_indices", "a token index is given twice")
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field when a value is out of range."""

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"method": self.method, "format_version": CONFIG_FORMAT_VERSION, **values}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build a config from JSON data; unknown keys (from a newer peftlab) warn instead of crashing."""
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"config is for method {method!r}, not {cls.method!r}")
        version = data.pop("format_version", CONFIG_FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"{cls.method} config field 'format_version': must be an integer (got {version!r})")
        data.pop("peftlab_version", None)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            newer = f" (written by config format {version}, this peftlab reads {CONFIG_FORMAT_VERSION})"
            warnings.warn(
                f"{cls.method} config: ignoring keys this version does not know: {', '.join(unknown)}"
                + (newer if version > CONFIG_FORMAT_VERSION else ""),
                stacklevel=2,
            )
        kwargs = {name: _coerce(known[name], cls, value) for name, value in data.items() if name in known}
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise ConfigError(f"{cls.method} config: {error}") from error

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Self:
        """Build from user keyword options, rejecting unknown names with the list of known ones."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"method {cls.method!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(known))}"
            )
        return cls(**{name: _coerce(known[name], cls, value) for name, value in options.items()})

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if isinstance(value, MethodConfig) else dataclasses.asdict(value)
    return value


def _coerce(field: dataclasses.Field, owner: type, value: Any) -> Any:
    """Convert JSON/CLI values to the field's declared type, or fail naming the field."""
    hint = typing.get_type_hints(owner)[field.name]
    if isinstance(value, str) and isinstance(field.default, MethodConfig):  # --set adapter='{"scaling": 2}'
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{owner.method} config field {field.name!r}: {value!r} is not a JSON object "
                              f"({error.msg}); write it as '{{\"key\": value}}'") from None
    if isinstance(value, dict) and isinstance(field.default, MethodConfig):
        # a hybrid's part given as a dict: the keys it leaves out keep the hybrid's default for that part
        value = {**field.default.to_dict(), **value}
    try:
        return _coerce_to(hint, value)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{owner.method} config field {field.name!r}: cannot use {value!r} as {_type_name(hint)} "
            f"({field.metadata.get('help', '')})"
        ) from error


def _coerce_to(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option_type in typing.get_args(hint):
            if option_type is type(None):
                if value is None or value == "none":
                    return None
                continue
            try:
                return _coerce_to(option_type, value)
            except (TypeError, ValueError) as error:
                errors.append(error)
        raise ValueError(f"none of {typing.get_args(hint)} fit")
    if origin is tuple:
        args = typing.get_args(hint)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise TypeError("expected a list")
        item_type = args[0] if args else str
        return tuple(_coerce_to(item_type, item) for item in items)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"expected one of {typing.get_args(hint)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if isinstance(hint, type) and issubclass(hint, MethodConfig):
        return value if isinstance(value, hint) else hint.from_dict(value)
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def require(condition: bool, config: MethodConfig, field: str, message: str) -> None:
    """Validation helper for ``validate``: ``require(self.rank > 0, self, "rank", "must be positive")``."""
    if not condition:
        raise ConfigError(f"{config.method} config field {field!r}: {message} (got {getattr(config, field)!r})")
