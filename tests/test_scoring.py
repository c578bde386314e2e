"""Search-time candidate scoring: the full widths score best, G-only scoring, evaluation splits refused."""
from __future__ import annotations

import random

import pytest
import torch

import ganprune
from ganprune.search.setup import build_evaluator
from ganprune.scoring.candidates import CandidateEvaluator


def _unet():
    return ganprune.load_generator(None, arch="unet_64", ngf=8).eval()


def _batches(phase="train"):
    g = torch.Generator().manual_seed(0)
    return [{"A": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1, "B": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
             "phase": phase} for _ in range(2)]


def _evaluator(G, D, **kw):
    return build_evaluator(G, D, _batches(), g_spec={"arch": "unet_64"}, d_spec={"arch": "basic"}, m=4, **kw)


@pytest.mark.parametrize("recalibrate_bn", [True, False])
def test_full_widths_score_best(recalibrate_bn, one_thread):
    G, D = _unet(), ganprune.load_discriminator(None, arch="basic", ndf=8).eval()
    ev = _evaluator(G, D, recalibrate_bn=recalibrate_bn)
    full = ev.score_pair(ev.g_space.full_widths(), ev.d_space.full_widths())
    assert full["density"] == pytest.approx(0, abs=1e-6) and full["l1"] == pytest.approx(0, abs=1e-6)
    assert full["score"] == pytest.approx(0, abs=1e-5)
    rng = random.Random(0)
    for _ in range(4):
        gw = {g.name: rng.choice(list(g.choices)) for g in ev.g_space.groups}
        dw = {g.name: rng.choice(list(g.choices)) for g in ev.d_space.groups}
        if gw == ev.g_space.full_widths():
            continue
        m = ev.score_pair(gw, dw)
        assert m["score_g"] > full["score_g"] and m["density"] > 1e-4


def test_generator_only_scoring(one_thread):
    G = _unet()
    full_ev = _evaluator(G, ganprune.load_discriminator(None, arch="basic", ndf=8).eval())
    ev = CandidateEvaluator(G, None, full_ev.g_space, None, _batches(), full_ev.objective)
    w = full_ev.g_space.uniform(0.5)
    g_only = ev.score_pair(w, {})
    both = full_ev.score_pair(w, full_ev.d_space.full_widths())
    assert g_only["density"] == pytest.approx(both["density"]) and g_only["l1"] == pytest.approx(both["l1"])
    assert g_only["balance"] == 0 and g_only["d_fidelity"] == 0 and g_only["score_d"] == 0 and g_only["d_macs"] == 0
    assert g_only["score"] == pytest.approx(g_only["density"])
    g, d = ev.build_pair(w, {})
    assert d is None and sum(p.numel() for p in g.parameters()) < sum(p.numel() for p in G.parameters())
    assert ev.score_pair(ev.g_space.full_widths(), {})["score"] == pytest.approx(0, abs=1e-6)


def test_evaluation_split_refused():
    G = _unet()
    full_ev = _evaluator(G, ganprune.load_discriminator(None, arch="basic", ndf=8).eval())
    with pytest.raises(ganprune.UserError, match="evaluation split"):
        CandidateEvaluator(G, None, full_ev.g_space, None, _batches("val"), full_ev.objective)
