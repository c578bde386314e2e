"""One supernet, a family of budgets: train the weight-sharing supernet once, then search (or prune) per budget.

``g_budget`` given as several budgets (``25%,10%,5%``, or a YAML list) trains the supernet once, its random
slices capped for the largest MACs budget (uncapped when one is a latency), then runs one search per budget on
it. Layout: the supernet (and a G latency table) stays where a single-budget run keeps it (``OUT/supernet``
for ``ganprune search``, ``OUT/search/supernet`` for ``ganprune prune``); each budget's run goes in its own
folder ``OUT/g<budget>/``, the budget as spelled (``g25%``, ``g0.1``, ``g8ms``), laid out as a single-budget
run's ``OUT``; ``OUT/family.csv`` and ``family.md`` hold one row per budget. A supernet already trained there is
reused as it is, with the cap it was trained with, so a budget added later costs only its own search; a
single budget given to a folder that holds a family joins it.
"""
from __future__ import annotations

import math
import os
import time

from ganprune.core.errors import UserError
from ganprune.core.options import budget_list

FAMILY_CSV, FAMILY_MD = "family.csv", "family.md"


def budget_folder(budget) -> str:
    """The folder of one budget's run inside the family's output folder: ``g`` and the budget as spelled."""
    return "g" + "".join(str(budget).split())


def is_family(g_budget, out) -> bool:
    """Several budgets, or one given to a folder that holds a family already."""
    return isinstance(g_budget, (list, tuple)) or (bool(out) and os.path.isfile(os.path.join(out, FAMILY_CSV)))


def trained_cap(folder) -> tuple[bool, float | None]:
    """``(True, cap)`` for the supernet trained (or being trained) in ``folder``, its random slices' MACs cap
    (None: uncapped); ``(False, None)`` when there is none or its state cannot be read (the trainer says why)."""
    import torch

    from ganprune.search.supernet import STATE_FILE
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        return False, None
    try:   # mmap: only the small config is read, not the weights and optimiser state
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True, state["config"]["recipe_options"]["max_macs"]
    except Exception:   # noqa: BLE001 - an unreadable state is the trainer's to report, in one line
        return False, None


def prepare_family(o: dict, pair, home: str, *, log, progress: bool = True) -> dict:
    """Check every budget of ``o["g_budget"]`` (reachable, none twice) before anything costly runs, then train
    or reload the one supernet in ``home/supernet``. Returns ``latency_table`` (the G table every member
    shares), ``cap``, ``supernet`` (its folder, None without one), ``seconds`` (its training or loading this
    run) and ``full_macs`` (dense G)."""
    from ganprune.search.budget import latency_table, parse_budget
    from ganprune.search.setup import attach_supernet, check_reachable, prepare_from_options, supernet_cap
    G, D, g_spec, d_spec = pair
    budgets = budget_list(o["g_budget"])
    table_path = o["latency_table"] or os.path.join(home, "latency_G.yaml")
    o = {**o, "g_budget": budgets[0], "latency_table": table_path}
    steps = o["supernet_steps"]
    s = prepare_from_options(o, G, D, g_spec, d_spec, home, agents=False, evaluator=bool(steps), progress=progress)
    x = s.batches[0]["A"][:1]

    def table():
        return latency_table(G, s.g_space, x, table_path, o["latency_backend"], o["latency_threads"], progress)

    seen = {}
    for b in budgets:
        budget = parse_budget(b, s.g_space, table)
        check_reachable(budget, "G", f"g_budget {b!r}")
        key = (budget.unit, round(budget.limit, 6))
        if key in seen:
            raise UserError(f"g_budget: {b!r} and {seen[key]!r} are the same budget ({budget.describe()}); give "
                            "each once")
        seen[key] = b
    full = s.g_space.macs(s.g_space.full_widths())
    info = {"latency_table": table_path, "cap": None, "supernet": None, "seconds": 0.0, "full_macs": full,
            "steps": steps}
    if not steps:
        return info
    folder = os.path.join(home, "supernet")
    wanted = supernet_cap(s.g_space, budgets)
    trained, cap = trained_cap(folder)
    if not trained:
        cap = wanted
    elif (wanted is None and cap is not None) or (cap is not None and wanted > cap):
        log(f"family: reusing the supernet in {folder}, trained with random slices capped at {100 * cap:.1f}% of "
            f"G's MACs; this family would cap them at {_cap_text(wanted)}: above the cap only the full-width slice "
            "was trained, so its larger budgets are scored on less-trained slices (a supernet for them: another --out)")
    t0 = time.perf_counter()
    attach_supernet(s.evaluator, G, o["dataroot"], steps=steps, g_budget=budgets, mode=o["mode"],
                    direction=o["direction"], size=o["size"], phase=o["phase"], seed=o["seed"], progress=progress,
                    folder=folder, cap=cap, lambda_gan=o["supernet_lambda_gan"])
    info.update(cap=cap, supernet=folder, seconds=time.perf_counter() - t0)
    log(f"family: supernet in {folder} ({'reused' if trained else 'trained'}, {steps} steps, random slices "
        f"capped at {_cap_text(cap)}) shared by {len(budgets)} budget(s): {', '.join(map(str, budgets))}")
    return info


def _cap_text(cap) -> str:
    return "no cap (a latency budget)" if cap is None else f"{100 * cap:.1f}% of G's MACs"


def earlier_rows(out: str, key: str = "g_budget") -> list[dict]:
    """The rows of ``out/family.csv`` (none yet: []); a file that is not a family table is refused in one line."""
    import pandas as pd
    path = os.path.join(out, FAMILY_CSV)
    if not os.path.isfile(path):
        return []
    try:
        previous = pd.read_csv(path, dtype={key: str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: not a family table ({exc}); remove it to write a new one") from None
    if key not in previous.columns:
        raise UserError(f"{path}: not a family table (no {key} column); remove it to write a new one")
    return previous.to_dict("records")


def merge_rows(earlier: list[dict], rows: list[dict], key: str = "g_budget", size: str = "G MACs"):
    """This run's ``rows`` with the ``earlier`` rows (``earlier_rows``) of budgets not run now, largest ``size``
    first."""
    import pandas as pd
    mine = {str(r[key]) for r in rows}
    table = pd.DataFrame([r for r in earlier if str(r[key]) not in mine] + rows)
    if size not in table.columns:   # nothing measured yet
        return table
    return table.sort_values(size, ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def _rounds_scored(folder) -> int:
    """Agent rounds in ``folder/history.csv`` (0: none yet; -1: unreadable, which the search itself reports)."""
    import pandas as pd
    path = os.path.join(folder, "history.csv")
    try:
        return int((pd.read_csv(path)["phase"] == "search").sum()) if os.path.isfile(path) else 0
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return -1


def write_family(out: str, table, note: str) -> dict:
    """``out/family.csv`` and ``out/family.md`` (the table, then ``note``), written atomically."""
    from ganprune.core.io import atomic_write_text
    paths = {"family": os.path.join(out, FAMILY_CSV), "family_md": os.path.join(out, FAMILY_MD)}
    atomic_write_text(paths["family"], table.to_csv(index=False))
    atomic_write_text(paths["family_md"], table.to_markdown(index=False, floatfmt=".4g") + "\n\n" + note + "\n")
    return paths


def run_family_search(o: dict, out, pair=None, progress: bool = True):
    """``ganprune search`` for a family (``o``: resolved search options, ``g_budget`` one or several budgets;
    ``pair``: the teacher pair, default ``pair_from_options(o)``): the supernet once (``prepare_family``), then
    per budget ``run_search`` into ``out/g<budget>/`` (history.csv, widths.yaml, pareto.csv: resumable as a
    single search). Returns the family table (this run's budgets and the earlier ones of ``out``) and the
    per-budget results."""
    from ganprune.core.io import atomic_write_text
    from ganprune.core.options import search_keywords
    from ganprune.core.outdir import run_lock
    from ganprune.search.setup import run_search
    if not out:
        raise UserError("g_budget: several budgets need --out (each budget's results go in a folder of it)")
    out = os.fspath(out)
    if pair is None:
        from ganprune.train.pair import pair_from_options
        pair = pair_from_options(o)
    G, D, g_spec, d_spec = pair

    def log(message):
        if progress:
            print(message, flush=True)

    with run_lock(out):
        earlier = earlier_rows(out)   # a broken family.csv is refused before the supernet, not after the searches
        info = prepare_family(o, pair, out, log=log, progress=progress)
        rows, results, missing = [], {}, []
        seconds_before = {str(r["g_budget"]): r.get("seconds") for r in earlier}
        for b in budget_list(o["g_budget"]):
            sub = os.path.join(out, budget_folder(b))
            scored = _rounds_scored(sub)
            t0 = time.perf_counter()
            r = run_search(G, D, g_spec, d_spec, o["dataroot"], sub, progress=progress,
                           **{**search_keywords(o), "g_budget": b, "latency_table": info["latency_table"]},
                           supernet_dir=info["supernet"], supernet_cap=info["cap"])
            seconds = time.perf_counter() - t0
            if _rounds_scored(sub) == scored and seconds_before.get(str(b)) is not None:
                seconds = float(seconds_before[str(b)])   # replayed only: keep the time of the work
            atomic_write_text(os.path.join(sub, "pareto.csv"), r.pareto().to_csv(index=False))
            results[b] = r
            best = r.best
            if best is None:
                missing.append(str(b))
            rows.append({"g_budget": str(b), "G MACs": int(best["g_macs"]) if best else math.nan,
                         "G % of dense": 100 * best["g_macs"] / info["full_macs"] if best else math.nan,
                         "D MACs": int(best["d_macs"]) if best else math.nan,
                         "score": float(best["score"]) if best else math.nan, "rounds": len(r.history),
                         "seconds": round(seconds, 1),
                         "widths": os.path.join(budget_folder(b), "widths.yaml") if best else ""})
            log(f"family: g_budget {b}: " + (f"G {int(best['g_macs']):,} MACs, score {best['score']:.4g}"
                                             if best else "no pair met both budgets") + f" in {seconds:.1f} s")
        table = merge_rows(earlier, rows)
        note = (f"One supernet ({info['supernet']}, {info['steps']} steps, random slices capped at "
                f"{_cap_text(info['cap'])}) served every budget; it took {info['seconds']:.1f} s to train or load "
                "this run." if info["supernet"] else "No supernet (supernet_steps 0): each budget's candidates "
                "were scored with the teacher's weights.")
        note += (" seconds: wall time of the budget's search (setup, loading the supernet, the rounds) in the run "
                 "that scored its rounds (a later run that only replays its history.csv keeps that time).")
        paths = write_family(out, table, note)
    if missing:
        raise UserError(f"no candidate pair met both budgets for g_budget {', '.join(missing)} (see "
                        f"{paths['family_md']}); raise --rounds or loosen --g-budget/--d-budget")
    return table, results
