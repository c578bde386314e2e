"""Per-architecture width choices (YAML), installed as ``ganprune.search_spaces``.

One file per built-in arch (``unet_256.yaml`` ...; the schema is documented at the top of
``unet_256.yaml``). ``load`` returns the rules as plain data with defaults filled in, plus a label naming
where they came from, so that every later error can name the file and key. Group names are checked
against the model in ``ganprune.pruning.space`` (only it knows the model's groups).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import yaml

from ganprune.core.errors import UserError

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS: dict[str, Any] = {
    "min_width": 4,
    "round_to": 8,
    "fractions": [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0],
    "freeze": [],
    "groups": {},
}
GROUP_KEYS = ("fractions", "widths", "min_width", "round_to")


def available() -> list[str]:
    """Archs with a packaged search-space file."""
    return sorted(name[:-5] for name in os.listdir(HERE) if name.endswith(".yaml"))


def path_for(arch: str | None) -> str | None:
    """The packaged file for ``arch``, or None (bring-your-own nets use the defaults)."""
    if not arch or ":" in arch:
        return None
    path = os.path.join(HERE, f"{arch}.yaml")
    return path if os.path.isfile(path) else None


def load(arch: str | None = None, config=None) -> tuple[dict, str]:
    """Rules from ``config`` (a YAML path or a dict), else ``search_spaces/<arch>.yaml``, else defaults.

    Returns ``(rules, source)``; ``rules`` has every top-level key of ``DEFAULTS``."""
    if config is None:
        path = path_for(arch)
        if path is None:
            return _checked({}, "default search space"), "default search space"
        config = path
    if isinstance(config, Mapping):
        return _checked(config, "search space"), "search space"
    source = os.fspath(config)
    try:
        with open(source, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise UserError(f"{source}: cannot read search-space file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return _checked(data if data is not None else {}, source), source


def _checked(data, source: str) -> dict:
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: expected a mapping with keys {', '.join(DEFAULTS)}")
    for key in data:
        if key not in DEFAULTS:
            raise UserError(f"{source}: unknown key {key!r}; known keys: {', '.join(DEFAULTS)}")
    rules = {**DEFAULTS, **data}
    _positive_int(rules["min_width"], f"{source}: min_width")
    _positive_int(rules["round_to"], f"{source}: round_to")
    _fractions(rules["fractions"], f"{source}: fractions")
    freeze = rules["freeze"] if rules["freeze"] is not None else []
    if not isinstance(freeze, list) or not all(isinstance(n, str) for n in freeze):
        raise UserError(f"{source}: freeze: expected a list of group names")
    groups = rules["groups"] if rules["groups"] is not None else {}
    if not isinstance(groups, Mapping):
        raise UserError(f"{source}: groups: expected a mapping of group name to its rules")
    checked_groups = {}
    for name, entry in groups.items():
        where = f"{source}: groups.{name}"
        if not isinstance(entry, Mapping):
            raise UserError(f"{where}: expected a mapping with some of {', '.join(GROUP_KEYS)}")
        for key in entry:
            if key not in GROUP_KEYS:
                raise UserError(f"{where}.{key}: unknown key; known keys: {', '.join(GROUP_KEYS)}")
        if "fractions" in entry and "widths" in entry:
            raise UserError(f"{where}: give either fractions or widths, not both")
        if "fractions" in entry:
            _fractions(entry["fractions"], f"{where}.fractions")
        if "widths" in entry:
            widths = entry["widths"]
            if not isinstance(widths, list) or not widths:
                raise UserError(f"{where}.widths: expected a non-empty list of channel counts")
            for w in widths:
                _positive_int(w, f"{where}.widths")
        for key in ("min_width", "round_to"):
            if key in entry:
                _positive_int(entry[key], f"{where}.{key}")
        checked_groups[str(name)] = dict(entry)
    return {**rules, "freeze": list(freeze), "groups": checked_groups, "fractions": list(rules["fractions"])}


def _positive_int(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: expected a positive integer, got {value!r}")


def _fractions(values, where: str) -> None:
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: expected a non-empty list of numbers in (0, 1]")
    for f in values:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise UserError(f"{where}: expected numbers in (0, 1], got {f!r}")
