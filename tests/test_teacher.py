from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import ganprune.train.teacher as teacher
from ganprune.cli import main
from ganprune.data.datasets import AlignedDataset
from ganprune.data.demo import make_demo
from ganprune.core.errors import UserError
from ganprune.models.checkpoint import load_discriminator, load_generator
from ganprune.models.checkpoint import safe_torch_load
from ganprune.train.teacher import load_teacher, train_teacher
from ganprune.train.common import StepBatches, l1_scores

TINY = dict(arch="unet_64", ngf=8, ndf=8, progress=False)


@pytest.fixture(scope="session")
def demo64(tmp_path_factory):
    """The real-photo demo set at 64² (gray→color: its val L1 falls within a few hundred steps, while
    edges→photo's val photos come from other sources and need far longer)."""
    root = tmp_path_factory.mktemp("cache")
    return make_demo(root / "demo" / "gray2color_64", size=64, task="gray2color")["out"]


def _weights(path):
    return safe_torch_load(path)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_teacher_learns_and_writes_reference_checkpoints(demo64, tmp_path):
    out = tmp_path / "t"
    r = train_teacher(demo64, out, steps=100, save_every=50, eval_every=45, val_items=72, **TINY)
    assert r["steps"] == r["steps_run"] == 100 and r["steps_per_s"] > 0
    assert r["val_L1_end"] < 0.9 * r["val_L1_start"], r
    # Plain reference-format state dicts: strict loads with the recorded build options.
    spec = yaml.safe_load((out / "teacher.yaml").read_text())
    assert spec["G"] == {"arch": "unet_64", "ngf": 8, "norm": "batch", "dropout": True, "input_nc": 3, "output_nc": 3}
    assert spec["D"]["arch"] == "basic" and spec["D"]["ndf"] == 8 and spec["D"]["input_nc"] == 6
    assert spec["training"]["steps"] == 100 and spec["data"]["size"] == [64, 64]
    assert spec["val_L1"]["end"] == pytest.approx(r["val_L1_end"])
    G = load_generator(out / "latest_net_G.pth", **spec["G"])
    D = load_discriminator(out / "latest_net_D.pth", **spec["D"])
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in _weights(out / "latest_net_G.pth").values())
    # load_teacher gives the same pair; re-measuring val L1 reproduces the reported number.
    G2, D2, spec2 = load_teacher(out)
    assert _same(G2.state_dict(), G.state_dict()) and _same(D2.state_dict(), D.state_dict()) and spec2 == spec
    val = AlignedDataset(demo64, "val", flip=False, max_items=72)
    assert l1_scores(G2, val)["val_L1"] == pytest.approx(r["val_L1_end"], rel=1e-5)
    # The state file holds only plain data (weights_only load) and the log has the promised columns.
    state = _weights(out / "train_state.pt")
    assert state["step"] == 100
    assert set(state["nets"]) == {"G", "D"} and set(state["optimizers"]) == {"G", "D"} and "rng" in state
    assert _same(state["nets"]["G"], _weights(out / "latest_net_G.pth"))
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == teacher.LOG_COLUMNS
    assert log["step"].tolist() == sorted(list(range(0, 101, 10)) + [45])  # every 10 steps, and evaluations
    assert log.dropna(subset=["val_L1"])["step"].tolist() == [0, 45, 90, 100]
    assert log["lr"].iloc[-1] < log["lr"].iloc[1] == pytest.approx(2e-4)
    # A finished run is not retrained.
    again = train_teacher(demo64, out, steps=100, val_items=72, **TINY)
    assert again["steps_run"] == 0 and again["val_L1_end"] == r["val_L1_end"]


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resume_after_a_kill_is_exact(demo64, tmp_path, monkeypatch):
    kw = dict(steps=20, save_every=5, eval_every=0, decay_from=0.5, val_items=16, **TINY)
    train_teacher(demo64, tmp_path / "straight", **kw)

    save = teacher.TeacherFiles.write

    def save_then_die(files, state, G, D):
        save(files, state, G, D)
        if state["step"] == 15:  # inside the LR decay and a log window: the resumed part must redo both exactly
            raise _Killed

    monkeypatch.setattr(teacher.TeacherFiles, "write", save_then_die)
    with pytest.raises(_Killed):
        train_teacher(demo64, tmp_path / "killed", **kw)
    monkeypatch.setattr(teacher.TeacherFiles, "write", save)
    r = train_teacher(demo64, tmp_path / "killed", **kw)
    assert r["steps_run"] == 5
    for f in ("latest_net_G.pth", "latest_net_D.pth"):
        assert _same(_weights(tmp_path / "straight" / f), _weights(tmp_path / "killed" / f)), f
    assert (tmp_path / "straight" / "log.csv").read_text() == (tmp_path / "killed" / "log.csv").read_text()


@pytest.mark.slow
def test_extending_a_run_equals_running_longer(demo64, tmp_path):
    kw = dict(save_every=5, eval_every=0, decay_from=1.0, val_items=16, **TINY)  # constant LR: 10 then 20 == 20
    train_teacher(demo64, tmp_path / "a", steps=20, **kw)
    train_teacher(demo64, tmp_path / "b", steps=10, **kw)  # also evaluates at step 10: must not matter
    r = train_teacher(demo64, tmp_path / "b", steps=20, **kw)
    assert r["steps_run"] == 10 and r["steps"] == 20
    for f in ("latest_net_G.pth", "latest_net_D.pth"):
        assert _same(_weights(tmp_path / "a" / f), _weights(tmp_path / "b" / f)), f
    with pytest.raises(UserError, match="lr=0.0002.*lr=0.001"):
        train_teacher(demo64, tmp_path / "b", steps=30, lr=1e-3, **kw)


def test_step_batches_are_a_function_of_the_step():
    whole = list(StepBatches(10, 3, seed=5, start=0, stop=9))
    tail = list(StepBatches(10, 3, seed=5, start=4, stop=9))
    assert tail == whole[4:]
    epoch0 = [i for batch in whole[:3] for i, _ in batch]
    assert len(set(epoch0)) == 9  # drop-last permutation: no repeats within an epoch
    assert [i for batch in whole[3:6] for i, _ in batch] != epoch0  # a fresh order each epoch
    assert list(StepBatches(10, 3, seed=6, start=0, stop=9)) != whole


def test_lr_schedule():
    from ganprune.train.common import lr_factor as f
    assert [f(s, 10, 0.5) for s in (0, 4, 5, 6, 9)] == [1.0, 1.0, 1.0, 0.8, 0.2]
    assert f(9, 10, 1.0) == 1.0 and f(0, 10, 0.0) == 1.0 and f(5, 10, 0.0) == 0.5


def test_user_errors(demo64, tmp_path):
    with pytest.raises(UserError, match="train/ subfolder"):
        train_teacher(tmp_path, tmp_path / "o", **TINY)
    with pytest.raises(UserError, match="cannot take"):
        train_teacher(demo64, tmp_path / "o", steps=1, **{**TINY, "arch": "unet_128"})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "latest_net_G.pth").write_bytes(b"")
    with pytest.raises(UserError, match="no train_state.pt"):
        train_teacher(demo64, foreign, steps=1, **TINY)
    torch.save({"step": torch.tensor(3)}, foreign / "train_state.pt")
    with pytest.raises(UserError, match="not a train-teacher state"):
        train_teacher(demo64, foreign, steps=1, **TINY)
    with pytest.raises(UserError, match="decay_from"):
        train_teacher(demo64, tmp_path / "o", steps=1, decay_from=2.0, **TINY)
    with pytest.raises(UserError, match="teacher.yaml: not found"):
        load_teacher(tmp_path)


@pytest.mark.slow
def test_cli_train_teacher_and_demo(demo64, tmp_path, monkeypatch, capsys):
    rc = main(["train-teacher", "--dataroot", demo64, "--out", str(tmp_path / "cli"), "--arch", "unet_64",
               "--ngf", "8", "--ndf", "8", "--steps", "6", "--save-every", "3", "--val-items", "8", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and "6 steps this run" in text and "val L1 0." in text and "latest_net_G.pth" in text
    assert main(["train-teacher", "--out", str(tmp_path / "x")]) == 2
    # demo: the session's set sits where the cache would put it, so only the teacher is trained.
    cache = Path(demo64).parent.parent
    monkeypatch.setenv("GANPRUNE_CACHE", str(cache))
    monkeypatch.setitem(teacher.DEMO_TEACHERS, "quick", {**teacher.DEMO_TEACHERS["quick"], "steps": 8})
    assert teacher.cache_dir() == cache
    for attempt in range(2):
        assert main(["demo", "--quick", "--task", "gray2color", "--device", "cpu"]) == 0
        text = capsys.readouterr().out
        assert "| G     | unet_64" in text and "val L1 after" in text and "GMACs" in text
        assert ("cached: reused" in text) == (attempt == 1)


@pytest.mark.slow
def test_a_folder_from_the_old_training_loop_loads_and_resumes(demo64, tmp_path):
    """tests/data/old_teacher was written by the hand-written loop teacher training had before it ran on
    the fine-tuning trainer (unet_64 ngf 1, 3 of 3 steps): it must load, count as done, and continue."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "old_teacher", old)
    old_log = pd.read_csv(old / "log.csv")
    G, D, spec = load_teacher(old)
    assert spec["G"]["ngf"] == 1 and not G.training
    kw = dict(arch="unet_64", ngf=1, ndf=1, save_every=3, eval_every=3, log_every=2, val_items=8, progress=False)
    done = train_teacher(demo64, old, steps=3, **kw)
    assert done["steps_run"] == 0 and done["val_L1_end"] == spec["val_L1"]["end"]
    more = train_teacher(demo64, old, steps=6, **kw)
    assert more["steps_run"] == 3 and more["steps"] == 6
    state = _weights(old / "train_state.pt")
    assert set(state["nets"]) == {"G", "D"} and state["step"] == 6
    assert not _same(_weights(old / "latest_net_G.pth"), G.state_dict())  # it trained on from the old weights
    log = pd.read_csv(old / "log.csv")
    assert log["step"].tolist() == [0, 2, 3, 4, 6]
    pd.testing.assert_frame_equal(log.iloc[:3], old_log, check_exact=False, rtol=1e-12)
    with pytest.raises(UserError, match="lambda_l1"):
        train_teacher(demo64, old, steps=9, lambda_l1=10.0, **kw)
