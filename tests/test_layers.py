"""The package's imports run one way, stage by stage: core → models/data → pruning → deploy → metrics → scoring →
train → search → evaluation → report → nni/pipeline → demo → cli. Checked on the source (every import statement,
function-local ones included) and by importing every library module with the CLI blocked."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

import ganprune

ROOT = pathlib.Path(ganprune.__file__).parent
ENTRY = ("ganprune.cli", "ganprune.__main__")   # the command line: on top, imported by nothing in the library

# The layers, lowest first: a module may import only modules of its own layer or below. Every module of the
# package belongs to one (a new subpackage or top-level module must be placed here, or the test fails).
TIERS = [
    ("ganprune.core",),                          # errors, files, options, plugins, threads, device, timing
    ("ganprune.models", "ganprune.data"),        # networks + checkpoints; datasets
    ("ganprune.pruning", "ganprune.search_spaces"),   # dependency graph, search space (+ its YAMLs), pruning
    ("ganprune.deploy",),                        # BN folding, ONNX export, edge runtimes
    ("ganprune.metrics",),                       # MACs, latency, image quality
    ("ganprune.scoring",),                       # density objective, candidate scores
    ("ganprune.train",),                         # one trainer, recipes, teacher, the dense pair
    ("ganprune.search", "ganprune.agents"),      # agent protocol (+ the built-in agents), budgets, supernet, loop
    ("ganprune.evaluation",),                    # final evaluation of trained generators
    ("ganprune.report",),                        # tables, plots, pictures
    ("ganprune.nni", "ganprune.pipeline"),       # the search as an NNI experiment; all stages in order
    ("ganprune.demo",),
    ENTRY,
]
LAYERS = {name: level for level, names in enumerate(TIERS) for name in names}
TOP_LEVEL_MODULES_MAX = 8   # beside the subpackages: the tree shows the stages, not a flat list of modules


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("ganprune",) + path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, known) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    # the package root re-exports the API: importing it is no arrow to any one module
    return {m for m in found if m in known and m not in (name, "ganprune")}


def _layer(module: str) -> int:
    if module == "ganprune":
        return LAYERS["ganprune.pipeline"]    # the package root lists the public API (run_pipeline included)
    while module != "ganprune":
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    raise AssertionError(f"{module} is in no layer")


def _graph():
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _in(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_sees_function_local_imports():
    graph = _graph()
    assert "ganprune.search.setup" in graph["ganprune.cli.cmd_search"]   # imported inside a function
    assert "ganprune.search.setup" in graph["ganprune.pipeline"]   # a top-level import


def test_no_library_module_imports_the_cli():
    bad = {m: sorted(i for i in imports if _in(i, ENTRY)) for m, imports in _graph().items() if not _in(m, ENTRY)}
    assert {m: i for m, i in bad.items() if i} == {}


def test_no_import_goes_up_a_layer():
    up = sorted(f"{m} -> {i}" for m, imports in _graph().items() for i in imports if _layer(i) > _layer(m))
    assert up == []


def test_no_import_cycle():
    graph, seen, cycles = _graph(), {}, []

    def visit(m, stack):
        seen[m] = "open"
        for i in sorted(graph[m]):
            if seen.get(i) == "open":
                cycles.append(stack[stack.index(i):] + [i])
            elif i not in seen:
                visit(i, stack + [i])
        seen[m] = "done"

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    assert cycles == []


def test_every_library_module_imports_with_the_cli_blocked():
    names = sorted(m for m in _modules() if not _in(m, ENTRY))
    code = ("import importlib, sys\nsys.modules['ganprune.cli'] = None\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\nprint(len({names!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) == len(names) > 40


def test_python_dash_m_ganprune_is_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ganprune", "archs", "--size", "0"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.strip() == "ganprune: error: --size must be >= 1 (got 0)"


def test_nni_and_pipeline_are_siblings():
    graph = _graph()
    across = [f"{m} -> {i}" for m, imports in graph.items() for i in imports
              if (_in(m, ["ganprune.nni"]) and _in(i, ["ganprune.pipeline", "ganprune.demo", "ganprune.report"]))
              or (_in(m, ["ganprune.pipeline", "ganprune.demo", "ganprune.report"]) and _in(i, ["ganprune.nni"]))]
    assert across == []


def test_no_symlinks_in_the_package():
    assert [p.name for p in ROOT.iterdir() if p.is_symlink()] == []


@pytest.mark.slow
def test_a_plain_install_carries_agents_and_search_spaces(tmp_path):
    """``pip install .`` (not editable) puts the top-level agents/ and search_spaces/ inside the package."""
    pytest.importorskip("setuptools")
    source = pathlib.Path(__file__).resolve().parents[1]
    if not (source / "setup.cfg").exists():
        pytest.skip("not a source checkout")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(tmp_path / "site"), str(source)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import ganprune, ganprune.agents.greedy, ganprune.search_spaces as s\n"
            "print(ganprune.__file__, ganprune.agents.greedy.__file__, s.path_for('unet_256'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    package = str(tmp_path / "site" / "ganprune")
    assert all(path.startswith(package) for path in r.stdout.split()), r.stdout


def test_one_registry_rule_for_recipes_archs_and_datasets():
    """Refuse a taken name naming both sources; "did you mean" for a near miss; the same class re-imported
    may replace itself."""
    from torch import nn

    from ganprune.data.datasets import DATASETS
    from ganprune.core.errors import UserError
    from ganprune.train.recipe import RECIPES, Recipe, register_recipe
    from ganprune.models.registry import GENERATORS, register_generator

    class Density(Recipe):
        pass

    with pytest.raises(UserError, match=r"recipe name 'density' from .*Density is already taken by "
                                        r"ganprune\.train\.recipes\.density\.Density"):
        register_recipe("density")(Density)

    def unet_64():
        return nn.Identity()

    with pytest.raises(UserError, match="generator arch name 'unet_64' from .*unet_64 is already taken"):
        register_generator("unet_64")(unet_64)
    with pytest.raises(UserError, match="unknown dataset mode 'unaligend' \\(did you mean 'unaligned'\\?\\)"):
        DATASETS.lookup("unaligend")
    with pytest.raises(UserError, match="unknown generator arch 'unet_65' \\(did you mean 'unet_64'\\?\\)"):
        GENERATORS.lookup("unet_65")
    with pytest.raises(UserError, match="unknown recipe 'dgll' \\(did you mean 'dgl'\\?\\)"):
        RECIPES.lookup("dgll")
    assert register_recipe("density")(RECIPES["density"]) is RECIPES["density"]   # the same class: fine


def test_agents_and_embeddings_share_the_registry_and_the_option_check():
    """Agents and embeddings use the same Registry (collision rule, did-you-mean) and the same option
    check (``plugins.check_options``) as recipes: one message shape for all three."""
    from ganprune.search.agent import AGENTS, Agent, get_agent, register_agent
    from ganprune.scoring.embeddings import EMBEDDINGS, build_embedding, register_embedding
    from ganprune.core.errors import UserError
    from ganprune.train.recipe import get_recipe
    from ganprune.core.plugins import Registry

    get_agent("greedy")
    assert isinstance(AGENTS, Registry) and isinstance(EMBEDDINGS, Registry)
    with pytest.raises(UserError, match=r"agent name 'greedy' from .* is already taken by builtin"):
        register_agent("greedy")(type("Other", (Agent,), {"description": "x"}))
    with pytest.raises(UserError, match=r"embedding name 'pixels' from .*_pixels2 is already taken by .*_pixels"):
        def _pixels2(size: int = 16):
            return None
        register_embedding("pixels")(_pixels2)
    with pytest.raises(UserError, match="unknown embedding 'pixel' \\(did you mean 'pixels'\\?\\)"):
        build_embedding("pixel")
    with pytest.raises(UserError, match="unknown agent 'gredy' \\(did you mean 'greedy'\\?\\)"):
        get_agent("gredy")
    # one option check: the same unknown-option and wrong-type messages for an agent, a recipe, an embedding
    with pytest.raises(UserError, match=r"^embedding 'pixels': unknown option 'sise' \(did you mean 'size'\?\)"):
        build_embedding("pixels", {"sise": 8})
    with pytest.raises(UserError, match=r"^recipe 'pix2pix': unknown option 'lambda_l2' \(did you mean 'lambda_l1'\?\)"):
        get_recipe("pix2pix").check_options({"lambda_l2": 1.0})
    with pytest.raises(UserError, match=r"^embedding 'pixels': option 'size' expects int, got 'big'"):
        build_embedding("pixels", {"size": "big"})
    with pytest.raises(UserError, match=r"^recipe 'pix2pix': option 'lambda_l1' expects float, got 'big'"):
        get_recipe("pix2pix").check_options({"lambda_l1": "big"})
    assert get_agent("random").option_table() == {"max_tries": 100}


def test_a_missing_plugin_folder_is_one_line_naming_the_fix():
    """From a source checkout after a plain install the checkout's ganprune/ shadows the installed one, which
    alone holds agents/ and search_spaces/: the user reads what to do, not an ImportError."""
    from ganprune.core.errors import UserError
    from ganprune.core.plugins import builtin_package
    assert builtin_package("agents").__name__ == "ganprune.agents"
    with pytest.raises(UserError, match=r"ganprune\.no_such_folder not found: .*pip install -e \."):
        builtin_package("no_such_folder")
