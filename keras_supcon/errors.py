"""Exceptions for user errors.

The library raises these for bad input or configuration and never calls
``sys.exit``; the command-line tools print ``error: <message>`` on one line and
exit non-zero. Anything else that escapes is a bug and keeps its traceback.
"""


class KerasSupconError(Exception):
    """Base class of every user-facing error raised by keras_supcon."""


class ConfigError(KerasSupconError, ValueError):
    """A setting is unknown, out of range, or inconsistent with another."""


class DataError(KerasSupconError, ValueError):
    """A data source is missing, malformed, or its labels are invalid."""


class OfflineError(KerasSupconError, RuntimeError):
    """Something needs the network (a TFDS download, ImageNet weights) and it failed."""


class RunDirError(KerasSupconError):
    """A run directory cannot be used as asked (finished run, no checkpoint, ...)."""


def check_choice(value, choices, what):
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` naming them."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value
