"""Finalists: the best few distinct pairs (and uniform) distilled identically and scored again; the best wins."""
import copy
import json

import pytest
import torch

from ganprune.search.agent import get_agent
from ganprune.search.budget import resolve_macs
from ganprune.core.errors import UserError
from ganprune.search.finalists import Distill, Distiller, finalist_rows
from ganprune.search.loop import read_history, search
from ganprune.search.budget import uniform_widths
from test_search import evaluator, pair  # noqa: F401 (the same tiny unet_64/basic pair and evaluator fixtures)


class _Images(torch.utils.data.Dataset):
    """A search split of random images; item i is fixed."""

    def __init__(self, n=12, size=64):
        g = torch.Generator().manual_seed(5)
        self.a = torch.rand(n, 3, size, size, generator=g) * 2 - 1

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        return {"A": self.a[i]}


def _agents(evaluator, seed=0):
    g_max = resolve_macs(0.3, evaluator.g_space.macs(evaluator.g_space.full_widths()))
    d_max = resolve_macs(0.5, evaluator.d_space.macs(evaluator.d_space.full_widths()))
    return (get_agent("random")(evaluator.g_space, g_max, seed=seed, role="G"),
            get_agent("random")(evaluator.d_space, d_max, seed=seed + 1, role="D"), g_max, d_max)


def _row(i, score, g, phase="search", feasible=True):
    return {"round": i, "phase": phase, "g_widths": json.dumps(g), "d_widths": "{}", "score": score,
            "feasible": feasible, "error": ""}


def test_finalist_rows_are_the_best_distinct_pairs_then_uniform():
    rows = [_row(0, 3.0, {"a": 1}), _row(1, 1.0, {"a": 2}), _row(2, 1.0, {"a": 2}), _row(3, 0.5, {"a": 3}, feasible=False),
            _row(4, 2.0, {"a": 4}), _row(5, 9.0, {"a": 5}, "uniform")]
    assert [r["round"] for r in finalist_rows(rows, 2)] == [1, 4, 5]   # duplicate and infeasible rows left out
    assert [r["round"] for r in finalist_rows(rows, 10)] == [1, 4, 0, 5]   # uniform already among them
    assert [r["round"] for r in finalist_rows(rows[:5], 1)] == [1]


def test_distiller_is_identical_for_every_call_and_moves_toward_the_teacher(pair):
    G, _ = pair
    distil = Distiller(G, _Images(), steps=6, batch_size=4, lr=1e-3, seed=0)
    from ganprune.pruning.physical import prune
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    small = prune(G, {}, x[:1])
    for p in small.parameters():   # a student away from the teacher
        p.data.add_(0.05 * torch.randn_like(p))
    a, b = distil(copy.deepcopy(small)), distil(copy.deepcopy(small))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with torch.no_grad():
        before = float((small.eval()(x) - G(x)).abs().mean())
        after = float((a(x) - G(x)).abs().mean())
    assert after < before and not a.training
    with pytest.raises(UserError, match="finalist_steps"):
        Distiller(G, _Images(), steps=0)
    # the trainer runs it: a G-only recipe takes no D, a GAN recipe needs one
    from ganprune.train.trainer import finetune
    with pytest.raises(UserError, match="trains G alone"):
        finetune(copy.deepcopy(small), pair[1], G, None, _Images(), recipe=Distill, steps=1, progress=False)
    with pytest.raises(UserError, match="trains a discriminator too"):
        finetune(copy.deepcopy(small), None, G, None, _Images(), recipe="density", steps=1, progress=False)
    assert Distiller(G, _Images(n=2), steps=3).schedule["batch_size"] == 2   # fewer images than a batch: all
    with pytest.raises(UserError, match="no training images"):
        Distiller(G, _Images(n=0), steps=3)


class _RefineAware:
    """The test evaluator whose score after distillation is ``after(g_widths)`` (records what it distilled)."""

    def __init__(self, inner, after):
        self.inner, self.g_space, self.d_space, self.after = inner, inner.g_space, inner.d_space, after
        self.evaluations, self.refine, self.distilled = 0, None, []

    def score_pair(self, g_widths, d_widths):
        r = dict(self.inner.score_pair(g_widths, d_widths))
        if self.refine is not None:
            self.distilled.append(g_widths)
            r["score"] = self.after(g_widths)
        return r


def test_search_picks_the_best_finalist_not_the_best_first_score(evaluator, pair):
    g, d, g_max, d_max = _agents(evaluator)
    plain = search(evaluator, g, d, g_max, d_max, rounds=6, progress=False)
    ranked = finalist_rows(plain.history.to_dict("records"), 3)
    # after distillation the last-ranked finalist is best: the search must return it
    target = json.loads(ranked[-1]["g_widths"])
    wrapped = _RefineAware(evaluator, lambda gw: 0.0 if gw == target else 1.0)
    g, d, _, _ = _agents(evaluator)
    distiller = Distiller(pair[0], _Images(), steps=2)
    result = search(wrapped, g, d, g_max, d_max, rounds=6, progress=False, finalists=3, distiller=distiller)
    h = result.history
    fin = h[h["phase"] == "finalist"]
    assert len(fin) == len(ranked) and list(fin["g_widths"]) == [r["g_widths"] for r in ranked]
    assert result.best["phase"] == "finalist" and result.best["g_widths"] == target
    assert wrapped.refine is None and len(wrapped.distilled) == len(ranked)
    assert json.dumps(uniform_widths(evaluator.g_space, g_max)) in list(fin["g_widths"])
    with pytest.raises(UserError, match="distiller"):
        search(evaluator, *_agents(evaluator), rounds=2, progress=False, finalists=2)


def test_finalists_with_real_distillation_resume_to_the_same_winner(tmp_path, evaluator, pair):
    distiller = Distiller(pair[0], _Images(), steps=3)
    g, d, g_max, d_max = _agents(evaluator, seed=2)
    straight = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, finalists=2, distiller=distiller,
                      out_dir=tmp_path / "a")
    assert evaluator.refine is None
    h = straight.history
    fin = h[h["phase"] == "finalist"]
    assert 2 <= len(fin) <= 3 and straight.best["phase"] == "finalist"
    assert straight.best["score"] == fin["score"].min()
    # a rerun in the same folder replays the rounds and distils the finalists again: the same rows and winner
    g, d, _, _ = _agents(evaluator, seed=2)
    again = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, finalists=2, distiller=distiller,
                   out_dir=tmp_path / "a")
    assert list(again.history["score"]) == list(h["score"])
    assert again.best["g_widths"] == straight.best["g_widths"]
    saved = read_history(tmp_path / "a" / "history.csv")
    assert [r["phase"] for r in saved][-len(fin):] == ["finalist"] * len(fin)
