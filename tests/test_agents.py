"""Agents: protocol, registry/plugins, and the built-ins' search quality on a small analytic space."""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from ganprune.search import agent as agent_mod
from ganprune.search.agent import AGENTS, Agent, Feedback, available_agents, get_agent, make_agent, register_agent
from ganprune.core.errors import UserError

BUILTINS = ("greedy", "random", "rl", "template")


# --------------------------------------------------------------------------- a small analytic space

@dataclass(frozen=True)
class Group:
    name: str
    full: int
    choices: tuple


class ToySpace:
    """The SearchSpace interface on a chain of conv-like groups: MACs = const + Σ a_g·w_g + Σ b_g·w_g·w_{g+1}."""

    def __init__(self, fulls=(16, 32, 64, 64, 32, 16), steps=8, frozen=("out",)):
        self.groups = [Group(f"g{i}", f, tuple(f * k // steps for k in range(1, steps + 1)))
                       for i, f in enumerate(fulls)]
        self.groups += [Group(name, 3, (3,)) for name in frozen]
        self.a = {g.name: 100 for g in self.groups}
        self.chain = [g.name for g in self.groups]

    def full_widths(self):
        return {g.name: g.full for g in self.groups}

    def macs(self, widths):
        w = self.validate(widths)
        linear = sum(self.a[n] * w[n] for n in self.chain)
        bilinear = sum(9 * w[x] * w[y] for x, y in zip(self.chain, self.chain[1:]))
        return 1000 + linear + bilinear

    def params(self, widths):
        return self.macs(widths) // 10

    def validate(self, widths):
        out = {}
        for g in self.groups:
            w = widths.get(g.name, g.full)
            if w not in g.choices:
                raise UserError(f"widths: {g.name}={w!r} is not one of {g.choices}")
            out[g.name] = int(w)
        unknown = set(widths) - set(out)
        if unknown:
            raise UserError(f"widths: unknown groups {sorted(unknown)}")
        return out

    def uniform(self, fraction):
        return {g.name: max([c for c in g.choices if c <= fraction * g.full] or [g.choices[0]]) for g in self.groups}


def structured_score(space, seed=0):
    """Σ imp_g·(1 − w/full)² with importances spread over two orders of magnitude: a good search prunes
    the unimportant groups hard and keeps the important ones."""
    imp = dict(zip([g.name for g in space.groups], np.logspace(0, 2, len(space.groups))[
        np.random.default_rng(seed).permutation(len(space.groups))]))
    return lambda w: float(sum(imp[g.name] * (1 - w[g.name] / g.full) ** 2 for g in space.groups))


def run_agent(agent, space, budget, score, evals, peer=None):
    """Drive ``agent`` like the search loop does; return the proposals, feedback and the eval index at
    which the first feasible candidate was proposed."""
    proposals, feedback, first_feasible = [], [], None
    for i in range(evals):
        if agent.done():
            break
        w = agent.propose(peer)
        proposals.append(w)
        m = space.macs(w)
        fb = Feedback(widths=w, score=score(w), macs=m, feasible=m <= budget)
        if fb.feasible and first_feasible is None:
            first_feasible = i + 1
        agent.observe(fb)
        feedback.append(fb)
    return proposals, feedback, first_feasible


@pytest.fixture
def space():
    return ToySpace()


@pytest.fixture
def registry():
    """Restore the agent registry after a test that registers agents."""
    saved = dict(AGENTS), dict(AGENTS.sources), dict(agent_mod._loaded_files)
    yield
    for live, old in zip((AGENTS, AGENTS.sources, agent_mod._loaded_files), saved):
        live.clear()
        live.update(old)


# --------------------------------------------------------------------------- built-ins

@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_reaches_budget(space, name):
    budget = 0.3 * space.macs(space.full_widths())
    agent = make_agent(name, space, budget, seed=1)
    _, feedback, first = run_agent(agent, space, budget, structured_score(space), 100)
    assert first is not None and first <= 100
    best = agent.best()
    assert best is not None and best.feasible and space.macs(best.widths) <= budget
    assert best.score == min(f.score for f in feedback if f.feasible)


def test_greedy_and_rl_beat_random(space):
    """Averaged over seeds and score functions, the searching agents find better widths than random."""
    budget = 0.3 * space.macs(space.full_widths())
    results = {name: [] for name in ("random", "greedy", "rl")}
    for seed in range(4):
        score = structured_score(space, seed)
        for name in results:
            agent = make_agent(name, space, budget, seed=seed)
            run_agent(agent, space, budget, score, 100)
            results[name].append(agent.best().score)
    mean = {k: float(np.mean(v)) for k, v in results.items()}
    assert mean["greedy"] < 0.8 * mean["random"], mean
    assert mean["rl"] < 0.8 * mean["random"], mean


@pytest.mark.parametrize("name", BUILTINS)
def test_same_seed_same_proposals(space, name):
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    runs = [run_agent(make_agent(name, space, budget, seed=s), space, budget, score, 40)[0] for s in (3, 3, 4)]
    assert runs[0] == runs[1]
    if name in ("random", "rl"):
        assert runs[0] != runs[2]


@pytest.mark.parametrize("name", BUILTINS)
def test_replay_resumes_exactly(space, name):
    """A fresh agent fed the recorded transcript proposes the same next candidate as the original."""
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    peer = Feedback(widths={"d0": 8, "d1": 16}, score=0.5, macs=1234, feasible=True)
    agent = make_agent(name, space, budget, seed=7, role="D")
    run_agent(agent, space, budget, score, 25, peer=peer)
    state = agent.state_dict()
    fresh = make_agent(name, space, budget, seed=7, role="D")
    fresh.load_state_dict(state)
    assert fresh.best() == agent.best() and fresh.history == agent.history
    assert fresh.done() == agent.done()
    assert fresh.propose(peer) == agent.propose(peer)


def test_replay_detects_changed_settings_and_divergence(space):
    budget = 0.3 * space.macs(space.full_widths())
    agent = make_agent("random", space, budget, seed=1)
    run_agent(agent, space, budget, structured_score(space), 5)
    state = agent.state_dict()
    with pytest.raises(UserError, match="seed=1 but this run has seed=2"):
        make_agent("random", space, budget, seed=2).load_state_dict(state)
    state["events"][2]["proposal"] = dict(space.uniform(0.25))
    with pytest.raises(RuntimeError, match="not deterministic"):
        make_agent("random", space, budget, seed=1).load_state_dict(state)


def test_roles_get_different_streams(space):
    budget = 0.3 * space.macs(space.full_widths())
    g = make_agent("random", space, budget, seed=0, role="G").propose(None)
    d = make_agent("random", space, budget, seed=0, role="D").propose(None)
    assert g != d


def test_greedy_uses_peer_to_remeasure(space):
    """With a changing peer, greedy re-evaluates its committed widths at each round start; without, never."""
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    counts = {}
    for remeasure in (True, False):
        agent = make_agent("greedy", space, budget, remeasure=remeasure, rounds=4, patience=3)
        for i in range(200):
            if agent.done():
                break
            peer = Feedback(widths={"d0": 8 + i}, score=1.0, macs=1, feasible=True)
            w = agent.propose(peer)
            agent.observe(Feedback(w, score(w), space.macs(w), space.macs(w) <= budget))
        seen = [tuple(sorted(f.widths.items())) for f in agent.history]
        counts[remeasure] = len(seen) - len(set(seen))
    assert counts[False] == 0 and counts[True] >= 1, counts


def test_greedy_options(space):
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    small = make_agent("greedy", space, budget, max_trials_per_round=2, refine=False)
    _, fb, first = run_agent(small, space, budget, score, 300)
    assert small.done() and small.best() is not None and small.best().widths == small.current
    assert len(fb) < 40            # at most 2 trials (+ a remeasure) per round
    full_budget = make_agent("greedy", space, 2 * space.macs(space.full_widths()))
    _, fb, _ = run_agent(full_budget, space, 1e12, score, 10)
    assert full_budget.done() and len(fb) == 1 and fb[0].widths == space.full_widths()


def test_greedy_from_uniform_stays_in_budget_and_beats_uniform(space):
    """``start: uniform``: the first proposal is the widest uniform widths within the budget, every proposal
    after it fits the budget too, and on a score that rewards unequal widths the pick scores better."""
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    agent = make_agent("greedy", space, budget, start="uniform")
    proposals, fb, first = run_agent(agent, space, budget, score, 300)
    uniform = agent.fit_uniform()
    assert first == 1 and proposals[0] == uniform and agent.done()
    assert all(space.macs(w) <= budget for w in proposals)
    assert len({tuple(sorted(w.items())) for w in proposals}) > len(space.groups) // 2
    assert agent.best().score < score(uniform)
    with pytest.raises(UserError, match="start must be 'full' or 'uniform'"):
        make_agent("greedy", space, budget, start="middle")


def test_greedy_survives_failed_evaluations(space):
    """If every over-budget candidate fails (score inf), greedy still commits shrinks and ends feasible."""
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    agent = make_agent("greedy", space, budget, refine=False)
    _, fb, first = run_agent(agent, space, budget, lambda w: score(w) if space.macs(w) <= budget else math.inf, 300)
    assert first is not None and agent.done() and agent.best() is not None


def test_rl_learns_peer_dependent_widths(space):
    """When the best widths depend on the peer, the policy's preferred widths come to depend on it too."""
    budget = 0.3 * space.macs(space.full_widths())
    full = space.full_widths()
    # fill off: this score is not monotone in the widths (the group to drop should be narrow)
    agent = make_agent("rl", space, budget, seed=0, fill=False)
    peers = [Feedback(widths={"d0": 4}, score=2.0, macs=10, feasible=True),
             Feedback(widths={"d0": 8}, score=1.0, macs=20, feasible=False)]
    for i in range(150):
        peer = peers[i % 2]
        w = agent.propose(peer)
        keep, drop = ("g1", "g4") if peer is peers[0] else ("g4", "g1")   # which group should be wide flips
        score = (1 - w[keep] / full[keep]) ** 2 + (w[drop] / full[drop]) ** 2
        agent.observe(Feedback(w, score, space.macs(w), space.macs(w) <= budget))
    with torch.no_grad():   # the policy's expected position (0 = narrowest, 1 = full) of g1 and g4 per peer
        expect = [[float((torch.softmax(lg, 0) * pos).sum()) for lg, pos in
                   zip(agent._logits(agent._features(p)), agent.positions)] for p in peers]
    assert expect[0][1] > 0.8 and expect[1][1] < 0.2, expect
    assert expect[0][4] < 0.2 and expect[1][4] > 0.8, expect


def test_rl_survives_failed_evaluations(space):
    budget = 0.3 * space.macs(space.full_widths())
    score = structured_score(space)
    agent = make_agent("rl", space, budget, seed=0)
    fails = lambda w: math.inf if w["g0"] == space.groups[0].choices[-1] else score(w)  # noqa: E731
    _, fb, _ = run_agent(agent, space, budget, fails, 40)
    assert any(math.isinf(f.score) for f in fb) and math.isfinite(agent.best().score)
    assert torch.isfinite(agent.mu).all() and torch.isfinite(agent.log_sigma).all()


@pytest.mark.parametrize("name", BUILTINS)
def test_frozen_space(name):
    """A space with nothing to prune: every agent proposes the full widths and keeps working."""
    space = ToySpace(fulls=())
    budget = space.macs(space.full_widths())
    agent = make_agent(name, space, budget)
    proposals, _, first = run_agent(agent, space, budget, lambda w: 1.0, 5)
    assert first == 1 and all(p == space.full_widths() for p in proposals)


# --------------------------------------------------------------------------- real search spaces

@pytest.fixture(scope="module")
def real_spaces():
    import ganprune
    from ganprune.pruning.space import SearchSpace
    g = SearchSpace.from_model(ganprune.load_generator(None, arch="unet_64", ngf=8), torch.zeros(1, 3, 64, 64))
    d = SearchSpace.from_model(ganprune.load_discriminator(None, arch="basic", ndf=8), torch.zeros(1, 6, 64, 64))
    return g, d


@pytest.mark.parametrize("name", BUILTINS)
def test_collaborative_on_real_spaces(real_spaces, name):
    """A G-agent and a D-agent on the unet_64 / PatchGAN spaces, exchanging feedback as the search loop
    does: both end within 30% of the MACs, and a JSON round trip of the state resumes them exactly."""
    import json
    g_space, d_space = real_spaces
    budgets = [0.3 * s.macs(s.full_widths()) for s in (g_space, d_space)]
    g_score, d_score = structured_score(g_space, 1), structured_score(d_space, 2)
    agents = [make_agent(name, s, b, seed=5, role=r) for s, b, r in zip((g_space, d_space), budgets, "GD")]
    peers = [None, None]
    for _ in range(70):
        if all(a.done() for a in agents):
            break
        g, d = agents[0].propose(peers[1]), agents[1].propose(peers[0])
        scores = [g_score(g) + 0.1 * d_score(d), d_score(d) + 0.1 * g_score(g)]
        peers = [Feedback(w, sc, s.macs(w), s.macs(w) <= b, {"joint": sum(scores)})
                 for w, sc, s, b in zip((g, d), scores, (g_space, d_space), budgets)]
        for a, fb in zip(agents, peers):
            a.observe(fb)
    for a, s, b in zip(agents, (g_space, d_space), budgets):
        best = a.best()
        assert best is not None and s.macs(best.widths) <= b and s.validate(best.widths) == best.widths
        fresh = make_agent(name, s, b, seed=5, role=a.role)
        fresh.load_state_dict(json.loads(json.dumps(a.state_dict())))
        assert fresh.propose(peers[0]) == a.propose(peers[0])


def test_real_space_quality(real_spaces):
    """On the unet_64 space, greedy's best after 60 evaluations beats random's (structured score)."""
    g_space, _ = real_spaces
    budget = 0.3 * g_space.macs(g_space.full_widths())
    best = {}
    for name in ("random", "greedy"):
        scores = []
        for seed in range(2):
            agent = make_agent(name, g_space, budget, seed=seed)
            run_agent(agent, g_space, budget, structured_score(g_space, seed), 60)
            scores.append(agent.best().score)
        best[name] = float(np.mean(scores))
    assert best["greedy"] < 0.8 * best["random"], best


# --------------------------------------------------------------------------- protocol and errors

def test_protocol_misuse_is_caught(space):
    budget = 0.3 * space.macs(space.full_widths())
    agent = make_agent("random", space, budget)
    with pytest.raises(RuntimeError, match="without a pending"):
        agent.observe(Feedback(space.full_widths(), 1.0, 1, False))
    w = agent.propose(None)
    with pytest.raises(RuntimeError, match="called again"):
        agent.propose(None)
    with pytest.raises(RuntimeError, match="feedback is for widths"):
        agent.observe(Feedback(space.full_widths(), 1.0, 1, False))
    agent.observe(Feedback(w, 1.0, space.macs(w), True))
    assert agent.best().widths == w


def test_bad_options_and_budget(space):
    budget = 0.3 * space.macs(space.full_widths())
    with pytest.raises(UserError, match=r"unknown option 'max_trial_per_round' \(did you mean 'max_trials_per_round'"):
        make_agent("greedy", space, budget, max_trial_per_round=3)
    with pytest.raises(UserError, match="option 'lr' expects float, got 'fast'"):
        make_agent("rl", space, budget, lr="fast")
    with pytest.raises(UserError, match="below the smallest widths"):
        make_agent("random", space, 10)
    assert make_agent("rl", space, budget, lr=1).options["lr"] == 1.0


def test_unknown_agent_lists_available():
    with pytest.raises(UserError) as err:
        get_agent("gredy")
    msg = str(err.value)
    assert "did you mean 'greedy'" in msg and all(n in msg for n in BUILTINS) and "\n" not in msg


def test_available_builtins():
    rows = {r["name"]: r for r in available_agents()}
    for name in BUILTINS:
        assert rows[name]["source"] == "builtin" and rows[name]["description"]
    assert "max_trials_per_round=0" in rows["greedy"]["options"]


def test_invalid_proposal_from_plugin(space, registry):
    @register_agent("too_wide")
    class TooWide(Agent):
        description = "proposes a width that is not a choice"

        def ask(self, peer):
            return {**self.full, "g0": 999}

    agent = TooWide(space, 0.5 * space.macs(space.full_widths()))
    with pytest.raises(UserError, match="'too_wide' .*proposed invalid widths: .*g0=999"):
        agent.propose(None)
    with pytest.raises(UserError, match="already taken by builtin"):
        register_agent("greedy")(type("Other", (Agent,), {"description": "x"}))


# --------------------------------------------------------------------------- plugins

AGENT_FILE = '''
from ganprune.search.agent import Agent, register_agent

@register_agent("{name}")
class Smallest(Agent):
    """Always the smallest widths."""

    def ask(self, peer):
        return dict(self.smallest)
'''


def test_agent_from_file(tmp_path, space, registry):
    path = tmp_path / "my_agent.py"
    path.write_text(AGENT_FILE.format(name="smallest_file"))
    cls = get_agent("smallest_file", agent_file=path)
    assert get_agent(None, agent_file=path) is cls
    assert cls.description == "Always the smallest widths."
    agent = cls(space, 0.3 * space.macs(space.full_widths()))
    assert agent.propose(None) == {**{g.name: g.choices[0] for g in space.groups}}
    row = next(r for r in available_agents(agent_file=path) if r["name"] == "smallest_file")
    assert row["source"] == f"file {path}"


def test_bad_agent_files(tmp_path, registry):
    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n    pass\n")
    with pytest.raises(UserError, match=r"broken.py: syntax error at line 1"):
        get_agent("x", agent_file=broken)
    failing = tmp_path / "failing.py"
    failing.write_text("import no_such_module_here\n")
    with pytest.raises(UserError, match=r"failing.py: import failed \(ModuleNotFoundError"):
        get_agent("x", agent_file=failing)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(UserError, match="registers no agent"):
        get_agent(None, agent_file=empty)
    with pytest.raises(UserError, match="no such file"):
        get_agent("x", agent_file=tmp_path / "missing.py")


def _fake_distribution(root, name, entry, module_name, module_source):
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ganprune.agents]\n{entry}\n")
    (root / f"{module_name}.py").write_text(module_source)


def test_agent_from_entry_point(tmp_path, monkeypatch, space, registry):
    """A real installed-distribution layout on sys.path, discovered through importlib.metadata."""
    source = textwrap.dedent('''
        from ganprune.search.agent import Agent

        class Half(Agent):
            description = "uniform half widths"

            def ask(self, peer):
                return self.space.uniform(0.5)
        ''')
    _fake_distribution(tmp_path, "myplug", "half = myplug_agents:Half", "myplug_agents", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = get_agent("half")
    assert cls.name == "half"
    assert cls(space, space.macs(space.full_widths())).propose(None) == space.uniform(0.5)
    row = next(r for r in available_agents() if r["name"] == "half")
    assert row["source"] == "entry point half (myplug 0.1)"


def test_broken_entry_point(tmp_path, monkeypatch, registry):
    _fake_distribution(tmp_path, "badplug", "bad = badplug_agents:Missing", "badplug_agents", "X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"entry point bad \(badplug 0.1\) = badplug_agents:Missing failed to load "
                                        r"\(AttributeError"):
        get_agent("not_builtin")
    assert get_agent("greedy").name == "greedy"   # a broken plugin does not block the built-ins


def test_cli_lists_agents(tmp_path, capsys, registry):
    from ganprune.cli import main
    path = tmp_path / "cli_agent.py"
    path.write_text(AGENT_FILE.format(name="cli_file_agent"))
    assert main(["agents", "--agent-file", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("|")}
    for name in BUILTINS:
        assert "builtin" in lines[name]
    assert f"file {path}" in lines["cli_file_agent"]
    assert main(["agents", "--agent-file", str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err
