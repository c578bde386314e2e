"""The weight-sharing supernet: slices are the physically pruned nets, training resumes exactly, scores
of slices and of the full widths behave."""
from __future__ import annotations

import random
import re

import pytest
import torch

import ganprune
from ganprune.search.setup import build_evaluator
from ganprune.pruning.physical import channel_ranking, prune
from ganprune.pruning.space import SearchSpace
from ganprune.search.supernet import Supernet, train_supernet


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=8, size=64, channels=3):
        g = torch.Generator().manual_seed(1)
        self.a = torch.rand(n, channels, size, size, generator=g) * 2 - 1
        self.reads_left = None   # a number: the read after that many fails, as a killed run stops

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        if self.reads_left is not None:
            if self.reads_left == 0:
                raise KeyboardInterrupt
            self.reads_left -= 1
        return {"A": self.a[i], "B": -self.a[i]}


def _unet():
    return ganprune.load_generator(None, arch="unet_64", ngf=8).eval()


@pytest.mark.parametrize("arch,norm", [("unet_64", "batch"), ("resnet_6blocks", "instance")])
def test_slices_equal_physically_pruned_nets(arch, norm, one_thread):
    G = ganprune.load_generator(None, arch=arch, ngf=8, norm=norm).eval()
    x = torch.randn(2, 3, 64, 64)
    space = SearchSpace.from_model(G, x[:1], arch=arch)
    ranking = channel_ranking(G, x[:1])
    sn = Supernet(G, space, x[:1], ranking)
    with torch.no_grad():
        for p in sn.net.parameters():        # shared weights that differ from the teacher's
            p.add_(0.01 * torch.randn_like(p))
    sn.net.eval()
    rng = random.Random(0)
    for which in ("largest", "smallest", "random", "random", "random"):
        w = sn.sample(rng, which)
        with torch.no_grad():
            sliced = sn(x, w)
            physical = prune(sn.net, w, x[:1], ranking=ranking).eval()(x)
            extracted = sn.extract(w).eval()(x)
        assert torch.allclose(sliced, physical, atol=1e-5), float((sliced - physical).abs().max())
        assert torch.equal(extracted, physical)
    # A slice is differentiable in the shared weights, and only kept weights get gradients.
    w = sn.sample(rng, "smallest")
    sn.net.zero_grad()
    sn(x, w).abs().mean().backward()
    grads = [p.grad for p in sn.net.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert any(float((g == 0).float().mean()) > 0.3 for g in grads if g.dim() == 4)


def test_random_slices_respect_max_macs():
    G = _unet()
    x = torch.randn(1, 3, 64, 64)
    space = SearchSpace.from_model(G, x, arch="unet_64")
    sn = Supernet(G, space, x, channel_ranking(G, x))
    rng = random.Random(3)
    full = space.macs(space.full_widths())
    sizes = [space.macs(sn.sample(rng, "random", max_macs=0.3)) / full for _ in range(30)]
    assert max(sizes) <= 0.3 and min(sizes) > 0.05
    assert len(set(sizes)) > 10


def test_training_reduces_distillation_loss_and_resumes_exactly(tmp_path, one_thread):
    G, data = _unet(), _Data()
    with torch.no_grad():    # a teacher whose outputs are far from 0 (a fresh one outputs ~0 everywhere)
        for p in G.parameters():
            p.mul_(4.0)
    x = data[0]["A"][None]
    space = SearchSpace.from_model(G, x, arch="unet_64")
    ranking = channel_ranking(G, x)
    common = dict(batch_size=2, ranking=ranking, device="cpu", progress=False, lr=1e-3, save_every=3)
    whole = train_supernet(G, space, data, tmp_path / "a", steps=6, **common)
    train_supernet(G, space, data, tmp_path / "b", steps=3, **common)
    resumed = train_supernet(G, space, data, tmp_path / "b", steps=6, **common)   # continues from step 3
    # killed at step 5 (the read of its 2nd batch item), after the save at step 4: resumes from step 4
    data.reads_left = 2 + 4 * 2 + 1   # train_supernet's first item, the trainer's, 4 steps of 2, one more
    with pytest.raises(KeyboardInterrupt):
        train_supernet(G, space, data, tmp_path / "c", steps=6, **{**common, "save_every": 2})
    data.reads_left = None
    assert torch.load(tmp_path / "c" / "supernet_state.pt", weights_only=True)["step"] == 4
    killed = train_supernet(G, space, data, tmp_path / "c", steps=6, **{**common, "save_every": 2})
    saved = torch.load(tmp_path / "a" / "supernet_G.pt", weights_only=True)
    for net in (resumed, killed):
        assert list(net.net.state_dict()) == list(saved)
        for (name, a), (_, b) in zip(whole.net.state_dict().items(), net.net.state_dict().items()):
            assert torch.equal(a, b), name
            assert torch.equal(a, saved[name]), name
    state = torch.load(tmp_path / "c" / "supernet_state.pt", weights_only=True)
    assert state["step"] == 6 and [r["step"] for r in state["log"]] == list(range(7))
    # The smallest slice moves towards the teacher's outputs.
    small = {g.name: min(g.choices) for g in space.groups}
    a = torch.stack([data[i]["A"] for i in range(len(data))])
    with torch.no_grad():
        target = G(a)
        fresh = Supernet(G, space, x, ranking)
        fresh.net.train()
        before = float((fresh(a, small) - target).abs().mean())
    longer = train_supernet(G, space, data, None, steps=25, **common)
    with torch.no_grad():
        longer.net.train()
        after = float((longer(a, small) - target).abs().mean())
    assert after < 0.8 * before, (before, after)
    with pytest.raises(ganprune.UserError, match="lr"):
        train_supernet(G, space, data, tmp_path / "b", steps=8, **{**common, "lr": 5e-4})
    # Another channel order (e.g. --importance l1 instead of l2) means other slices: not the same supernet.
    reversed_ranking = {k: list(reversed(v)) for k, v in ranking.items()}
    with pytest.raises(ganprune.UserError, match="ranking_key"):
        train_supernet(G, space, data, tmp_path / "b", steps=8, **{**common, "ranking": reversed_ranking})


def _evaluator(G, D, **kw):
    g = torch.Generator().manual_seed(0)
    batches = [{"A": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1, "B": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1}
               for _ in range(2)]
    return build_evaluator(G, D, batches, g_spec={"arch": "unet_64"}, d_spec={"arch": "basic"}, m=4, **kw)


def test_evaluator_scores_supernet_slices(one_thread):
    G, D = _unet(), ganprune.load_discriminator(None, arch="basic", ndf=8).eval()
    ev = _evaluator(G, D)
    sn = Supernet(G, ev.g_space, ev.g_example, ev.g_ranking)
    with torch.no_grad():
        for p in sn.net.parameters():
            p.mul_(0.5)
    w = ev.g_space.uniform(0.5)
    before = ev.score_pair(w, ev.d_space.full_widths())
    ev.use_supernet(sn)
    after = ev.score_pair(w, ev.d_space.full_widths())
    assert after["l1"] != pytest.approx(before["l1"])
    g, _ = ev.build_pair(w, ev.d_space.full_widths())
    sliced = sn.extract(w)
    # The candidate is the slice (same weights), with BatchNorm re-estimated.
    for (name, a), (_, b) in zip(g.named_parameters(), sliced.named_parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ganprune.UserError, match="ranking"):
        ev.use_supernet(Supernet(G, ev.g_space, ev.g_example, {k: list(reversed(v)) for k, v in ev.g_ranking.items()}))


def test_density_term_trains_through_slice_views(one_thread):
    """lambda_density > 0: the density objective scores each slice through its module view (batch statistics)."""
    G, data = _unet(), _Data(n=4)
    x = data[0]["A"][None]
    space = SearchSpace.from_model(G, x, arch="unet_64")
    common = dict(steps=2, batch_size=2, m=2, device="cpu", progress=False)
    sn = train_supernet(G, space, data, None, lambda_density=1.0, **common)
    l1_only = train_supernet(G, space, data, None, lambda_density=0.0, **common)
    moved = [name for (name, a), (_, b) in zip(sn.net.state_dict().items(), G.state_dict().items())
             if a.is_floating_point() and not torch.equal(a, b)]
    assert moved
    assert any(not torch.equal(a, b) for a, b in zip(sn.net.parameters(), l1_only.net.parameters()))
    with pytest.raises(ganprune.UserError, match="sandwich"):
        train_supernet(G, space, data, None, steps=1, sandwich=("widest",), device="cpu", progress=False)


def _gan_setup():
    G, data = _unet(), _Data()
    with torch.no_grad():
        for p in G.parameters():
            p.mul_(4.0)
    D = ganprune.load_discriminator(None, arch="basic", ndf=8, input_nc=6).eval()
    x = data[0]["A"][None]
    space = SearchSpace.from_model(G, x, arch="unet_64")
    return G, D, data, space, channel_ranking(G, x)


def test_gan_term_trains_a_copy_of_the_teacher_d_and_resumes_exactly(tmp_path, one_thread):
    """lambda_gan > 0: every slice's loss has a finite, non-zero adversarial part, the D (a copy of the teacher's,
    the teacher's own untouched) is trained and saved with the state, and a stopped or killed run resumes to the
    same G and D bit for bit."""
    G, D, data, space, ranking = _gan_setup()
    teacher_D = {k: v.clone() for k, v in D.state_dict().items()}
    common = dict(batch_size=2, ranking=ranking, device="cpu", progress=False, lr=1e-3, save_every=3, pool=4,
                  lambda_gan=0.5, teacher_D=D, conditional_D=True)
    whole = train_supernet(G, space, data, tmp_path / "a", steps=6, **common)
    state = torch.load(tmp_path / "a" / "supernet_state.pt", weights_only=True)
    assert state["config"]["recipe"] == "supernet_gan"
    assert state["config"]["recipe_options"]["gan_mode"] == "vanilla"   # pix2pix's, the teacher's loss
    adv = [v for row in state["log"][1:] for k, v in row.items() if k.startswith("G_adv_")]
    assert len(adv) == 6 * 4 and all(0 < v < float("inf") for v in adv)
    assert all(k in state["log"][-1] for k in ("D_real", "D_fake_0_largest", "D_fake_1_smallest", "loss_D"))
    moved = [k for k, v in state["nets"]["D"].items() if v.is_floating_point() and not torch.equal(v, teacher_D[k])]
    assert len(moved) > 5
    assert all(torch.equal(v, teacher_D[k]) for k, v in D.state_dict().items())
    # The GAN term changes the result (vs L1 alone, same seed).
    l1_only = train_supernet(G, space, data, None, steps=6, **{**common, "lambda_gan": 0.0})
    assert any(not torch.equal(a, b) for a, b in zip(whole.net.parameters(), l1_only.net.parameters()))

    train_supernet(G, space, data, tmp_path / "b", steps=3, **common)
    resumed = train_supernet(G, space, data, tmp_path / "b", steps=6, **common)
    data.reads_left = 2 + 4 * 2 + 1   # killed in step 5, after the save at step 4 (as in the L1-only test)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(G, space, data, tmp_path / "c", steps=6, **{**common, "save_every": 2})
    data.reads_left = None
    assert torch.load(tmp_path / "c" / "supernet_state.pt", weights_only=True)["step"] == 4
    killed = train_supernet(G, space, data, tmp_path / "c", steps=6, **{**common, "save_every": 2})
    for folder, net in (("b", resumed), ("c", killed)):
        other = torch.load(tmp_path / folder / "supernet_state.pt", weights_only=True)
        for part in ("G", "D"):
            for name, a in state["nets"][part].items():
                assert torch.equal(a, other["nets"][part][name]), (folder, part, name)
        for (name, a), (_, b) in zip(whole.net.state_dict().items(), net.net.state_dict().items()):
            assert torch.equal(a, b), name
    with pytest.raises(ganprune.UserError, match="teacher's discriminator"):
        train_supernet(G, space, data, None, steps=1, **{**common, "teacher_D": None})


def test_default_is_the_l1_supernet_and_the_estimate_changes_nothing(tmp_path, one_thread, capsys):
    """lambda_gan 0: no D, the recipe and its options as before (saved supernets stay resumable); the estimate
    line (a few steps timed, weights put back) leaves the trained weights bit-identical."""
    G, D, data, space, ranking = _gan_setup()
    common = dict(batch_size=2, ranking=ranking, device="cpu", lr=1e-3, pool=4)
    quiet = train_supernet(G, space, data, tmp_path / "q", steps=4, progress=False, **common)
    state = torch.load(tmp_path / "q" / "supernet_state.pt", weights_only=True)
    assert set(state["nets"]) == {"G"} and state["config"]["recipe"] == "supernet"
    assert set(state["config"]["recipe_options"]) == {"lambda_l1", "lambda_density", "m", "sandwich", "max_macs",
                                                      "pool"}
    assert not (tmp_path / "q" / "supernet_budget.yaml").exists()
    said = train_supernet(G, space, data, None, steps=4, progress=True, **common)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("supernet:")]
    assert len(line) == 1 and re.fullmatch(r"supernet: 4 steps, about [\d.]+ s \([\d.e-]+ s/step timed on 3 steps\)",
                                           line[0]), line
    for a, b in zip(quiet.net.state_dict().values(), said.net.state_dict().values()):
        assert torch.equal(a, b)


def test_a_time_budget_becomes_a_recorded_step_count(tmp_path, one_thread, capsys):
    import yaml
    G, D, data, space, ranking = _gan_setup()
    common = dict(batch_size=2, ranking=ranking, device="cpu", pool=4, lambda_gan=0.1, teacher_D=D)
    train_supernet(G, space, data, tmp_path / "t", steps="3s", progress=True, **common)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("supernet:")]
    recorded = yaml.safe_load((tmp_path / "t" / "supernet_budget.yaml").read_text())
    n = recorded["steps"]
    assert recorded["given"] == "3s" and n >= 1 and recorded["s_per_step"] > 0
    assert torch.load(tmp_path / "t" / "supernet_state.pt", weights_only=True)["step"] == n
    assert len(line) == 1 and re.fullmatch(rf"supernet: {n} steps, about [\d.]+ s \([\d.e-]+ s/step timed on 3 "
                                           r"steps\)", line[0]), line
    # Rerun with the same budget: the recorded count, nothing timed or trained again.
    train_supernet(G, space, data, tmp_path / "t", steps="3s", progress=True, **common)
    assert not [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("supernet:")]
    assert torch.load(tmp_path / "t" / "supernet_state.pt", weights_only=True)["step"] == n
    # Another budget is timed again and becomes the run's new count (as a larger step count continues a run).
    train_supernet(G, space, data, tmp_path / "t", steps="6s", progress=False, **common)
    recorded = yaml.safe_load((tmp_path / "t" / "supernet_budget.yaml").read_text())
    assert recorded["given"] == "6s"
    assert torch.load(tmp_path / "t" / "supernet_state.pt", weights_only=True)["step"] == max(n, recorded["steps"])
    for bad in ("20 minutes", "0s", "-5", "soon", True, 2.5):
        with pytest.raises(ganprune.UserError, match="supernet steps: expected a step count"):
            train_supernet(G, space, data, None, steps=bad, progress=False, **common)


def test_supernet_options_in_the_schema():
    from ganprune.core.options import SEARCH, duration_seconds, resolve
    o = resolve(SEARCH, {"supernet_steps": "20min", "supernet_lambda_gan": "0.01"}, source="cli")
    assert o["supernet_steps"] == "20min" and duration_seconds(o["supernet_steps"]) == 1200
    assert o["supernet_lambda_gan"] == 0.01
    assert resolve(SEARCH, {"supernet_steps": "90"}, source="cli")["supernet_steps"] == 90
    assert duration_seconds("1.5h") == 5400 and duration_seconds("90s") == 90 and duration_seconds(300) is None
    with pytest.raises(ganprune.UserError, match=r"^--supernet-steps: expected a step count like 300 or a duration"):
        resolve(SEARCH, {"supernet_steps": "20 mins"}, source="cli")
    with pytest.raises(ganprune.UserError, match="--supernet-lambda-gan must be >= 0"):
        resolve(SEARCH, {"supernet_lambda_gan": "-1"}, source="cli")


def test_attach_supernet_gan_needs_the_teacher_d(one_thread):
    from ganprune.search.setup import attach_supernet
    ev = _evaluator(_unet(), None)
    with pytest.raises(ganprune.UserError, match="supernet_lambda_gan: .*--discriminator"):
        attach_supernet(ev, _unet(), "nowhere", None, steps=2, lambda_gan=0.1)


def test_a_run_folder_from_before_the_gan_option_is_not_redone():
    """A pipeline config.yaml written before ``supernet_lambda_gan`` existed is the default: nothing changed."""
    from ganprune.pipeline import _changed_keys, resolve_config
    new = resolve_config({"dataroot": "d", "generator": "g.pth"})
    old = {k: v for k, v in new.items() if k != "supernet_lambda_gan"}
    assert _changed_keys(old, new) == []
    assert _changed_keys(old, {**new, "supernet_lambda_gan": 0.01}) == ["supernet_lambda_gan"]
