"""Command options defined once, as the fields of a frozen dataclass, and turned into click options.

A command's config (TrainConfig, ExportConfig, ServeConfig, PreprocessConfig) declares each option as a
field: its type annotation gives the flag's type, its default the flag's default, and `option(...)`
metadata the help text and any bounds or choices. `click_options(Config)` decorates the command, and the
command builds `Config(**kwargs)` from what click parsed, so the default, the type and the help live in
one place. A field without a default is a required flag. A field without `option(...)` metadata is not
a flag (it is set by code or by a recipe).

Importing this module imports neither TensorFlow nor anything heavy: the CLI builds its flags from it.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import click


def option(help_text: str, *, flag: Optional[str] = None, choices: Optional[Sequence] = None,
           min: Optional[float] = None, max: Optional[float] = None, path: Optional[str] = None,
           metavar: Optional[str] = None, negatable: bool = False, show_default: bool = True,
           click_default: Any = dataclasses.MISSING) -> Dict[str, Any]:
    """Field metadata from which `click_options` makes a flag (`--field-name` unless `flag` is given).

    `min`/`max` bound numbers, `path` is "dir" or "file" for paths, `negatable` gives a boolean
    `--x/--no-x` (else a plain flag), and `click_default` sets a default for the flag that differs from
    the field's (None, so a recipe or a saved config fills what the user left out)."""
    return {"option": {"help": help_text, "flag": flag, "choices": tuple(choices) if choices else None, "min": min,
                       "max": max, "path": path, "metavar": metavar, "negatable": negatable,
                       "show_default": show_default, "click_default": click_default}}


def option_fields(config_cls) -> Tuple[dataclasses.Field, ...]:
    """The fields of `config_cls` that are command-line options, in declaration order."""
    return tuple(f for f in dataclasses.fields(config_cls) if "option" in f.metadata)


def flag_of(config_cls, name: str) -> str:
    """The flag spelling of field `name` (for error messages that must name what the user typed)."""
    field = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    spec = field.metadata.get("option") or {}
    return spec.get("flag") or "--" + name.replace("_", "-")


def _base_type(config_cls, field: dataclasses.Field):
    """The field's type without Optional[...]: int, float, str, bool or a Tuple[...]."""
    annotation = typing.get_type_hints(config_cls)[field.name]
    if typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else str
    return annotation


class CommaSeparated(click.ParamType):
    """`a,b,c` as a tuple of `item_type` (a Tuple[int, ...] field's flag)."""

    name = "list"

    def __init__(self, item_type):
        self.item_type = item_type

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.item_type(part.strip()) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.item_type.__name__} values", param, ctx)


def _click_type(base, spec: Dict[str, Any]):
    if spec["choices"]:
        return click.Choice(list(spec["choices"]))  # click gives back the choice itself: an int stays an int
    if spec["path"]:
        return click.Path(file_okay=spec["path"] != "dir", dir_okay=spec["path"] != "file")
    if base is int and (spec["min"] is not None or spec["max"] is not None):
        return click.IntRange(min=spec["min"], max=spec["max"])
    if base is float and (spec["min"] is not None or spec["max"] is not None):
        return click.FloatRange(min=spec["min"], max=spec["max"])
    if typing.get_origin(base) is tuple:
        return CommaSeparated(typing.get_args(base)[0])
    return base if base in (int, float) else str


def _required(field: dataclasses.Field, spec: Dict[str, Any]) -> bool:
    """A field with no default (and no `click_default`) is a flag the user must give."""
    return (spec["click_default"] is dataclasses.MISSING and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING)  # type: ignore[misc]


def _default(field: dataclasses.Field, spec: Dict[str, Any]):
    if spec["click_default"] is not dataclasses.MISSING:
        return spec["click_default"]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def click_options(config_cls, exclude: Sequence[str] = ()) -> Callable:
    """A decorator adding one click option per option field of `config_cls` (except `exclude`)."""
    def decorate(command):
        for field in reversed(option_fields(config_cls)):
            if field.name in exclude:
                continue
            spec, flag = field.metadata["option"], flag_of(config_cls, field.name)
            base, default = _base_type(config_cls, field), _default(field, spec)
            shown = spec["show_default"] and default is not None
            if base is bool:
                declaration = f"{flag}/--no-{flag[2:]}" if spec["negatable"] else flag
                command = click.option(declaration, field.name, is_flag=not spec["negatable"] or None,
                                       default=default, help=spec["help"], show_default=shown)(command)
                continue
            if typing.get_origin(base) is tuple and isinstance(default, tuple):
                default = ",".join(map(str, default))
            # click (8.5) takes an explicit default=None as a given value: a required flag must get no default.
            given_default = {"required": True} if _required(field, spec) else {"default": default}
            command = click.option(flag, field.name, type=_click_type(base, spec), help=spec["help"],
                                   show_default=shown, metavar=spec["metavar"], **given_default)(command)
        return command
    return decorate


def given(options: Dict[str, Any]) -> Dict[str, Any]:
    """The options the user set (click passes None for a flag left at a None default)."""
    return {name: value for name, value in options.items() if value is not None}
