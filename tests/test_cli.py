"""The command-line package: one console script per job, the ``python -m`` forms,
usage lines that name the command typed, and no side effects of importing the
library (environment, matplotlib backend)."""

import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from checks import python_json

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"train": "train", "prune": "prune", "ablation": "ablation", "report": "report",
        "pseudo_label": "pseudo-label", "layerwise": "layerwise"}


def _clean_env():
    """The environment of a user's fresh process: none of the variables the test
    session sets for itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "MPLBACKEND") and not k.startswith("PYTEST")}
    env["KERAS_BACKEND"] = "tensorflow"
    return env


def test_every_job_has_a_console_script_and_a_python_m_form():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name.startswith("keras-supcon-")}
    assert scripts == {f"keras-supcon-{script}": f"keras_supcon.cli.{module}:main"
                       for module, script in JOBS.items()}
    for module in JOBS:
        shim = importlib.import_module(f"keras_supcon.{module}")
        cli = importlib.import_module(f"keras_supcon.cli.{module}")
        assert shim.main is cli.main and shim.build_parser is cli.build_parser


@pytest.mark.parametrize("module", sorted(JOBS))
def test_help_names_the_console_script(module, capsys):
    cli = importlib.import_module(f"keras_supcon.cli.{module}")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: keras-supcon-{JOBS[module]} ")


SETTINGS_OF = {"train": ("keras_supcon.training.settings", "TrainConfig", ()),
               "pseudo_label": ("keras_supcon.training.settings", "TrainConfig", ()),
               "ablation": ("keras_supcon.training.settings", "TrainConfig",
                            ("backbone", "loss", "out")),
               "layerwise": ("keras_supcon.training.layerwise", "LayerwiseConfig", ()),
               "prune": ("keras_supcon.compression.settings", "PruneConfig", ("run_dir",))}


@pytest.mark.parametrize("module", sorted(SETTINGS_OF))
def test_options_are_the_settings_fields_with_their_defaults(module):
    """Each settings field is an option whose default and help come from the field (so
    the command line cannot drift from the settings), and --help shows every default."""
    import argparse
    import dataclasses

    settings_module, name, left_out = SETTINGS_OF[module]
    cls = getattr(importlib.import_module(settings_module), name)
    parser = importlib.import_module(f"keras_supcon.cli.{module}").build_parser()
    options = {a.dest: a for a in parser._actions if a.option_strings}
    formatter = argparse.ArgumentDefaultsHelpFormatter("x")
    for field in dataclasses.fields(cls):
        if field.name in left_out:
            continue
        action = options[field.name]
        assert action.help == field.metadata["help"], field.name
        if module != "pseudo_label" or field.name != "loss":  # pseudo-labelling: ce
            assert action.default == field.default, field.name
    for action in options.values():
        if action.dest != "help":
            assert "%(default)" in formatter._get_help_string(action), action.dest


def test_console_script_and_python_m_in_a_fresh_process():
    """Both forms answer --help, each naming itself; the declared floor is this
    Python (requires-python in pyproject.toml)."""
    script = Path(sys.executable).with_name("keras-supcon-ablation")
    assert script.exists(), f"{script}: run pip install -e ."
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                         env=_clean_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: keras-supcon-ablation ")
    out = subprocess.run([sys.executable, "-m", "keras_supcon.report", "--help"], cwd=ROOT,
                         capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m keras_supcon.report ")


def test_importing_and_plotting_change_nothing_in_the_users_process(tmp_path):
    """``import keras_supcon`` sets no environment variable beyond what its
    dependencies set when imported, and its figures leave matplotlib as the user
    had it: the chosen backend stays, no pyplot figure is left open."""
    child = textwrap.dedent(f"""
        import json, os
        import matplotlib, sklearn, tensorflow, tensorflow_datasets, keras
        import matplotlib.pyplot as plt
        before = dict(os.environ)
        import keras_supcon
        from keras_supcon.evaluation.figures import plot_curves
        from keras_supcon.runs.rundir import RunDir
        history = [{{"stage": "ce", "epoch": e, "loss": 1.0 / e, "accuracy": 0.5,
                    "val_loss": 1.2 / e, "val_accuracy": 0.4}} for e in (1, 2, 3)]
        path = RunDir({str(tmp_path)!r}).save_figure(plot_curves(history, "t"), "curves.png")
        changed = sorted(k for k in set(before) | set(os.environ)
                         if before.get(k) != os.environ.get(k))
        print(json.dumps({{"changed": changed, "backend": matplotlib.get_backend().lower(),
                          "open": plt.get_fignums(), "png": path.read_bytes()[:4].hex()}}))
    """)
    env = dict(_clean_env(), MPLBACKEND="svg")  # the user's choice, which Agg used to override
    result = python_json(child, env, timeout=300)
    assert result == {"changed": [], "backend": "svg", "open": [], "png": "89504e47"}, result


def test_commands_hide_tensorflow_logs_but_user_code_does_not(monkeypatch):
    from keras_supcon import _launch

    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest", "tests"])
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest"])
    assert not _launch.launched_as_command()
    monkeypatch.setattr(sys, "orig_argv", ["python", "-X", "dev", "-m", "keras_supcon.train"])
    assert _launch.launched_module() == "keras_supcon.train"
    from keras_supcon.cli.common import command_name

    assert command_name("train") == "python -m keras_supcon.train"
    monkeypatch.setattr(sys, "orig_argv", ["/venv/bin/python", "/venv/bin/keras-supcon-prune"])
    monkeypatch.setattr(sys, "argv", ["/venv/bin/keras-supcon-prune", "RUN"])
    assert _launch.launched_script() == "keras-supcon-prune" and _launch.launched_as_command()
    assert command_name("pseudo_label") == "keras-supcon-pseudo-label"
