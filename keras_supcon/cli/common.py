"""What the command-line tools share: one-line errors, the training options, config files.

The tools only parse arguments and call the library; user errors raised by the
library (:class:`~keras_supcon.errors.KerasSupconError`) become one
``error: ...`` line and exit status 2, Ctrl-C exit status 130.
"""

import argparse
import dataclasses
import sys
import tomllib

from keras_supcon._launch import SCRIPT_PREFIX, launched_module


def command_name(job):
    """The command as the user typed it, for usage lines: ``python -m MODULE`` when
    started that way, else the console script ``keras-supcon-<job>``."""
    module = launched_module()
    return f"python -m {module}" if module else SCRIPT_PREFIX + job.replace("_", "-")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def run_reporting_errors(job, interrupted_hint):
    """``job()``'s result, or the exit status after one ``error:`` / interrupted line."""
    from keras_supcon.errors import KerasSupconError

    try:
        return job()
    except KerasSupconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_hint}", file=sys.stderr)
        return 130


def add_settings_arguments(p, settings_class, *, exclude=()):
    """One option per field of the settings dataclass ``settings_class`` (e.g.
    :class:`~keras_supcon.training.TrainConfig`), but those in ``exclude``: its
    default, type, help text and choices come from the field (``training.settings``),
    options in argument groups named by the fields. Booleans get ``--x`` / ``--no-x``.
    Returns the groups by name, for the command's own options."""
    from keras_supcon.runs.settings import setting_type

    groups = {}
    for field in dataclasses.fields(settings_class):
        if field.name in exclude:
            continue
        meta = field.metadata
        group = meta.get("group", "training")
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        kind = setting_type(field)
        kwargs = dict(default=field.default, help=meta.get("help") or None)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_argument_type(meta.get("parse") or kind),
                          choices=meta.get("choices"), metavar=meta.get("metavar"))
        groups[group].add_argument("--" + field.name.replace("_", "-"), **kwargs)
    return groups


def _argument_type(parse):
    """``parse`` for argparse: a :class:`KerasSupconError` becomes argparse's one-line
    error (argparse itself catches only ``ValueError`` / ``TypeError``)."""
    from keras_supcon.errors import KerasSupconError

    def convert(text):
        try:
            return parse(text)
        except KerasSupconError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse's "invalid int value"
    return convert


def apply_config_file(parser, argv):
    """Defaults of ``parser`` from the TOML file named by ``--config`` in ``argv``.

    Keys are option names (``batch-size`` or ``batch_size``); options given on
    the command line win. An unknown key is an error naming it.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return {}
    try:
        with open(known.config, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        parser.error(f"--config {known.config}: no such file")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"--config {known.config}: not valid TOML ({exc})")
    dests = {a.dest for a in parser._actions}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - dests)
    if unknown:
        parser.error(f"--config {known.config}: unknown setting(s) {', '.join(unknown)}")
    parser.set_defaults(**values)
    return values
