"""Does the search score predict quality after fine-tuning? Rank study and winners, side by side.

A gray→color Pix2Pix teacher (unet_64, ngf 32, 64², 3,000 steps, batch 4) is trained once on the embedded
demo photos (402 train crops) and cached; everything is judged on the 143 val crops, cut from photos that
training and search never see. For each G budget (25% and 10% of G's MACs):

1. **Rank study.** ``--candidates`` random G width sets at the budget (MACs within 1% of it; D at its
   uniform 50% widths), each fine-tuned identically (density recipe, ``--steps`` steps, ``--ft-seeds`` seeds averaged, from
   the teacher's inherited channels and from its supernet slice). Fidelity = PSNR of the fine-tuned G's val outputs to the teacher's
   (mean per image; ``--kid`` adds KID to the teacher's outputs). Every scorer scores every candidate
   *before* fine-tuning on the search split's calibration images; the table gives Kendall τ and
   Spearman ρ between each score and the fidelity, the PSNR of each scorer's pick, and its cost.
2. **Winners.** Per seed, the greedy G/D agents search with the density score (+ a density + L1 variant) and the supernet
   scorer; random search (same evaluations) and uniform widths (the largest uniform widths within the
   budget, then grown into it like every other method: equal MACs within 1%) are the baselines. Each
   winner is fine-tuned exactly like the candidates (a supernet winner from its slice) and scored on val.
   Mean ± std over ``--seeds``, beside best-of-N and median-of-N of the rank study.

    python benchmarks/bench_rank.py --quick --seeds 3   # 12 candidates, 2 fine-tune seeds, 120 steps (docs/benchmarks.md)
    python benchmarks/bench_rank.py --quick     # the same with 1 seed (teacher cached after the first run)
    python benchmarks/bench_rank.py             # 12 candidates, 300 steps, 3 seeds

Fine-tunes and supernets are cached in ``--out``: a rerun only computes what is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau, spearmanr

from _common import cached_teacher, fid_features, outputs
from ganprune.data.datasets import build_dataset
from ganprune.metrics.quality import fid_kid, psnr
from ganprune.train.trainer import finetune
from ganprune.search.setup import build_evaluator
from ganprune.scoring.candidates import calibration_batches, item_batches, recalibrate_batchnorm
from ganprune.search.finalists import Distiller
from ganprune.search.budget import fill_budget, uniform_widths
from ganprune.search.supernet import train_supernet
from ganprune.train.teacher import load_teacher

TEACHER = dict(size=64, arch="unet_64", ngf=32, ndf=32, steps=3000)   # batch 4 (``cached_teacher``)


def settings(quick: bool) -> dict:
    if quick:
        return dict(candidates=12, steps=120, ft_seeds=2, seeds=1, calib=32, supernet_steps=300, rounds=24,
                    budgets=(0.25, 0.10))
    return dict(candidates=12, steps=300, ft_seeds=2, seeds=3, calib=32, supernet_steps=1200, rounds=40,
                budgets=(0.25, 0.10))


def teacher_dir(out: str, teacher_steps: int) -> tuple[str, str]:
    """(demo data root, teacher folder): the benchmarks' teacher, trained once and cached under ``out``."""
    tdir = os.path.join(out, f"teacher_unet64_ngf{TEACHER['ngf']}_{teacher_steps}")
    data = cached_teacher(os.path.join(out, "gray2color_64"), tdir, task="gray2color", steps=teacher_steps,
                          **{k: TEACHER[k] for k in ("size", "arch", "ngf", "ndf")})
    return data, tdir


def prepare(out: str, teacher_steps: int):
    data, tdir = teacher_dir(out, teacher_steps)
    G, D, spec = load_teacher(tdir)
    return data, G, D, spec


def fingerprint(net) -> str:
    """A short hash of a network's weights: cached results are only reused for the same teacher."""
    h = hashlib.sha1()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- candidates

def random_at_budget(space, budget: float, rng: random.Random, tol: float = 0.01) -> dict:
    """Random widths whose MACs are within ``tol`` (relative) below ``budget``·full MACs."""
    full = space.macs(space.full_widths())
    target = budget * full
    for _ in range(10000):
        w = {g.name: rng.choice(list(g.choices)) for g in space.groups}
        names = [g.name for g in space.groups]
        while space.macs(w) > target:           # shrink random groups a choice at a time
            g = space.groups[names.index(rng.choice(names))]
            i = g.choices.index(w[g.name])
            if i > 0:
                w[g.name] = g.choices[i - 1]
            if all(w[x.name] == x.choices[0] for x in space.groups):
                break
        w = fill_budget(space, w, int(target))
        if target * (1 - tol) <= space.macs(w) <= target:
            return w
    raise SystemExit(f"no random widths within {tol:.0%} of {budget:.0%} MACs")


def uniform_at_budget(space, budget: float) -> dict:
    """What the search's own uniform row is: the widest uniform widths within the budget, grown into it."""
    return uniform_widths(space, int(budget * space.macs(space.full_widths())))


# --------------------------------------------------------------------------- fidelity

KID_IMAGES = 64   # --kid: KID to the teacher's outputs on the first this many val images, all in one subset


class Judge:
    """Fine-tunes candidates identically and measures them on val; results cached on disk."""

    def __init__(self, out, T_G, T_D, train, val, ev, steps, kid):
        self.out, self.T_G, self.T_D, self.train, self.val, self.ev = out, T_G, T_D, train, val, ev
        self.steps = steps
        _, self.val_B, self.teacher_val = outputs(T_G, val)
        self.teacher_feats = fid_features(self.teacher_val[:KID_IMAGES]) if kid else None
        self.cache_file = os.path.join(out, f"judged_{fingerprint(T_G)}.json")   # per teacher
        self.cache = json.load(open(self.cache_file)) if os.path.exists(self.cache_file) else {}

    def __call__(self, g_widths, d_widths, seed=0, supernet=None) -> dict:
        """Fine-tune from the teacher's inherited channels, or from the supernet slice when given."""
        key = _key(g_widths, d_widths, seed, self.steps, "inherit" if supernet is None else supernet.tag)
        if key in self.cache:
            return self.cache[key]
        saved, self.ev.supernet = self.ev.supernet, supernet
        g, d = self.ev.build_pair(g_widths, d_widths)
        self.ev.supernet = saved
        t = time.perf_counter()
        finetune(g, d, self.T_G, self.T_D, self.train, recipe="density", steps=self.steps, batch_size=4, seed=seed,
                 device="cpu", progress=False)
        fake = outputs(g, self.val)[2]
        row = {"psnr_teacher": float(psnr(fake, self.teacher_val).mean()), "ft_seconds": time.perf_counter() - t}
        if self.teacher_feats is not None:
            row["kid_teacher"] = fid_kid(self.teacher_feats, fid_features(fake[:KID_IMAGES]), fid=False)["kid_mean"]
        if os.path.exists(self.cache_file):   # merge: another run may share this cache
            self.cache.update(json.load(open(self.cache_file)))
        self.cache[key] = row
        tmp = f"{self.cache_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.cache, fh)
        os.replace(tmp, self.cache_file)
        return row


# --------------------------------------------------------------------------- scorers

def proxy_finetune_l1(ev, T_G, train, g_widths, d_widths, steps=30):
    """A short L1-to-teacher fine-tune of the inherited candidate, then its L1 on the calibration images."""
    g, _ = ev.build_pair(g_widths, d_widths)
    g.train().requires_grad_(True)
    opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(train), (4,), generator=gen).tolist()
        a = torch.stack([train[i]["A"] for i in idx])
        with torch.no_grad():
            t = T_G(a)
        loss = (g(a) - t).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    recalibrate_batchnorm(g, ev.cache.inputs)
    g.eval()
    with torch.no_grad():
        return float(sum((g(x) - y).abs().mean() for x, y in zip(ev.cache.inputs, ev.cache.outputs)) / len(ev.cache.inputs))


def score_all(evs, T_G, train, cands, d_widths, supernet, variants=None):
    """{scorer: [score per candidate]} (lower = better) and {scorer: seconds per candidate}; ``variants``:
    {label: evaluator} scored on the slices too (other embeddings, more calibration images)."""
    ev_recal, ev_teacher_bn = evs
    scores, cost = {}, {}

    def run(name, fn):
        t = time.perf_counter()
        scores[name] = [fn(w) for w in cands]
        cost[name] = (time.perf_counter() - t) / len(cands)

    def run_terms(names, ev):
        """One evaluation per candidate, several of its terms as scorers ({term: scorer name})."""
        t = time.perf_counter()
        metrics = [ev.score_pair(w, d_widths) for w in cands]
        for term, name in names.items():
            scores[name] = [m[term] for m in metrics]
            cost[name] = (time.perf_counter() - t) / len(cands)

    ev_recal.supernet = None
    run_terms({"density": "density, inherited + BN re-estimated (old default)",
               "l1": "L1 to teacher, inherited + BN re-estimated"}, ev_recal)
    run("density, inherited + teacher BN", lambda w: ev_teacher_bn.score_pair(w, d_widths)["density"])
    run("params (more = better)", lambda w: -ev_recal.g_space.params(w))
    run("proxy fine-tune 30 steps, L1", lambda w: proxy_finetune_l1(ev_recal, T_G, train, w, d_widths))
    ev_recal.use_supernet(supernet)
    run_terms({"density": "supernet slice, density", "l1": "supernet slice, L1 to teacher"}, ev_recal)
    for label, other in (variants or {}).items():
        other.use_supernet(supernet)
        run(f"supernet slice, density, {label}", lambda w: other.score_pair(w, d_widths)["density"])
        other.supernet = None
    ev_recal.refine = Distiller(T_G, train, steps=60, seed=0)   # what the search does to its finalists
    steps = ev_recal.refine.steps
    run_terms({"density": f"finalist score: slice + {steps} distillation steps, density",
               "l1": f"finalist score: slice + {steps} distillation steps, L1"}, ev_recal)
    ev_recal.refine = ev_recal.supernet = None
    return scores, cost


def calibration_study(T_G, T_D, data, common, ev, supernet, cands, d_widths, slice_fidelity, budget) -> pd.DataFrame:
    """τ of the slice density score against the from-slice fidelity for calibration sets of 16–128 images,
    the first n of the train split (the default) or n spread evenly over it (the split keeps each photo's
    crops together)."""
    split = build_dataset(data, mode="aligned", phase="train", flip=False)
    rows = []
    for n in (16, 32, 64, 128):
        for how, idx in (("first", list(range(n))), ("spread", [int(round(i * len(split) / n)) for i in range(n)])):
            other = build_evaluator(T_G, T_D, item_batches([split[i] for i in idx], 8, "train"), g_space=ev.g_space,
                                    d_space=ev.d_space, **common)
            other.use_supernet(supernet)
            score = [other.score_pair(w, d_widths)["density"] for w in cands]
            rows.append({"G budget": f"{budget:.0%}", "calibration images": f"{how} {n}",
                         "τ from slice": kendalltau(-np.array(score), slice_fidelity).statistic,
                         "pick PSNR from slice": slice_fidelity[int(np.argmin(score))]})
    return pd.DataFrame(rows)


def rank_table(scores, cost, fidelity, kid=None, slice_fidelity=None):
    """τ/ρ of each scorer against the fidelity after fine-tuning from the teacher's inherited channels and
    (when given) after fine-tuning from the candidates' supernet slices — what the pipeline does with a
    supernet — whichever weights the scorer itself looked at; the pick is judged the same two ways."""
    rows = []
    for name, s in scores.items():
        s = np.array(s)
        row = {"scorer": name}
        for label, fid in (("from teacher channels", fidelity), ("from slice", slice_fidelity)):
            if fid is None:
                continue
            fid = np.array(fid)
            row[f"τ {label}"] = kendalltau(-s, fid).statistic
            row[f"ρ {label}"] = spearmanr(-s, fid).statistic
            row[f"pick PSNR {label}"] = fid[int(np.argmin(s))]
        row["s / candidate"] = cost[name]
        if kid is not None:
            row["τ vs KID"] = kendalltau(-s, -np.array(kid)).statistic
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- winners

def searched(ev, budget, d_widths, agent, rounds, seed, distiller=None):
    """The G widths a search with ``agent`` picks (D held at ``d_widths`` by the uniform D-agent); with a
    ``distiller``, among its 4 finalists (the default search)."""
    from ganprune.search.agent import get_agent
    from ganprune.search.loop import search
    g_max = int(budget * ev.g_space.macs(ev.g_space.full_widths()))
    d_max = ev.d_space.macs(d_widths)
    g = get_agent(agent)(ev.g_space, g_max, seed=seed, role="G")
    d = get_agent("template")(ev.d_space, d_max, seed=seed + 1, role="D")
    result = search(ev, g, d, g_max, d_max, rounds=rounds, progress=False, finalists=4 if distiller else 0,
                    distiller=distiller)
    return result.best["g_widths"], result.best["d_widths"]


def winners(evs, supernet, judge, budget, d_widths, s, fidelity, train, variants=None) -> pd.DataFrame:
    """Each method's pick at ``budget``, fine-tuned like the rank-study candidates, per seed."""
    ev, ev_l1 = evs
    full = ev.g_space.macs(ev.g_space.full_widths())
    rows = []
    for seed in range(s["seeds"]):
        picks = {}
        picks["greedy agents, density score"] = searched(ev, budget, d_widths, "greedy", s["rounds"], seed) + (None,)
        picks["greedy agents, density + 10·L1 score"] = searched(ev_l1, budget, d_widths, "greedy", s["rounds"], seed) + (None,)
        picks["random search, density score"] = searched(ev, budget, d_widths, "random", s["rounds"], seed) + (None,)
        ev.use_supernet(supernet)
        gw, dw = searched(ev, budget, d_widths, "greedy", s["rounds"], seed)
        ev.supernet = None
        picks["greedy agents, supernet slice density, from slice"] = (gw, dw, supernet)
        ev.use_supernet(supernet)
        gw, dw = searched(ev, budget, d_widths, "greedy", s["rounds"], seed,
                          Distiller(judge.T_G, train, steps=60, seed=seed))
        ev.supernet = None
        picks["greedy agents + finalists, from slice"] = (gw, dw, supernet)
        for label, other in (variants or {}).items():
            if "calibration" in label:    # more calibration images: the same search, a steadier score
                other.use_supernet(supernet)
                gw, dw = searched(other, budget, d_widths, "greedy", s["rounds"], seed)
                other.supernet = None
                picks[f"greedy agents, supernet slice density, {label}, from slice"] = (gw, dw, supernet)
        ev.use_supernet(supernet)
        gw, dw = searched(ev, budget, d_widths, "random", s["rounds"], seed)
        ev.supernet = None
        picks["random search, supernet slice density, from slice"] = (gw, dw, supernet)
        uniform = uniform_at_budget(ev.g_space, budget)
        picks["uniform (filled to budget)"] = (uniform, d_widths, None)
        picks["uniform (filled to budget), from slice"] = (uniform, d_widths, supernet)
        for method, (gw, dw, start) in picks.items():
            r = judge(gw, dw, seed=seed, supernet=start)
            rows.append({"method": method, "seed": seed, "G MACs %": 100 * ev.g_space.macs(gw) / full, **r})
    df = pd.DataFrame(rows)
    agg = df.groupby("method", sort=False).agg(
        **{"G MACs %": ("G MACs %", "mean"), "PSNR to teacher": ("psnr_teacher", "mean"),
           "± std": ("psnr_teacher", "std")}).reset_index()
    agg.loc[len(agg)] = {"method": f"best of {len(fidelity)} random (rank study, seed 0)", "G MACs %": 100 * budget,
                         "PSNR to teacher": max(fidelity), "± std": float("nan")}
    agg.loc[len(agg)] = {"method": f"median of {len(fidelity)} random (rank study, seed 0)", "G MACs %": 100 * budget,
                         "PSNR to teacher": float(np.median(fidelity)), "± std": float("nan")}
    agg.insert(0, "G budget", f"{budget:.0%}")
    return agg, df


# --------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(os.environ.get("GANPRUNE_CACHE", "bench_out"), "rank"))
    p.add_argument("--candidates", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--teacher-steps", type=int, default=TEACHER["steps"])
    p.add_argument("--supernet-steps", type=int)
    p.add_argument("--supernet-pool", type=int, default=0,
                   help="random slices drawn from a seeded pool of this many width sets (0: a fresh draw each step)")
    p.add_argument("--ft-seeds", type=int, help="fine-tune every rank-study candidate with this many seeds; "
                   "fidelity = their mean, and seed 0 vs seed 1 gives the noise ceiling of any scorer's τ")
    p.add_argument("--budgets", help="G MACs budgets, comma-separated (default 0.25,0.10)")
    p.add_argument("--kid", action="store_true", help=f"also KID to the teacher's outputs ({KID_IMAGES} val images)")
    p.add_argument("--skip-winners", action="store_true")
    p.add_argument("--skip-rank", action="store_true", help="winners only (the rank study's fine-tunes must be cached)")
    p.add_argument("--calib-study", action="store_true", help="also τ of the slice score for calibration sets of "
                   "16-128 images, first n vs spread over the split")
    args = p.parse_args(argv)
    s = settings(args.quick)
    for k in ("candidates", "steps", "seeds", "supernet_steps", "ft_seeds"):
        if getattr(args, k):
            s[k] = getattr(args, k)
    if args.budgets:
        s["budgets"] = tuple(float(b) for b in args.budgets.split(","))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    began = time.perf_counter()
    data, T_G, T_D, spec = prepare(args.out, args.teacher_steps)
    train = build_dataset(data, mode="aligned", phase="train")
    val = build_dataset(data, mode="aligned", phase="val")
    batches = calibration_batches(data, "train", n_images=s["calib"], batch_size=8)
    common = dict(g_spec=spec["G"], d_spec=spec["D"], l1_weight=0.0)
    ev = build_evaluator(T_G, T_D, batches, **common)
    ev_teacher_bn = build_evaluator(T_G, T_D, batches, g_space=ev.g_space, d_space=ev.d_space, recalibrate_bn=False,
                                    **common)
    ev_l1 = build_evaluator(T_G, T_D, batches, g_space=ev.g_space, d_space=ev.d_space,
                            **{**common, "l1_weight": 10.0})
    variants = {  # the cheaper alternatives the issue asked for, scored on the same slices
        "teacher-D features": build_evaluator(T_G, T_D, batches, g_space=ev.g_space, d_space=ev.d_space,
                                              **{**common, "embedding": "teacher_d"}),
        f"{2 * s['calib']} calibration images": build_evaluator(
            T_G, T_D, calibration_batches(data, "train", n_images=2 * s["calib"], batch_size=8), g_space=ev.g_space,
            d_space=ev.d_space, **common)}
    judge = Judge(args.out, T_G, T_D, train, val, ev, s["steps"], args.kid)
    val_set_psnr = float(psnr(judge.teacher_val, judge.val_B).mean())
    print(f"teacher: PSNR to ground truth on {len(val)} val images {val_set_psnr:.2f} dB")
    d_widths = ev.d_space.uniform(0.5)

    t = time.perf_counter()
    sn_dir = os.path.join(args.out, f"supernet_{s['supernet_steps']}"
                          + (f"_pool{args.supernet_pool}" if args.supernet_pool else ""))
    supernet = train_supernet(T_G, ev.g_space, train, sn_dir, steps=s["supernet_steps"], batch_size=4,
                              ranking=ev.g_ranking, device="cpu", max_macs=0.3,   # 1.2 × the largest budget studied
                              pool=args.supernet_pool)
    sn_seconds = time.perf_counter() - t
    supernet.tag = f"supernet{s['supernet_steps']}" + (f"_pool{args.supernet_pool}" if args.supernet_pool else "")
    print(f"supernet: {s['supernet_steps']} steps, {sn_seconds:.0f} s this run")

    tables, wins = [], []
    for budget in s["budgets"]:
        rng = random.Random(int(budget * 1000))
        cands = [random_at_budget(ev.g_space, budget, rng) for _ in range(s["candidates"])]
        seeds = range(s["ft_seeds"])
        judged = [[judge(w, d_widths, seed=k) for k in seeds] for w in cands]
        sliced = [[judge(w, d_widths, seed=k, supernet=supernet) for k in seeds] for w in cands]
        fidelity = [float(np.mean([j["psnr_teacher"] for j in js])) for js in judged]
        slice_fidelity = [float(np.mean([j["psnr_teacher"] for j in js])) for js in sliced]
        kid = [float(np.mean([j["kid_teacher"] for j in js])) for js in judged] if args.kid else None
        scores, cost = (({}, {}) if args.skip_rank else
                        score_all((ev, ev_teacher_bn), T_G, train, cands, d_widths, supernet, variants))
        table = rank_table(scores, cost, fidelity, kid, slice_fidelity)
        if len(seeds) > 1:   # the ceiling: how well one fine-tune seed's result ranks another's
            row = {"scorer": "fine-tune seed 0 result (noise ceiling vs seed 1)"}
            for label, runs in (("from teacher channels", judged), ("from slice", sliced)):
                a, b = [r[0]["psnr_teacher"] for r in runs], [r[1]["psnr_teacher"] for r in runs]
                row[f"τ {label}"], row[f"ρ {label}"] = kendalltau(a, b).statistic, spearmanr(a, b).statistic
            table.loc[len(table)] = row
        table.insert(0, "G budget", f"{budget:.0%}")
        tables.append(table)
        print(f"\n{budget:.0%} G MACs: {len(cands)} candidates after {s['steps']} fine-tuning steps: PSNR to teacher "
              f"best {max(fidelity):.2f}, median {np.median(fidelity):.2f}, worst {min(fidelity):.2f} from the teacher's "
              f"channels; best {max(slice_fidelity):.2f}, median {np.median(slice_fidelity):.2f}, worst "
              f"{min(slice_fidelity):.2f} from supernet slices")
        print(table.drop(columns="G budget").to_markdown(index=False, floatfmt=".3g"))
        if args.calib_study:
            study = calibration_study(T_G, T_D, data, common, ev, supernet, cands, d_widths, slice_fidelity, budget)
            print(study.drop(columns="G budget").to_markdown(index=False, floatfmt=".3g"))
        if not args.skip_winners:
            win, per_seed = winners((ev, ev_l1), supernet, judge, budget, d_widths, s, fidelity, train, variants)
            wins.append(win)
            per_seed.to_csv(os.path.join(args.out, f"winners_per_seed_{int(budget * 100)}.csv"), index=False)
            print(f"\nwinners at {budget:.0%} G MACs, {s['steps']} fine-tuning steps, {s['seeds']} seed(s):")
            print(win.drop(columns="G budget").to_markdown(index=False, floatfmt=".3g"))
    if not args.skip_rank:
        pd.concat(tables).to_csv(os.path.join(args.out, "rank.csv"), index=False)
    if wins:
        pd.concat(wins).to_csv(os.path.join(args.out, "winners.csv"), index=False)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
