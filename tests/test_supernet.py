"""The weight-sharing supernet: slices are the physically pruned nets, training resumes exactly, scores
of slices and of the full widths behave."""
from __future__ import annotations

import random

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
