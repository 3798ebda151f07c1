"""Typed settings fields, shared by every job's settings dataclass (``TrainConfig``,
``LayerwiseConfig``, ``PruneConfig``): a field carries its default, type (the
annotation), help text, choices and command-line group, and the command line
(``cli.common.add_settings_arguments``), grids and validation read them."""

import dataclasses
import typing

from keras_supcon.errors import ConfigError, check_choice

VERBOSITY = ("auto", "0", "1", "2")


def setting(default, help="", *, group="training", choices=None, metavar=None, parse=None):
    """A settings field: its default and what the command line shows for it (``help``,
    ``choices``, the option ``group``); ``parse``: text -> value, for values that are not
    a plain int / float / str / bool (e.g. comma-separated lists)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "group": group, "choices": choices, "metavar": metavar, "parse": parse})


def setting_type(field):
    """The type of a settings field's values: ``int``, ``float``, ``str`` or ``bool``
    (``X | None`` fields: ``X``)."""
    kind = field.type
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def parse_setting(field, value):
    """``value`` (a string from the command line or a grid, or a TOML value) as a value
    of ``field``'s type; ``ConfigError`` naming the setting when it is not one."""
    kind = setting_type(field)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{field.name}: {value!r} is not true or false")
    try:
        parsed = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field.name}: {value!r} is not a {kind.__name__}") from None
    if kind is int and isinstance(value, float) and value != parsed:
        raise ConfigError(f"{field.name}: {value!r} is not an int")
    choices = field.metadata.get("choices")
    if choices is not None:
        check_choice(parsed, choices, field.name.replace("_", " "))
    return parsed


def check_verbosity(value):
    """Keras ``fit`` verbosity from a setting: ``"auto"``, or 0, 1, 2 (as int or text)."""
    check_choice(str(value), VERBOSITY, "verbosity")
    return value if value == "auto" else int(value)
