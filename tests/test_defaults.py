"""Each default once: a schema option that feeds a library function has the schema's default there too, or
none (a required keyword), so the command line, a config file and a Python caller get the same value.

A library function's defaults are those of the command that exposes it (``ganprune finetune`` for the
trainer, ``ganprune eval`` for ``evaluate``); another command that calls it (the pipeline) passes its own
values explicitly. The table below says which schema feeds which function, and how the caller turns option
names into keywords where they differ (``supernet_steps`` -> ``steps``); ``mismatches`` reads the
signatures, and a deliberately wrong table must be caught by it.
"""
import inspect
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

import ganprune
from ganprune.cli import COMMANDS, build_parser, main
from ganprune.cli.cmd_models import EVAL_DATA, EVAL_MODEL
from ganprune.cli.cmd_teacher import MAKE_DEMO
from ganprune.core import options as O
from ganprune.data.demo import make_demo
from ganprune.evaluation import evaluate, load_model
from ganprune.nni.experiment import run_experiment
from ganprune.nni.space import export_search_space
from ganprune.pipeline import finetune_pruned
from ganprune.search import finalists, loop, setup, supernet
from ganprune.train import teacher, trainer

build_parser()   # registers every command's schema in COMMANDS


def _schema(command):
    return COMMANDS[command][1]


def _supernet(o):
    return {"steps": o["supernet_steps"], "lambda_gan": o["supernet_lambda_gan"],
            **{k: o[k] for k in ("g_budget", "mode", "direction", "size", "phase", "seed")}}


# (what, schema, function, keywords): ``keywords(options)`` -> the keywords the caller passes (None: the
# options whose names are parameters of the function, passed by name).
TABLE = [
    ("finetune: data", O.FINETUNE_RUN, finetune_pruned, None),
    ("finetune: training", O.FINETUNE_RUN, trainer.finetune, None),
    ("train-teacher", O.TEACHER, teacher.train_teacher, None),
    ("search", O.SEARCH, setup.run_search, O.search_keywords),
    ("search: evaluator", O.SEARCH, setup.build_evaluator, O.evaluator_keywords),
    ("search: supernet", O.SEARCH, setup.attach_supernet, _supernet),
    ("search: supernet training", O.SEARCH, supernet.train_supernet,
     lambda o: {"steps": o["supernet_steps"], "lambda_gan": o["supernet_lambda_gan"], "seed": o["seed"]}),
    ("search: finalists", O.SEARCH, finalists.Distiller,
     lambda o: {"steps": o["finalist_steps"], "seed": o["seed"]}),
    ("search: loop", O.SEARCH, loop.search, None),
    ("eval: model", EVAL_MODEL, load_model, None),
    ("eval", EVAL_DATA, evaluate, None),
    ("data make-demo", MAKE_DEMO, make_demo, None),
    ("nni run", _schema("nni run"), run_experiment, None),
    ("nni space", _schema("nni space"), export_search_space, None),
    ("demo", _schema("demo"), teacher.demo_teacher, None),
]


def _same(a, b) -> bool:
    if isinstance(a, str) != isinstance(b, str):   # a budget: '0.25' and 0.25 are one budget
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def mismatches(table) -> list[str]:
    """One line per keyword whose signature default differs from the schema's, or that the function lacks."""
    found = []
    for what, schema, fn, keywords in table:
        params = inspect.signature(fn).parameters
        values = O.defaults(schema)
        passed = keywords(values) if keywords else {k: v for k, v in values.items() if k in params}
        if not passed:
            found.append(f"{what}: no option of the schema reaches {fn.__qualname__}")
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for name, value in passed.items():
            p = params.get(name)
            if p is None:
                if not open_ended:
                    found.append(f"{what}: {fn.__qualname__} has no parameter {name!r}")
            elif p.default is not p.empty and not _same(p.default, value):
                found.append(f"{what}: {fn.__qualname__}({name}={p.default!r}), the schema says {value!r}")
    return found


def test_signature_defaults_are_the_schema_defaults():
    assert mismatches(TABLE) == []


def test_a_wrong_table_is_caught():
    steps = next(o for o in O.FINETUNE_RUN if o.name == "steps")
    wrong_schema = (replace(steps, default=steps.default + 1),)

    def drifted(steps=1000, seed=0):   # a literal default that went its own way
        return steps, seed

    def narrow(seed=0):
        return seed

    found = mismatches([
        ("wrong default", wrong_schema, trainer.finetune, None),
        ("drifted", O.FINETUNE_RUN, drifted, None),
        ("renamed", O.SEARCH, narrow, lambda o: {"steps": o["supernet_steps"], "seed": o["seed"]}),
        ("unrelated", O.FINETUNE_RUN, lambda x: x, None),
    ])
    assert len(found) == 4, found
    assert "finetune(steps=10000), the schema says 10001" in found[0]
    assert "drifted(steps=1000), the schema says 10000" in found[1]
    assert "has no parameter 'steps'" in found[2]
    assert "no option of the schema reaches" in found[3]


def test_the_mismatches_fixed_here_stay_fixed():
    """The values the command line gave, now also the Python defaults (the disagreements found)."""
    sig = inspect.signature
    assert sig(trainer.finetune).parameters["steps"].default == 10000
    assert sig(trainer.finetune).parameters["eval_every"].default == 1000
    assert sig(setup.run_search).parameters["rounds"].default is None          # sized from the space
    for fn in (setup.attach_supernet, supernet.train_supernet, finalists.Distiller, loop.search):
        name = "rounds" if fn is loop.search else "steps"
        assert sig(fn).parameters[name].default is inspect.Parameter.empty, fn
    assert not hasattr(finalists, "DEFAULT_FINALISTS")


@pytest.mark.parametrize("group, functions", [
    (O.FINETUNE_RUN, (finetune_pruned, trainer.finetune)),   # finetune_pruned hands the rest to the trainer
    (EVAL_MODEL, (load_model,)), (EVAL_DATA, (evaluate,)), (MAKE_DEMO, (make_demo,))])
def test_a_group_a_command_passes_whole_is_all_keywords(group, functions):
    """A command passes these groups as ``**pick(args, group)``: each name must be a keyword there."""
    known = {name for fn in functions for name in inspect.signature(fn).parameters}
    assert [o.name for o in group if o.name not in known] == []


def test_shared_options_are_declared_once():
    """``Option("ngf", ...)`` and its kind appear once in the package; every command uses that declaration."""
    root = Path(ganprune.__file__).parent
    source = "\n".join(p.read_text(encoding="utf-8") for p in root.rglob("*.py"))
    shared = {o.name: o for o in (O.NGF, O.NDF, O.NORM, O.N_LAYERS_D, O.OUTPUT_NC, O.DIRECTION, O.LOAD_SIZE,
                                  O.CROP_SIZE, O.MODE, O.DEVICE, O.PRECISION, O.RECIPE)}
    for name in shared:
        assert len(re.findall(rf'Option\(\s*"{name}"', source)) == 1, name
    for command, (_, schema, _) in COMMANDS.items():
        for o in schema:
            if o.name in shared:
                assert (o.default, o.kind, o.choices, o.min) == (shared[o.name].default, shared[o.name].kind,
                                                                 shared[o.name].choices, shared[o.name].min), command


def test_the_commands_pass_their_options_by_name(tmp_path, monkeypatch):
    """`--no-resume`, `--no-dropout`, `--n-layers-d` and `--recipe-option` arrive under the library's names."""
    calls = {}
    monkeypatch.setattr(teacher, "train_teacher", lambda **kw: calls.setdefault("teacher", kw) and None)
    monkeypatch.setattr("ganprune.cli.cmd_teacher._teacher_summary", lambda r: "")
    assert main(["train-teacher", "--dataroot", str(tmp_path), "--out", str(tmp_path / "t"), "--no-dropout",
                 "--no-resume", "--n-layers-d", "4", "--steps", "7"]) == 0
    kw = calls["teacher"]
    assert kw == {**O.defaults(O.TEACHER), "dataroot": str(tmp_path), "out": str(tmp_path / "t"), "dropout": False,
                  "resume": False, "n_layers_d": 4, "steps": 7}

    import ganprune.pipeline
    import ganprune.train.pair
    monkeypatch.setattr(ganprune.train.pair, "pair_from_options", lambda o: (None, None, None, {"arch": "basic"}))

    def fake_finetune_pruned(*args, **kw):
        calls["finetune"] = (args, kw)
        raise SystemExit(0)   # the summary printing is not what this checks
    monkeypatch.setattr(ganprune.pipeline, "finetune_pruned", fake_finetune_pruned)
    with pytest.raises(SystemExit):
        main(["finetune", "--pruned-g", str(tmp_path / "g.pt"), "--dataroot", str(tmp_path), "--out",
              str(tmp_path / "f"), "--no-resume", "--recipe-option", "w=0.5"])
    args, kw = calls["finetune"]
    assert args == (str(tmp_path / "g.pt"), None, None, None, {"arch": "basic"})
    assert kw == {**O.defaults(O.FINETUNE_RUN), "dataroot": str(tmp_path), "out": str(tmp_path / "f"),
                  "resume": False, "recipe_options": {"w": 0.5}}
    assert kw["steps"] == inspect.signature(trainer.finetune).parameters["steps"].default
    assert os.listdir(tmp_path) == []   # nothing was written


def test_a_default_written_in_a_help_text_is_the_declared_one():
    """Help texts that spell their default out (most leave it to ``option_help``) say the declared value."""
    from ganprune.cli import option_help
    wrong = []
    for command, (_, schema, _) in COMMANDS.items():
        for o in schema:
            m = re.search(r"\(default:? ([^;:)]+?)[;)]", option_help(o))
            if m is None or o.default is None or o.kind == "flag":   # a flag's text says what "off" does
                continue
            said = m.group(1).strip()
            value = ("on" if o.default else "off") if isinstance(o.default, bool) else o.default
            if not (said == str(value) or _same(said, value)):
                wrong.append(f"{command} --{o.name}: help says {said!r}, default {o.default!r}")
    assert wrong == []
