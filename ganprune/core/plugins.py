"""Named plug-ins of one kind (recipes, generator/discriminator archs, dataset modes, ...) and their options.

One rule for every registry: a name taken by something else is refused, naming both sources (the same
class re-imported, e.g. a reloaded file, may replace itself); an unknown name is one line with a "did
you mean" and the known names. One rule for plug-in options: a mapping of option name → default, where
the default's type is the option's type (``check_options``).
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Mapping

from ganprune.core.errors import UserError


def _source(obj) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _same(a, b) -> bool:
    return a is b or (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == \
        (getattr(b, "__module__", None), getattr(b, "__qualname__", None)) != (None, None)


def did_you_mean(name, known) -> str:
    near = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


class Registry(dict):
    """``name → object`` for one ``kind`` of plug-in (a dict, so it reads like one)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.sources: dict[str, str] = {}

    def add(self, name: str, obj, source: str | None = None):
        source = source or _source(obj)
        old = self.get(name)
        if old is not None and not _same(old, obj):
            raise UserError(f"{self.kind} name {name!r} from {source} is already taken by "
                            f"{self.sources.get(name, _source(old))}; pick another name")
        self[name] = obj
        self.sources[name] = source
        return obj

    def register(self, name: str, source: str | None = None):
        """Decorator form of ``add``."""
        return lambda obj: self.add(name, obj, source)

    def lookup(self, name, hint: str = ""):
        """The object registered as ``name``; an unknown name is a ``UserError`` (``hint``: how to add one)."""
        if isinstance(name, str) and name in self:
            return self[name]
        raise UserError(f"unknown {self.kind} {name!r}{did_you_mean(name, self)}; expected one of "
                        f"{', '.join(sorted(self))}{hint}")


def check_options(owner: str, given: Mapping | None, defaults: Mapping[str, Any]) -> dict:
    """``defaults`` overlaid by ``given``, each value checked against its default's type: bools are bools,
    a float option takes any finite real, an int option an integer (or a whole float), a list/tuple option
    a list or tuple (kept as a tuple), a ``None`` default anything. ``owner`` names the plug-in in errors
    ("recipe 'gcc'")."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise UserError(f"{owner} options: expected a mapping, got {type(given).__name__}")
    unknown = sorted(map(str, set(given) - set(defaults)))
    if unknown:
        names = f"option {unknown[0]!r}" if len(unknown) == 1 else f"options {', '.join(map(repr, unknown))}"
        raise UserError(f"{owner}: unknown {names}{did_you_mean(unknown[0], defaults)}; "
                        f"known options: {', '.join(sorted(defaults)) or 'none'}")
    merged = dict(defaults)
    for key, value in given.items():
        merged[key] = _typed(owner, key, value, defaults[key])
    return merged


def _typed(owner: str, key: str, value, default):
    if default is None:
        return value
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = real and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = real and math.isfinite(value) and value == int(value)
        value = int(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{owner}: option {key!r} expects {type(default).__name__}, got {value!r} "
                        f"(default {default!r})")
    return value


def builtin_package(name: str):
    """``ganprune.<name>`` (``agents``, ``search_spaces``): the top-level folders of the repository that an
    install places inside the package (setup.cfg's ``package_dir``). Run from a source checkout after a plain
    ``pip install .``, Python finds the checkout's package folder first, which does not hold them: say so."""
    import importlib
    try:
        return importlib.import_module(f"ganprune.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"ganprune.{name}":
            raise
        raise UserError(f"ganprune.{name} not found: the source checkout's ganprune/ shadows the installed one; "
                        "run from outside the checkout, or install it editable (pip install -e .)") from None
