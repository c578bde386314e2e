"""The README and docs/: a short README whose test command is CI's, links that resolve, and no measured
figures in `--help` texts (they drift there; they live in docs/benchmarks.md)."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md"))
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens (outside code blocks)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 150
    ci = [line for line in read(".ci/run").splitlines() if line.startswith("python3 -m pytest")]
    assert len(ci) == 1
    command = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("pip install"))
    assert command.split(" && ")[-1] == ci[0]


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    """Every relative link of a page names an existing file (and heading, given a #fragment). Image files are
    not checked here: they are generated outside the docs."""
    base = os.path.dirname(os.path.join(ROOT, page))
    for image, target in LINK.findall(read(page)):
        if image or re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        full = os.path.normpath(os.path.join(base, path)) if path else os.path.join(ROOT, page)
        assert os.path.exists(full), f"{page}: {target}"
        if fragment:
            assert full.endswith(".md") and fragment in anchors(open(full, encoding="utf-8").read()), \
                f"{page}: {target}"


def test_benchmarks_page_gives_a_command_for_every_benchmark_script():
    text = read("docs/benchmarks.md")
    for script in sorted(os.listdir(os.path.join(ROOT, "benchmarks"))):
        if script.endswith(".py"):
            assert f"benchmarks/{script}" in text, script


MEASURED = re.compile(r"\d\s?(?:s|sec|seconds|min|minutes|h|hours|dB|steps/s)\b|τ|[~≈]\s?\d|\d\s?[×x]\s+(?:faster|slower)")


def test_help_texts_carry_no_measured_figures():
    from ganprune.cli import COMMANDS, build_parser, option_help
    build_parser()
    texts = [(name, text) for name, (help_text, options, _) in COMMANDS.items()
             for text in (help_text, *map(option_help, options))]
    assert len(texts) > 100
    assert [t for t in texts if MEASURED.search(t[1])] == []
    assert MEASURED.search("no FID (about 45 s; 30 s with the teacher cached)")     # what the check catches
    assert MEASURED.search("the slow part: ~0.3 s per image") and not MEASURED.search("predicted latency like '12ms'")


def is_module(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:    # a name inside a module, not a submodule
        return False


def test_every_module_and_name_the_docs_mention_exists():
    import importlib
    names = sorted({m for page in PAGES for m in re.findall(r"\bganprune(?:\.\w+)+", read(page))})
    assert "ganprune.pruning.physical" in names and "ganprune.search.supernet" in names
    for name in names:
        parts = name.split(".")
        i = next(i for i in range(len(parts), 0, -1) if is_module(".".join(parts[:i])))
        obj = importlib.import_module(".".join(parts[:i]))
        for attr in parts[i:]:
            assert hasattr(obj, attr), name
            obj = getattr(obj, attr)
