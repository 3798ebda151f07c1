import json

import pytest

from keras_supcon.errors import RunDirError
from keras_supcon.runs.rundir import RunDir


def test_atomic_writes_leave_only_the_final_file(tmp_path):
    run = RunDir.prepare(tmp_path / "r")
    run.write_json("metrics.json", {"a": 1})
    run.write_json("metrics.json", {"a": 2})
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["metrics.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    run = RunDir.prepare(tmp_path / "r")
    run.write_json("metrics.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with run.atomic_path("metrics.json") as tmp:
            tmp.write_text('{"a": ')
            raise RuntimeError("crash mid-write")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["metrics.json"]


def test_atomic_directory_replacement(tmp_path):
    run = RunDir.prepare(tmp_path / "r")
    for version in ("1", "2"):
        with run.atomic_path("saved_model") as tmp:
            tmp.mkdir()
            (tmp / "v").write_text(version)
    assert (tmp_path / "r" / "saved_model" / "v").read_text() == "2"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["saved_model"]


def test_prepare_refuses_existing_runs_and_foreign_folders(tmp_path):
    run = RunDir.prepare(tmp_path / "r")
    run.write_json("config.json", {})
    run.init_state()
    with pytest.raises(RunDirError, match="unfinished run; use --resume or --overwrite"):
        RunDir.prepare(tmp_path / "r")
    run.mark_finished()
    with pytest.raises(RunDirError, match="finished run; use --overwrite"):
        RunDir.prepare(tmp_path / "r")
    with pytest.raises(RunDirError, match="already finished"):
        RunDir.prepare(tmp_path / "r", resume=True)
    RunDir.prepare(tmp_path / "r", overwrite=True)
    assert list((tmp_path / "r").iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(RunDirError, match="not empty and holds no run"):
        RunDir.prepare(tmp_path / "mine", overwrite=True)
    with pytest.raises(RunDirError, match="holds no checkpoint"):
        RunDir.prepare(tmp_path / "nothing", resume=True)


def test_stage_state(tmp_path):
    run = RunDir.prepare(tmp_path / "r")
    run.init_state()
    run.checkpoint_dir("pretrain").mkdir(parents=True)
    assert not run.stage_done("pretrain")
    run.mark_stage_done("pretrain")
    assert run.stage_done("pretrain") and not run.checkpoint_dir("pretrain").exists()
    run.mark_finished()
    assert run.is_finished() and not (tmp_path / "r" / "checkpoints").exists()
