"""A weight-sharing supernet of the generator: every candidate width set is a slice of one set of weights.

Why: a candidate scored with weights merely inherited from the teacher says little about what it reaches
after fine-tuning (rank benchmark, docs/benchmarks.md). GAN Compression's
answer (its "once-for-all" network) is to train shared weights once, by distillation from the teacher,
while sampling a different width set every step, so that every slice already works; a slice's score then
reflects what fine-tuning will reach, and the winner's fine-tune starts from its slice.

How it fits our search space and physical pruning:

* The supernet has the teacher's architecture and widths and starts from the teacher's weights.
* A slice keeps, in every coupled channel group, the first ``k`` channels of the group's *importance order*
  (ranked once on the teacher, ``prune.channel_ranking``) — the same channels ``prune(..., ranking=...)``
  keeps. So ``Supernet.extract(widths)`` is simply the supernet pruned physically, and the differentiable
  slice used in training (``Supernet.forward``) gathers exactly those weights: for each width set, a probe
  net whose every tensor holds its own element indices is pruned once, and the surviving values are the
  indices to gather (cached per width set). The two agree to float tolerance (tested).
* Each training step uses the sandwich rule (largest + smallest + random slices, gradients accumulated):
  the smallest slice keeps the small ones trainable, the largest keeps the teacher's quality.
* BatchNorm statistics differ per slice; the slices train in batch-statistics mode and a slice is
  recalibrated on calibration images before it is scored or exported (``scoring.recalibrate_batchnorm``).

``train_supernet`` runs on the fine-tuning trainer (``SupernetRecipe``: the supernet is the student, the
slices' losses are its generator loss in parts), so it gets the trainer's device handling, AMP, DDP, NaN
recovery and exact resumption: data order and slice sampling are functions of (seed, step). GAN Compression
trains its supernet with the adversarial loss too: ``lambda_gan`` > 0 (``SupernetGANRecipe``) trains a copy of
the teacher's D against the slices, saved and resumed with the rest. The length is a step count or a time
budget ("20min"): a few steps are timed first, and the resulting count is recorded so a resumed run trains
the same number of steps.
"""
from __future__ import annotations

import copy
import os
import random
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ganprune.core.errors import UserError
from ganprune.core.io import atomic_torch_save, atomic_write_yaml
from ganprune.core.options import check_steps, duration_seconds, read_yaml
from ganprune.core.timing import duration
from ganprune.train.common import write_log
from ganprune.train.losses import GANLoss
from ganprune.train.outputs import RunFiles
from ganprune.train.recipe import Recipe

STATE_FILE, WEIGHTS_FILE = "supernet_state.pt", "supernet_G.pt"


class Supernet(nn.Module):
    """The shared weights (``net``, the teacher's architecture) and width-set slices of them. A module, so that
    the trainer trains it as the student: ``supernet(x)`` is the full net, ``supernet(x, widths)`` a slice."""

    def __init__(self, teacher_G: nn.Module, space, example_input: torch.Tensor, ranking: dict[str, list[int]],
                 cache_size: int = 256):
        super().__init__()
        self.net = copy.deepcopy(teacher_G)
        for p in self.net.parameters():
            p.requires_grad_(True)
        self.space, self.ranking = space, ranking
        self.example = example_input[:1].detach()
        self._maps: OrderedDict[tuple, tuple[nn.Module, dict[str, torch.Tensor]]] = OrderedDict()
        self.cache_size = cache_size

    # ----------------------------------------------------------------------- slices

    def _key(self, widths) -> tuple:
        widths = self.space.validate(widths)
        return tuple(widths[name] for name in self.space.names)

    def _slice_map(self, widths):
        """(skeleton, {tensor name: per-dimension kept indices}) for ``widths``, cached. The skeleton is the
        pruned module with its float tensors on the meta device (the values always come from the shared
        weights), and a slice is a product of per-dimension index sets, so a cached slice costs
        O(channels), not O(weights): 64 pooled slices of a unet_256 would otherwise hold gigabytes."""
        key = self._key(widths)
        if key in self._maps:
            self._maps.move_to_end(key)
            return self._maps[key]
        from ganprune.pruning.physical import prune
        probe = copy.deepcopy(self.net).double()
        with torch.no_grad():
            for t in list(probe.parameters()) + list(probe.buffers()):
                if t.is_floating_point():
                    t.copy_(torch.arange(t.numel(), dtype=torch.float64).view_as(t))
        device = next(self.net.parameters()).device
        pruned = prune(probe, dict(zip(self.space.names, key)), self.example.double().to(device), ranking=self.ranking)
        dtype = next(self.net.parameters()).dtype
        full = self.net.state_dict()
        index = {name: _per_dim_index(t.round().long(), full[name].shape, device)
                 for name, t in pruned.state_dict().items() if t.is_floating_point()}
        skeleton = pruned.to(dtype)
        for module in skeleton.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None and t.is_floating_point():
                        store[name] = torch.empty(t.shape, dtype=t.dtype, device="meta")
        for p in skeleton.parameters():
            p.requires_grad_(False)
        self._maps[key] = (skeleton, index)
        if len(self._maps) > self.cache_size:
            self._maps.popitem(last=False)
        return skeleton, index

    def tensors(self, widths) -> dict[str, torch.Tensor]:
        """The slice's parameters and float buffers, gathered from the shared ones (differentiable)."""
        _, index = self._slice_map(widths)
        shared = dict(self.net.named_parameters())
        shared.update(dict(self.net.named_buffers()))
        out = {}
        for name, dims in index.items():
            t = shared[name]
            for d, idx in enumerate(dims):
                if idx is not None:
                    t = t.index_select(d, idx)
            out[name] = t
        return out

    def module(self, widths, batch_stats: bool = False) -> nn.Module:
        """An ``nn.Module`` view of one slice whose forward runs on the shared weights (for losses that take
        a generator, e.g. the density objective). ``batch_stats`` keeps BatchNorm on batch statistics even
        when the caller switches the module to eval mode (a slice has no statistics of its own yet)."""
        return _SliceView(self, widths, batch_stats)

    def forward(self, x: torch.Tensor, widths=None) -> torch.Tensor:
        """The slice's output on the shared weights (the full net without ``widths``), in the supernet's mode."""
        if widths is None:
            return self.net(x)
        return self.module(widths).train(self.net.training)(x)

    def extract(self, widths) -> nn.Module:
        """The slice as an ordinary physically pruned network (a copy; ``prune`` of the shared weights)."""
        from ganprune.pruning.physical import prune
        device = next(self.net.parameters()).device
        return prune(self.net, self.space.validate(widths), self.example.to(device), ranking=self.ranking)

    # ----------------------------------------------------------------------- sampling

    def sample(self, rng: random.Random, which: str, max_macs: float | None = None) -> dict[str, int]:
        """``largest`` (the teacher's widths), ``smallest`` (every group at its narrowest allowed width) or
        ``random`` (each group's width drawn uniformly from its allowed widths; with ``max_macs``, a
        fraction of the full MACs, redrawn until it fits, else shrunk group by group at random until it does:
        capacity goes to the sizes the search will consider)."""
        if which == "largest":
            return self.space.full_widths()
        if which == "smallest":
            return {g.name: min(g.choices) for g in self.space.groups}
        if which != "random":
            raise UserError(f"supernet sample: expected largest, smallest or random, got {which!r}")
        limit = None if max_macs is None else max_macs * self.space.macs(self.space.full_widths())
        for _ in range(20):
            widths = {g.name: rng.choice(list(g.choices)) for g in self.space.groups}
            if limit is None or self.space.macs(widths) <= limit:
                return widths
        shrinkable = [g for g in self.space.groups]
        while self.space.macs(widths) > limit and shrinkable:
            g = rng.choice(shrinkable)
            i = g.choices.index(widths[g.name])
            if i == 0:
                shrinkable.remove(g)
            else:
                widths[g.name] = g.choices[i - 1]
        return widths


class _SliceView(nn.Module):
    def __init__(self, supernet: Supernet, widths, batch_stats: bool):
        super().__init__()
        self._widths, self._batch_stats = widths, batch_stats
        self.__dict__["_supernet"] = supernet   # not a submodule: the view's mode must not switch the supernet

    def forward(self, x):
        skeleton, _ = self._supernet._slice_map(self._widths)
        skeleton.train(self.training)
        if self._batch_stats:
            for m in skeleton.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        return functional_call(skeleton, self._supernet.tensors(self._widths), (x,))


# --------------------------------------------------------------------------- training

def _per_dim_index(flat: torch.Tensor, full_shape, device) -> list[torch.Tensor | None]:
    """The kept indices along each dimension of a channel-pruned tensor, from the flat indices (into the
    full tensor) that a probe's surviving elements hold; None where the dimension is kept whole. Checked
    once: the product of the per-dimension sets must give back exactly those flat indices."""
    full_shape = tuple(full_shape)
    strides = [int(np.prod(full_shape[d + 1:])) for d in range(len(full_shape))]
    dims, rebuilt = [], torch.zeros((), dtype=torch.long)
    for d, size in enumerate(full_shape):
        line = flat[tuple(slice(None) if k == d else 0 for k in range(flat.dim()))]
        coord = (line // strides[d]) % size
        shape = [1] * flat.dim()
        shape[d] = -1
        rebuilt = rebuilt + (coord * strides[d]).view(shape)
        dims.append(None if torch.equal(coord, torch.arange(size)) else coord.to(device))
    if not torch.equal(rebuilt.expand_as(flat), flat):
        raise RuntimeError("supernet: a pruned tensor is not a per-dimension selection of the full one")
    return dims


def _ranking_key(ranking: dict) -> str:
    import hashlib
    import json
    plain = {str(k): [int(i) for i in v] for k, v in ranking.items()}
    return hashlib.sha1(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def _rng(*keys: int) -> random.Random:
    """A Python RNG seeded from non-negative integers (a step's slices are a function of seed and step)."""
    return random.Random(int(np.random.SeedSequence([*keys, 17]).generate_state(1)[0]))


SANDWICH = ("largest", "smallest", "random", "random")


class SupernetRecipe(Recipe):
    """The trainer's recipe for a ``Supernet`` student: per step, one batch and one slice per ``sandwich``
    entry, each slice's loss ``lambda_l1·|slice(A) − T(A)|₁ + lambda_density·density(slice)`` back-propagated
    in turn (gradients summed, one Adam step). Random slices come from a pool of ``pool`` width sets drawn
    once (0: a fresh draw every step), capped at ``max_macs`` (a fraction of G's MACs; None: uncapped).
    Slices are a function of the trainer's seed and the step, as the data are, so resuming stays exact."""

    name = "supernet"
    OPTIONS = {"lambda_l1": 1.0, "lambda_density": 0.0, "m": 4, "sandwich": SANDWICH, "max_macs": None, "pool": 64}
    uses_D = False

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if not isinstance(self.student_G, Supernet):
            raise UserError(f"recipe 'supernet': trains a Supernet, got {type(self.student_G).__name__}")
        o = self.options
        self.seed = int(torch.randint(2**62, ()))   # the trainer seeds the global RNG before building a recipe
        pool_rng = _rng(self.seed, 1)
        self.pool = [self.student_G.sample(pool_rng, "random", o["max_macs"]) for _ in range(o["pool"])]
        self.objective = None
        if o["lambda_density"]:
            from ganprune.scoring.objective import LocalDensityObjective
            self.objective = LocalDensityObjective(self.teacher_G, m=o["m"], seed=0)

    @classmethod
    def validate(cls, options: dict) -> None:
        super().validate(options)
        bad = [w for w in options["sandwich"] if w not in ("largest", "smallest", "random")]
        if bad or not options["sandwich"]:
            raise UserError(f"supernet sandwich: expected a list of largest, smallest and random, got "
                            f"{list(options['sandwich'])!r}")
        cap = options["max_macs"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap <= 1):
            raise UserError(f"supernet max_macs: expected a fraction of G's MACs in (0, 1] or None, got {cap!r}")
        if options["pool"] < 0 or options["m"] < 2:
            raise UserError(f"supernet: expected pool >= 0 and m >= 2, got pool {options['pool']}, m {options['m']}")

    def forward(self, batch: dict) -> dict:
        return {"A": batch["A"], "target": self.teacher_output(batch["A"])}

    def slices(self) -> list[tuple[int, str, dict]]:
        """This step's ``(position, sandwich entry, widths)``: a function of the seed and the step."""
        o, rng = self.options, _rng(self.seed, 0, self.step)
        return [(i, which, rng.choice(self.pool) if which == "random" and self.pool
                 else self.student_G.sample(rng, which, o["max_macs"])) for i, which in enumerate(o["sandwich"])]

    def generator_loss(self, out: dict):
        o, supernet = self.options, self.student_G
        for i, which, widths in self.slices():
            fake = supernet(out["A"], widths)
            l1 = self.l1(fake, out["target"])
            loss, logs = o["lambda_l1"] * l1, {f"L1_{i}_{which}": l1.detach()}
            if self.objective is not None:
                view = supernet.module(widths, batch_stats=True)
                density = self.objective(view, reference=self.objective.reference(out["A"], index=self.step))
                loss = loss + o["lambda_density"] * density
                logs[f"density_{i}_{which}"] = density.detach()
            if self.uses_D:
                adv = self.adversarial(self.student_D, out["A"], fake)
                loss = loss + o["lambda_gan"] * adv
                logs[f"G_adv_{i}_{which}"] = adv.detach()
            yield loss, logs


class SupernetGANRecipe(SupernetRecipe):
    """``SupernetRecipe`` plus the adversarial term GAN Compression trains its supernet with: the trainer's
    student D (a copy of the teacher's D) learns real ``B`` against every slice's output, and each slice's loss
    adds ``lambda_gan·GAN(D(slice(A)) → real)`` (``gan_mode``: the loss the teacher was trained with). A class
    of its own, so that the L1-only supernet keeps its options (its saved runs stay resumable) and ``uses_D``
    stays a fact of the class, as the trainer reads it."""

    name = "supernet_gan"
    OPTIONS = {**SupernetRecipe.OPTIONS, "lambda_gan": 0.01, "gan_mode": "vanilla"}
    uses_D = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gan = GANLoss(self.options["gan_mode"])

    def forward(self, batch: dict) -> dict:
        if "B" not in batch:
            raise UserError("supernet lambda_gan: the discriminator learns from real B images; the data have none")
        return {**super().forward(batch), "B": batch["B"]}

    def discriminator_loss(self, out: dict):
        """½(D(B) → real + the mean over this step's slices of D(slice(A)) → fake), in parts (one per slice).
        The slices' outputs are made again here, without gradients: the generator phase comes after."""
        D, a, slices = self.student_D, out["A"], self.slices()
        real = self.gan(D(self.d_input(D, a, out["B"])), True)
        yield 0.5 * real, {"D_real": real.detach()}
        for i, which, widths in slices:
            with torch.no_grad():
                fake = self.student_G(a, widths)
            loss = self.gan(D(self.d_input(D, a, fake)), False)
            yield 0.5 * loss / len(slices), {f"D_fake_{i}_{which}": loss.detach()}


class SupernetFiles(RunFiles):
    """``supernet_state.pt`` (the trainer's state), ``supernet_G.pt`` (the shared weights as the teacher's plain
    state dict), ``supernet_log.csv`` and, for a time budget, ``supernet_budget.yaml`` (the budget, the step
    count it became and the timed pace)."""

    FILES = {"G": WEIGHTS_FILE, "state": STATE_FILE, "log": "supernet_log.csv", "budget": "supernet_budget.yaml"}
    label = "supernet"

    def upgrade(self, state):
        if isinstance(state, dict) and {"settings", "net", "opt"} <= set(state):
            raise UserError(f"{self.path('state')}: a supernet trained before it ran on the trainer; remove "
                            f"{self.out} to train it again")
        return state

    def prepare(self, G, D, first, conditional_D) -> None:
        pass

    def write(self, state: dict, G, D) -> None:
        atomic_torch_save(state, self.path("state"))
        atomic_torch_save({k.removeprefix("net."): v for k, v in state["nets"]["G"].items()}, self.path("G"))
        write_log(self.path("log"), state["log"])
        self.last_state = state


def train_supernet(teacher_G: nn.Module, space, dataset, out=None, *, steps, batch_size: int = 4,
                   lr: float = 2e-4, lambda_l1: float = 1.0, lambda_density: float = 0.0, m: int = 4,
                   sandwich: tuple[str, ...] = SANDWICH, max_macs: float | None = None, pool: int = 64,
                   lambda_gan: float = 0.0, teacher_D: nn.Module | None = None, conditional_D: bool | None = None,
                   gan_mode: str | None = None, ranking: dict | None = None, seed: int = 0, device="auto",
                   save_every: int = 200, progress: bool = True) -> Supernet:
    """Distil ``teacher_G`` into a supernet over ``space`` on ``dataset`` (items with ``"A"``, a search split):
    the trainer (``ganprune.train.trainer.finetune``: device, AMP, DDP, NaN recovery, exact resume) runs
    ``SupernetRecipe`` for ``steps`` steps at a constant ``lr``. ``lambda_density`` > 0 adds the density
    objective (the teacher's neighbourhoods, ``m`` per input; off by default: see the README's rank
    benchmark). ``lambda_gan`` > 0 adds the adversarial term (``SupernetGANRecipe``): a copy of ``teacher_D``
    is trained against the slices (``conditional_D``: whether it sees cat(A, image); None: read from D);
    ``gan_mode`` None is the loss the teacher was trained with: pix2pix's for paired data, CycleGAN's for
    unpaired. ``steps`` is a count or a duration ("90s", "20min", "1.5h"): a few steps are timed first and
    the budget (counted from this call: setup and timing too) becomes a count, recorded in ``out`` for
    resuming (another budget later is timed again and continues the run to its own count, as a larger count
    does). With ``progress``, one line says the steps and the time they should take before training starts.
    With ``out``, the run is resumable there (``SupernetFiles``)."""
    from ganprune.pruning.physical import channel_ranking
    from ganprune.train.trainer import finetune

    began = time.perf_counter()
    steps = check_steps(steps, "supernet steps")
    budget = duration_seconds(steps)
    if budget is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"supernet steps {steps!r}: a time budget is timed in one process; under torchrun give a "
                        "step count")
    if lambda_gan and teacher_D is None:
        raise UserError("supernet lambda_gan: the adversarial term trains a copy of the teacher's discriminator; "
                        "give teacher_D (--discriminator) or set it to 0")
    if len(dataset) == 0:
        raise UserError("supernet: no training images in the search split")
    if len(dataset) < batch_size:   # a tiny but valid data set: every batch is the whole set
        if progress:
            print(f"supernet: {len(dataset)} training image(s), fewer than batch_size {batch_size}: batches of "
                  f"{len(dataset)}", flush=True)
        batch_size = len(dataset)
    item = dataset[0]
    first = item["A"].unsqueeze(0).to(next(teacher_G.parameters()).device)
    teacher_G.eval()
    ranking = ranking if ranking is not None else channel_ranking(teacher_G, first)
    supernet = Supernet(teacher_G, space, first, ranking)
    settings = {"widths_key": [[g.name, list(g.choices)] for g in space.groups],
                "ranking_key": _ranking_key(ranking)}   # which channels a slice keeps: another ranking, another net
    options = {"lambda_l1": lambda_l1, "lambda_density": lambda_density, "m": m, "sandwich": tuple(sandwich),
               "max_macs": max_macs, "pool": pool}
    recipe, D, d_spec = SupernetRecipe, None, None
    if lambda_gan:
        from ganprune.train.recipes.cyclegan import CycleGAN
        from ganprune.train.recipes.pix2pix import Pix2Pix
        paired = "A_path" not in item   # as the trainer tells them apart
        recipe, D = SupernetGANRecipe, Recipe.trainable_copy(teacher_D)
        teachers_loss = (Pix2Pix if paired else CycleGAN).OPTIONS["gan_mode"]
        options.update(lambda_gan=lambda_gan, gan_mode=gan_mode or teachers_loss)
        d_spec = {"conditional": bool(conditional_D)} if conditional_D is not None else None
    files = SupernetFiles(out) if out is not None else None
    saved = files.read_state() if files is not None else None
    done = int(saved["step"]) if saved else 0
    target = steps
    if budget is not None and files is not None and files.path("budget").is_file():
        recorded = read_yaml(files.path("budget"), "supernet budget")
        if isinstance(recorded, dict) and recorded.get("given") == steps and isinstance(recorded.get("steps"), int):
            target = recorded["steps"]   # the count this budget was given when the run began
    say = progress and int(os.environ.get("WORLD_SIZE", "1")) == 1   # (each rank would time, and say it)
    if isinstance(target, str) or (say and target > done):
        ahead = None if isinstance(target, str) else range(done, target)
        pace, timed = _time_steps(recipe, supernet, D, teacher_G, dataset, options, batch_size, lr, seed, device,
                                  d_spec, ahead)
        if isinstance(target, str):   # the budget counts from this call: setup and timing included
            target = max(1, int((budget - (time.perf_counter() - began)) // pace))
            if files is not None:   # a resumed run trains this many (another budget: timed again, as a new count)
                os.makedirs(files.out, exist_ok=True)
                atomic_write_yaml(files.path("budget"), {"given": steps, "steps": target, "s_per_step": pace})
        if say and target > done:
            print(f"supernet: {target} steps, about {duration(pace * (target - done))} ({pace:.3g} s/step timed on "
                  f"{timed} steps)" + (f", resuming at step {done}" if done else ""), flush=True)
    finetune(supernet, D, teacher_G, None, dataset, recipe=recipe, steps=target, batch_size=batch_size,
             lr=lr, decay_from=1.0, seed=seed, device=device, save_every=save_every, recipe_options=options,
             progress=progress, files=files, settings=settings, d_spec=d_spec)
    return supernet.eval()


def _time_steps(recipe, supernet, D, teacher_G, dataset, options, batch_size, lr, seed, device, d_spec,
                ahead: range | None, timed: int = 3) -> tuple[float, int]:
    """``(seconds per step, steps timed)``: the trainer's step on this supernet, timed on
    ``timed`` steps after one warm-up step, once the pool's slices they use are built, and those the run will
    use in the steps ``ahead`` (None: the whole pool), which it would build once each anyway, and keeps: so the
    pace is the run's. The nets' weights and the RNG are put back after, so the run that follows is the one it
    would have been without the timing."""
    from ganprune.core.device import make_grad_scaler, pick_device, resolve_precision
    from ganprune.core.options import FINETUNE_RUN, defaults
    from ganprune.models.registry import conditional_d
    from ganprune.train.common import StepBatches, step_loader
    from ganprune.train.trainer import build_phases, train_step

    dev = pick_device(device)
    prec = resolve_precision(dev, defaults(FINETUNE_RUN)["precision"])
    nets = [n for n in (supernet, D) if n is not None]
    kept = [copy.deepcopy(n.state_dict()) for n in nets]
    item = dataset[0]
    conditional = conditional_d(d_spec, D, item["A"].shape[0], item["B"].shape[0]) if D is not None else False
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        teacher_G.to(dev).eval()
        for n in nets:
            n.to(dev).train()
        torch.manual_seed(seed)   # as the trainer does before building its recipe: the same pool
        rec = recipe(supernet, D, teacher_G, None, "A_path" not in item, options, conditional_D=conditional)
        if rec.pool:   # (without a pool every step draws new slices and builds them: the timed steps too)
            needed = {}
            for step in [*range(timed + 1), *(ahead if ahead is not None else ())]:
                rec.step = step
                needed.update((supernet._key(w), w) for _, _, w in rec.slices())
                if len(needed) >= len(rec.pool) + 2:
                    break
            for widths in [*needed.values(), *(rec.pool if ahead is None else ())]:
                supernet._slice_map(widths)
        _, phases, trainables = build_phases(rec, lr)
        scaler = make_grad_scaler(dev, prec)
        loader = step_loader(dataset, StepBatches(len(dataset), batch_size, seed, 0, timed + 1), seed, 0)
        seconds = []
        try:
            for step, batch in enumerate(loader):
                rec.step, rec.steps = step, timed + 1
                batch = {k: v.to(dev) for k, v in batch.items() if torch.is_tensor(v)}
                t0 = time.perf_counter()
                losses, _ = train_step(rec, phases, trainables, scaler, batch, dev, prec)
                float(sum(losses.values()))   # waits for the device
                seconds.append(time.perf_counter() - t0)
        finally:
            rec.close()
            for n, state in zip(nets, kept):
                n.load_state_dict(state)
    return sum(seconds[1:]) / timed, timed
