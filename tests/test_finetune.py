"""The fine-tuning trainer: outputs, exact resume, NaN recovery, option checks (tiny unet_64 / ndf 8 nets)."""
import copy
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from ganprune.data.datasets import AlignedDataset, UnalignedDataset
from ganprune.core.errors import UserError
from ganprune.train.trainer import finetune
from ganprune.models.checkpoint import load_discriminator, load_generator
from ganprune.pruning.physical import load_pruned, prune, pruned_info, set_pruned_info
from ganprune.pruning.space import SearchSpace


def write_aligned(root, n_train=8, n_val=4, size=64, seed=0):
    """A learnable paired task: B is A colour-inverted and mirrored."""
    rng = np.random.default_rng(seed)
    for phase, n in (("train", n_train), ("val", n_val)):
        os.makedirs(os.path.join(root, phase), exist_ok=True)
        for i in range(n):
            a = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            a = np.asarray(a)
            Image.fromarray(np.concatenate([a, 255 - a[:, ::-1]], 1)).save(os.path.join(root, phase, f"{i}.png"))
    return root



pytestmark = pytest.mark.usefixtures("one_thread")

def write_unaligned(root, n=6, size=64, seed=0):
    rng = np.random.default_rng(seed)
    for side in ("trainA", "trainB", "testA", "testB"):
        os.makedirs(os.path.join(root, side), exist_ok=True)
        for i in range(n if side.startswith("train") else 2):
            img = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((size, size))
            img.save(os.path.join(root, side, f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = write_aligned(str(tmp_path_factory.mktemp("aligned")))
    torch.manual_seed(0)
    TG, TD = load_generator(None, arch="unet_64", ngf=8), load_discriminator(None, ndf=8)
    x, xd = torch.zeros(1, 3, 64, 64), torch.zeros(1, 6, 64, 64)
    G = prune(TG, SearchSpace.from_model(TG, x, arch="unet_64").uniform(0.5), x)
    D = prune(TD, SearchSpace.from_model(TD, xd, arch="basic").uniform(0.5), xd)
    set_pruned_info(G, spec={"arch": "unet_64", "ngf": 8})
    set_pruned_info(D, spec={"arch": "basic", "ndf": 8})
    return {"root": root, "TG": TG.eval(), "TD": TD.eval(), "G": G, "D": D,
            "train": AlignedDataset(root, "train"), "val": AlignedDataset(root, "val", flip=False)}


def run(tiny, out=None, dataset=None, **kw):
    G, D = copy.deepcopy(tiny["G"]), copy.deepcopy(tiny["D"])
    kw = {"recipe": "pix2pix", "steps": 4, "batch_size": 2, "save_every": 2, "progress": False, **kw}
    result = finetune(G, D, tiny["TG"], tiny["TD"], dataset or tiny["train"], out=out, **kw)
    return result, G, D


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Interrupt(Dataset):
    """Raises on the ``stop``-th item fetched: a run killed mid-training."""

    def __init__(self, dataset, stop):
        self.dataset, self.stop, self.fetched = dataset, stop, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched == self.stop:
            raise KeyboardInterrupt("killed")
        return self.dataset[i]


class NaNItems(Dataset):
    """Returns a NaN input for fetches in ``bad`` (fetch counter) or, with ``always``, for item 0."""

    def __init__(self, dataset, bad=(), always=False):
        self.dataset, self.bad, self.always, self.fetched = dataset, set(bad), always, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.fetched += 1
        item = dict(self.dataset[i])
        if self.fetched in self.bad or (self.always and i == 0):
            item["A"] = torch.full_like(item["A"], float("nan"))
        return item


def test_outputs_load_and_log(tiny, tmp_path):
    result, G, D = run(tiny, out=tmp_path, eval_dataset=tiny["val"], eval_every=2)
    assert result["steps_run"] == 4 and result["retries"] == 0 and result["paired"]
    G2, D2 = load_pruned(tmp_path / "G.pt"), load_pruned(tmp_path / "D.pt")
    assert pruned_info(G2).widths == pruned_info(tiny["G"]).widths and pruned_info(D2).widths == pruned_info(tiny["D"]).widths
    assert same(G2, G) and same(D2, D)
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["step"].tolist() == [0, 1, 2, 3, 4]
    assert log["val_L1"].notna().tolist() == [True, False, True, False, True]
    assert np.isfinite(log.loc[1:, ["loss_G", "loss_D", "G_L1"]].to_numpy()).all()
    # lr: constant for the first half, then linear to 0 (factor (4-3)/(4-2) at the last step)
    assert log["lr"].tolist()[1:] == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4])
    assert result["val_L1"] == pytest.approx(log["val_L1"].iloc[-1])
    assert not any(p.requires_grad for p in tiny["TG"].parameters()) and not tiny["TG"].training


@pytest.mark.parametrize("recipe", ["density", "gcc", "omgd"])  # gcc: recipe optimizers, modules and state; omgd: no D phase
def test_resume_is_exact(tiny, tmp_path, recipe):
    _, G_ref, D_ref = run(tiny, recipe=recipe, steps=6)
    out = tmp_path / "run"
    # killed while loading the batch of step 5, after the step-4 save (fetch 1 is the trainer's shape probe)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, out=out, recipe=recipe, steps=6, dataset=Interrupt(tiny["train"], stop=1 + 2 * 4 + 1))
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 4
    result, G, D = run(tiny, out=out, recipe=recipe, steps=6)
    assert result["resumed_from"] == 4 and result["steps_run"] == 2
    assert same(G, G_ref) and same(D, D_ref)
    assert pd.read_csv(out / "log.csv")["step"].tolist() == list(range(7))


def test_transient_nan_is_recovered_exactly(tiny):
    _, G_ref, D_ref = run(tiny, steps=6)
    result, G, D = run(tiny, steps=6, dataset=NaNItems(tiny["train"], bad={1 + 2 * 3 + 1}))  # step 4
    assert result["retries"] == 1 and result["steps_run"] == 6
    assert same(G, G_ref) and same(D, D_ref)


def test_persistent_nan_stops_with_user_error(tiny):
    with pytest.raises(UserError, match=r"NaN/inf at step \d+ .* 2 times"):
        run(tiny, steps=12, max_retries=1, dataset=NaNItems(tiny["train"], always=True))


def test_bad_options_and_mismatched_resume(tiny, tmp_path):
    with pytest.raises(UserError, match="unknown recipe 'nope'.*; expected one of"):
        run(tiny, recipe="nope")
    with pytest.raises(UserError, match="unknown option"):
        run(tiny, recipe_options={"lambda_L1": 10})
    with pytest.raises(UserError, match="option 'lambda_l1' expects float"):
        run(tiny, recipe_options={"lambda_l1": "big"})
    run(tiny, out=tmp_path, steps=2)
    with pytest.raises(UserError, match="lr=0.0002, now lr=0.001"):
        run(tiny, out=tmp_path, steps=4, lr=1e-3)


@pytest.mark.parametrize("recipe", ["cyclegan", "density"])
def test_cyclegan_path(tmp_path, recipe):
    """Unpaired data, a ResNet G and an unconditional D (3 input channels), as for a CycleGAN teacher."""
    root = write_unaligned(str(tmp_path / "data"))
    torch.manual_seed(0)
    TG = load_generator(None, arch="resnet_6blocks", ngf=8, norm="instance")
    TD = load_discriminator(None, ndf=8, input_nc=3, norm="instance")
    x = torch.zeros(1, 3, 64, 64)
    G = prune(TG, SearchSpace.from_model(TG, x, arch="resnet_6blocks").uniform(0.5), x)
    D = copy.deepcopy(TD)
    train_set = UnalignedDataset(root, "train")
    result = finetune(G, D, TG.eval(), TD.eval(), train_set, recipe=recipe, steps=3, batch_size=2, out=tmp_path / "o",
                      g_spec={"arch": "resnet_6blocks", "ngf": 8, "norm": "instance"},
                      d_spec={"arch": "basic", "ndf": 8, "input_nc": 3, "norm": "instance"},
                      eval_dataset=UnalignedDataset(root, "test", flip=False), progress=False)
    assert not result["paired"] and result["steps_run"] == 3
    assert result["val_L1"] is None and result["val_L1_student_to_teacher"] > 0  # no targets: L1 to the teacher only
    G2, D2 = load_pruned(tmp_path / "o" / "G.pt"), load_pruned(tmp_path / "o" / "D.pt")
    assert same(G2, G) and same(D2, D) and pruned_info(G2).widths == pruned_info(G).widths
    assert next(m for m in D2.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 3
    assert pruned_info(D2).spec["conditional"] is False  # the unconditional-D fact was read once and saved with D


def _ddp_worker(rank, world, port, root, out):
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    torch.manual_seed(0)
    TG, TD = load_generator(None, arch="unet_64", ngf=8), load_discriminator(None, ndf=8)
    x, xd = torch.zeros(1, 3, 64, 64), torch.zeros(1, 6, 64, 64)
    G = prune(TG, SearchSpace.from_model(TG, x, arch="unet_64").uniform(0.5), x)
    D = prune(TD, SearchSpace.from_model(TD, xd, arch="basic").uniform(0.5), xd)
    start = copy.deepcopy(G.state_dict())
    result = finetune(G, D, TG.eval(), TD.eval(), AlignedDataset(root, "train"), recipe="pix2pix", steps=3,
                      batch_size=2, out=out, save_every=3, device="cpu", progress=False,
                      g_spec={"arch": "unet_64", "ngf": 8}, d_spec={"arch": "basic", "ndf": 8})
    torch.save({"G": G.state_dict(), "D": D.state_dict(), "start": start, "world": result["world_size"]},
               os.path.join(root, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_gloo_two_ranks_stay_in_sync(tiny, tmp_path):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    mp.spawn(_ddp_worker, args=(2, port, tiny["root"], str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(os.path.join(tiny["root"], f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for net in ("G", "D"):
        assert r0[net].keys() == r1[net].keys()
        assert all(torch.equal(r0[net][k], r1[net][k]) for k in r0[net]), net  # weights and BN buffers
    assert any(not torch.equal(r0["G"][k], r0["start"][k]) for k in r0["start"])
    saved = load_pruned(out / "G.pt").state_dict()  # rank 0 wrote the result
    assert all(torch.equal(saved[k], r0["G"][k]) for k in saved)
    assert pd.read_csv(out / "log.csv")["step"].tolist() == [0, 1, 2, 3]


def test_cli(tiny, tmp_path, capsys):
    from ganprune.cli import main
    from ganprune.pruning.physical import save_pruned
    from ganprune.train.teacher import train_teacher
    teacher = tmp_path / "teacher"
    train_teacher(tiny["root"], teacher, arch="unet_64", ngf=8, ndf=8, steps=1, batch_size=2, progress=False)
    save_pruned(tmp_path / "g.pt", tiny["G"], {"arch": "unet_64", "ngf": 8}, pruned_info(tiny["G"]).widths)
    save_pruned(tmp_path / "d.pt", tiny["D"], {"arch": "basic", "ndf": 8}, pruned_info(tiny["D"]).widths)
    args = ["finetune", "--pruned-g", str(tmp_path / "g.pt"), "--pruned-d", str(tmp_path / "d.pt"),
            "--teacher", str(teacher), "--dataroot", tiny["root"], "--recipe", "dgl", "--steps", "2",
            "--batch-size", "2", "--out", str(tmp_path / "out"), "--recipe-option", "lambda_teacher_d=0.1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "finetune dgl: step 2 (2 run" in printed and "val_L1 " in printed
    assert pruned_info(load_pruned(tmp_path / "out" / "G.pt")).widths == pruned_info(tiny["G"]).widths
    state = torch.load(tmp_path / "out" / "state.pt", weights_only=True)
    assert state["config"]["recipe_options"]["lambda_teacher_d"] == 0.1
    assert main(args[:-1] + ["lambda_teacher=0.1"]) == 2
    assert "unknown option 'lambda_teacher'" in capsys.readouterr().err


def test_log_every_rows_are_window_means_and_teachers_are_optional(tiny, tmp_path):
    """One training loop for fine-tuning and teacher training: pix2pix runs without teachers, a recipe that
    learns from the teacher refuses to, and log_every=N rows are the means of the per-step rows."""
    G, D = copy.deepcopy(tiny["G"]), copy.deepcopy(tiny["D"])
    kw = dict(recipe="pix2pix", steps=4, batch_size=2, save_every=4, progress=False)
    finetune(G, D, None, None, tiny["train"], out=tmp_path / "every1", **kw)
    G, D = copy.deepcopy(tiny["G"]), copy.deepcopy(tiny["D"])
    finetune(G, D, None, None, tiny["train"], out=tmp_path / "every2", log_every=2, **kw)
    per_step, windows = (pd.read_csv(tmp_path / n / "log.csv") for n in ("every1", "every2"))
    assert windows["step"].tolist() == [0, 2, 4]
    for col in ("loss_G", "loss_D", "G_L1"):
        means = [per_step[col].iloc[1:3].mean(), per_step[col].iloc[3:5].mean()]
        assert windows[col].iloc[1:].tolist() == pytest.approx(means, rel=1e-5), col
    with pytest.raises(UserError, match="needs a teacher generator"):
        finetune(copy.deepcopy(tiny["G"]), copy.deepcopy(tiny["D"]), None, None, tiny["train"],
                 **{**kw, "recipe": "density"})
