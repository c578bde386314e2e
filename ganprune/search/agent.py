"""The pruning-agent protocol, the agent registry, and plugin discovery.

An agent searches channel widths for ONE network (role ``"G"`` or ``"D"``) under a budget (MACs, or
predicted latency in ms: a ``ganprune.search.budget.Budget``; agents see only ``self.cost`` and ``self.limit``). The
search loop drives it with a strict alternation, one evaluation per step::

    widths = agent.propose(peer)     # peer: the OTHER agent's latest evaluated Feedback (or None)
    agent.observe(Feedback(widths, score, macs, feasible, metrics))

Subclasses implement two hooks, ``ask(peer) -> widths`` and ``tell(feedback)``; the public
``propose``/``observe`` around them validate the widths, keep the history and the best feasible result,
and record a transcript. Why hooks rather than overriding ``propose``/``observe``: a plugin cannot
forget the bookkeeping, and every agent gets resume and a determinism check for free.

Resume is by replay: an agent must be a deterministic function of (seed, options, the sequence of peers
and feedback it was given). So agents draw randomness only from their own ``self.rng`` (seeded from
``seed`` and ``role``) and never from numpy/torch/random global state. ``state_dict()`` is that
transcript as plain data; ``load_state_dict()`` replays it into a fresh agent and checks that the replay
proposes exactly what was recorded.

Agents come from three places, all registered with ``@register_agent("name")``: the built-in package
``ganprune.agents`` (the repository's ``agents/`` folder), installed distributions declaring entry points
in the group ``ganprune.agents`` (each pointing at an Agent subclass or at a module that registers
agents), and a Python file given as ``--agent-file my_agent.py``.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import os
import pkgutil
import re
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np

from ganprune.search.budget import Budget, widest_uniform
from ganprune.core.errors import UserError
from ganprune.core.guard import guarded_call
from ganprune.core.plugins import Registry, check_options

ENTRY_POINT_GROUP = "ganprune.agents"


# --------------------------------------------------------------------------- protocol

@dataclass
class Feedback:
    """The evaluated result of one proposal. ``score`` is a loss (lower is better); ``math.inf`` marks a
    failed candidate. ``feasible`` says whether the widths fit the budget; an over-budget candidate may
    still carry a real score (greedy shrinking relies on those scores when the loop provides them)."""
    widths: dict[str, int]
    score: float
    macs: int
    feasible: bool
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"widths": {k: int(v) for k, v in self.widths.items()}, "score": float(self.score),
                "macs": int(self.macs), "feasible": bool(self.feasible),
                "metrics": {k: v.item() if isinstance(v, np.generic) else v for k, v in self.metrics.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Feedback":
        return cls(widths={k: int(v) for k, v in d["widths"].items()}, score=float(d["score"]),
                   macs=int(d["macs"]), feasible=bool(d["feasible"]), metrics=dict(d.get("metrics") or {}))


class Agent:
    """Base class of pruning agents: subclass it, implement ``ask`` (and usually ``tell``), register it.

    Class attributes a subclass sets: ``description`` (one line for ``ganprune agents``) and
    ``OPTIONS`` (option name → default; the default's type is the option's type, checked by
    ``ganprune.core.plugins.check_options`` as for recipes and embeddings; ``option_defaults`` is its older
    name and still read). ``name`` is set
    by ``@register_agent``. Helpers for subclasses: ``self.rng`` (own numpy Generator), ``self.groups``
    (prunable groups), ``self.full``/``self.smallest`` (widths), ``self.cost()`` (cached; in the budget's
    unit, MACs or ms) and ``self.limit`` (the budget),
    ``self.is_feasible()``, ``self.step()``, ``self.fit_uniform()``, ``self.shrink_until_feasible()``.
    """
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}
    option_defaults: ClassVar[dict[str, Any]] = {}   # the older name of OPTIONS

    @classmethod
    def option_table(cls) -> dict[str, Any]:
        """The declared options and their defaults (``OPTIONS``, else the older ``option_defaults``)."""
        return dict(cls.OPTIONS or cls.option_defaults)

    def __init__(self, space, budget, seed: int = 0, role: str = "G", **options):
        self.space = space
        self.seed = int(seed)
        self.role = str(role)
        self.options = self._resolve_options(options)
        self.rng = np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), zlib.crc32(self.role.encode())])
        self.groups = [g for g in space.groups if len(g.choices) > 1]
        self.full = {g.name: int(g.full) for g in space.groups}
        self.smallest = {g.name: int(g.choices[0]) for g in space.groups}
        self._choices = {g.name: tuple(int(c) for c in g.choices) for g in space.groups}
        self._cost_cache: dict[tuple, float] = {}
        self.history: list[Feedback] = []
        self._best: Feedback | None = None
        self._pending: dict[str, int] | None = None
        self._events: list[dict] = []
        try:
            self.budget = budget if isinstance(budget, Budget) else Budget(space, budget, "MACs")
        except UserError as exc:
            raise UserError(f"agent {self.name!r} ({self.role}): {exc}") from None
        self.limit, unit = self.budget.limit, self.budget.unit
        if self.cost(self.smallest) > self.limit:
            raise UserError(f"agent {self.name!r} ({self.role}): budget {self.limit:.4g} {unit} is below the "
                            f"smallest widths of the search space ({self.cost(self.smallest):.4g} {unit}, "
                            f"{100 * self.cost(self.smallest) / self.cost(self.full):.1f}% of full); raise the budget")

    # ---------------------------------------------------------------- hooks for subclasses
    def ask(self, peer: Feedback | None) -> dict[str, int]:
        """Return the next widths to evaluate (one entry per group of the space)."""
        raise NotImplementedError(f"agent {type(self).__name__} must implement ask(peer)")

    def tell(self, feedback: Feedback) -> None:
        """Learn from the result of the last proposal (default: nothing beyond the base bookkeeping)."""

    def done(self) -> bool:
        """True when the agent has nothing better to try; the loop may stop asking it. If asked anyway
        it must still return valid widths."""
        return False

    def rounds_hint(self) -> int | None:
        """About how many evaluations this agent needs to reach the budget and refine (None: it proposes
        feasible widths from the start). A search given no ``rounds`` runs at least this many."""
        return None

    # ---------------------------------------------------------------- the protocol the loop calls
    def propose(self, peer: Feedback | None = None) -> dict[str, int]:
        """Next widths to evaluate, given the peer agent's latest evaluated proposal."""
        if self._pending is not None:
            raise RuntimeError(f"agent {self.name!r} ({self.role}): propose() called again before observe() "
                               "reported the previous proposal")
        widths = self.ask(peer)
        if not isinstance(widths, Mapping):
            raise UserError(f"agent {self.name!r} ({self.role}): ask() returned {type(widths).__name__}, expected "
                            "a dict of group name -> width")
        try:
            widths = {k: int(v) for k, v in self.space.validate(dict(widths)).items()}
        except UserError as exc:
            raise UserError(f"agent {self.name!r} ({self.role}) proposed invalid widths: {exc}") from None
        self._pending = widths
        self._events.append({"peer": None if peer is None else peer.to_dict(), "proposal": dict(widths)})
        return dict(widths)

    def observe(self, feedback: Feedback) -> None:
        """Report the evaluated result of this agent's last proposal."""
        if self._pending is None:
            raise RuntimeError(f"agent {self.name!r} ({self.role}): observe() without a pending proposal")
        if dict(feedback.widths) != self._pending:
            raise RuntimeError(f"agent {self.name!r} ({self.role}): feedback is for widths {feedback.widths}, "
                               f"but the pending proposal is {self._pending}")
        self._pending = None
        self._events.append({"feedback": feedback.to_dict()})
        self.history.append(feedback)
        if feedback.feasible and math.isfinite(feedback.score) and (
                self._best is None or feedback.score < self._best.score):
            self._best = feedback
        self.tell(feedback)

    def best(self) -> Feedback | None:
        """The best (lowest-score) feasible result observed so far."""
        return self._best

    def state_dict(self) -> dict:
        """Plain-data transcript (peers, proposals, feedback) from which ``load_state_dict`` rebuilds the
        agent by replay."""
        return {"agent": self.name, "role": self.role, "seed": self.seed, "budget": self.limit,
                "unit": self.budget.unit,
                "options": dict(self.options), "events": [dict(e) for e in self._events]}

    def load_state_dict(self, state: dict) -> None:
        """Replay a transcript into this fresh agent; fails if the settings differ or the replay diverges."""
        if self._events:
            raise RuntimeError(f"agent {self.name!r}: load_state_dict needs a freshly constructed agent")
        mine = {"agent": self.name, "role": self.role, "seed": self.seed, "budget": self.limit,
                "unit": self.budget.unit,
                "options": dict(self.options)}
        for key, value in mine.items():
            if state.get(key) != value:
                raise UserError(f"cannot resume agent {self.name!r} ({self.role}): the saved state has "
                                f"{key}={state.get(key)!r} but this run has {key}={value!r}")
        for i, event in enumerate(state["events"]):
            if "proposal" in event:
                peer = None if event["peer"] is None else Feedback.from_dict(event["peer"])
                got = self.propose(peer)
                if got != {k: int(v) for k, v in event["proposal"].items()}:
                    raise RuntimeError(f"agent {self.name!r} is not deterministic: replayed proposal at event "
                                       f"{i} is {got}, the recorded one was {event['proposal']}")
            else:
                self.observe(Feedback.from_dict(event["feedback"]))

    # ---------------------------------------------------------------- helpers for subclasses
    def choices(self, group: str) -> tuple[int, ...]:
        return self._choices[group]

    def cost(self, widths: dict[str, int]) -> float:
        """The widths' cost in the budget's unit (MACs or predicted ms), cached."""
        key = tuple(sorted(widths.items()))
        if key not in self._cost_cache:
            self._cost_cache[key] = self.budget.cost(widths)
        return self._cost_cache[key]

    def is_feasible(self, widths: dict[str, int]) -> bool:
        return self.cost(widths) <= self.limit

    def step(self, widths: dict[str, int], group: str, steps: int) -> dict[str, int]:
        """``widths`` with ``group`` moved ``steps`` choices up (positive) or down (negative), clipped."""
        choices = self._choices[group]
        i = min(max(choices.index(widths[group]) + steps, 0), len(choices) - 1)
        return {**widths, group: choices[i]}

    def fit_uniform(self) -> dict[str, int]:
        """The widest uniformly scaled widths (``space.uniform``) within the budget, by bisection on the
        fraction; the smallest widths when even a tiny fraction is over budget (``budget.widest_uniform``)."""
        return widest_uniform(self.space, self.budget)

    def shrink_until_feasible(self, widths: dict[str, int], choose: Callable[[dict, list[str]], str]
                              ) -> dict[str, int]:
        """Step groups down one choice at a time until the budget holds; ``choose(widths, candidates)``
        picks which group to shrink. Always terminates: the smallest widths are feasible (checked at init)."""
        widths = dict(widths)
        while not self.is_feasible(widths):
            candidates = [g.name for g in self.groups if widths[g.name] > self.smallest[g.name]]
            widths = self.step(widths, choose(widths, candidates), -1)
        return widths

    def _resolve_options(self, given: dict) -> dict:
        return check_options(f"agent {self.name!r}", given, self.option_table())


# --------------------------------------------------------------------------- registry

AGENTS = Registry("agent")
_loading_source: list[str] = []          # set while a plugin file / entry point is being imported
_loaded_files: dict[str, tuple[int, list[str]]] = {}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def register_agent(name: str):
    """Class decorator: make an ``Agent`` subclass available as ``name``."""
    def deco(cls):
        where = cls.__module__ + "." + cls.__qualname__
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise UserError(f"@register_agent({name!r}) decorates {where}, which is not a "
                            "ganprune.search.agent.Agent subclass")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"{where}: agent name {name!r} must start with a letter and use letters, digits, _ . -")
        if not cls.description:
            doc = (cls.__doc__ or "").strip()
            if not doc:
                raise UserError(f"{where}: agent {name!r} needs a one-line `description` (or a docstring)")
            cls.description = doc.splitlines()[0]
        source = _loading_source[-1] if _loading_source else (
            "builtin" if cls.__module__.startswith("ganprune.agents.") else f"module {cls.__module__}")
        AGENTS.add(name, cls, source)   # refuses a name taken by another class, naming both sources
        cls.name = name
        return cls
    return deco


@contextmanager
def _source(label: str):
    _loading_source.append(label)
    try:
        yield
    finally:
        _loading_source.pop()


def _load_builtins() -> None:
    from ganprune.core.plugins import builtin_package
    package = builtin_package("agents")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def _entry_points() -> Iterable:
    try:
        return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python 3.9: entry_points() returns a dict of groups
        return importlib.metadata.entry_points().get(ENTRY_POINT_GROUP, [])


def _load_entry_points() -> None:
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        label = f"entry point {ep.name}" + (f" ({dist.name} {dist.version})" if dist is not None else "")
        try:
            with _source(label):
                obj = ep.load()
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{label} = {ep.value} failed to load ({type(exc).__name__}: {exc}); fix or "
                            "uninstall that package") from None
        if isinstance(obj, type) and issubclass(obj, Agent):
            if "name" not in vars(obj):  # not decorated: register it under the entry point's name
                with _source(label):
                    register_agent(ep.name)(obj)
        elif not isinstance(obj, type(sys)):
            raise UserError(f"{label} = {ep.value} is neither an Agent subclass nor a module that registers agents")


def load_agent_file(path) -> list[str]:
    """Import a Python file that registers agents; returns the names it registered."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise UserError(f"--agent-file {path}: no such file")
    mtime = os.stat(path).st_mtime_ns
    if path in _loaded_files and _loaded_files[path][0] == mtime:
        return list(_loaded_files[path][1])
    module_name = "ganprune_agent_file_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0]) + \
        f"_{zlib.crc32(path.encode()):08x}"
    before = {k: v for k, v in AGENTS.items()}
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with _source(f"file {path}"):
            spec.loader.exec_module(module)
    except UserError:
        sys.modules.pop(module_name, None)
        raise
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, SyntaxError):
            raise UserError(f"--agent-file {path}: syntax error at line {exc.lineno}: {exc.msg}") from None
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserError(f"--agent-file {path}: import failed ({type(exc).__name__}: {exc})") from None
    names = [n for n, cls in AGENTS.items() if cls.__module__ == module_name and before.get(n) is not cls]
    if not names:
        raise UserError(f"--agent-file {path}: registers no agent; decorate an Agent subclass with "
                        "@register_agent('name') (see agents/template.py)")
    _loaded_files[path] = (mtime, names)
    return names


def get_agent(name: str | None, agent_file=None) -> type[Agent]:
    """The agent class called ``name``; with only ``agent_file``, that file's single agent."""
    _load_builtins()
    from_file = load_agent_file(agent_file) if agent_file else []
    if name is None:
        if len(from_file) == 1:
            return AGENTS[from_file[0]]
        if from_file:
            raise UserError(f"--agent-file {agent_file} registers several agents ({', '.join(from_file)}); "
                            "choose one with --agent")
        raise UserError("no agent given; choose one with --agent (see `ganprune agents`)")
    if name not in AGENTS:
        _load_entry_points()
    return AGENTS.lookup(name, hint=" (add your own with --agent-file F.py or a 'ganprune.agents' entry point)")


def make_agent(name: str | None, space, budget, seed: int = 0, role: str = "G", agent_file=None,
               **options) -> Agent:
    """Look up an agent by name (see ``get_agent``) and construct it (a plugin's constructor runs guarded)."""
    cls = get_agent(name, agent_file)
    return guarded_call(f"{role}-agent {cls.name or cls.__name__}", "__init__", lambda: cls(
        space, budget, seed=seed, role=role, **options))


def call_agent(agent: Agent, role: str, what: str, fn: Callable, timeout: float | None = None):
    """``fn()``, a call into ``agent`` (plugin code), under the guard (``ganprune.core.guard.guarded_call``):
    any error is one line naming the agent and ``what``; ``timeout`` seconds at most (None/0: no limit)."""
    return guarded_call(f"{role}-agent {agent.name or type(agent).__name__}", what, fn, timeout)


def available_agents(agent_file=None) -> list[dict]:
    """Every discoverable agent as ``{name, source, description, options}``, built-ins first."""
    _load_builtins()
    if agent_file:
        load_agent_file(agent_file)
    _load_entry_points()
    order = {"builtin": 0, "entry": 1, "file": 2}
    rows = [{"name": n, "source": AGENTS.sources[n], "description": cls.description,
             "options": ", ".join(f"{k}={v}" for k, v in cls.option_table().items())}
            for n, cls in AGENTS.items()]
    return sorted(rows, key=lambda r: (order.get(r["source"].split()[0], 3), r["name"]))


__all__ = ["Feedback", "Agent", "register_agent", "get_agent", "make_agent", "call_agent", "available_agents",
           "load_agent_file", "AGENTS", "ENTRY_POINT_GROUP"]
