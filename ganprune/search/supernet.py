"""A weight-sharing supernet of the generator: every candidate width set is a slice of one set of weights.

Why: a candidate scored with weights merely inherited from the teacher says little about what it reaches
after fine-tuning (measured: Kendall τ 0.27 between that score and post-fine-tune PSNR). GAN Compression's
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

``train_supernet`` is resumable (exactly, on the CPU): data order, slice sampling and weights are functions
of (seed, step) and the state file holds the weights, optimizer and step as plain tensors.
"""
from __future__ import annotations

import copy
import random
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ganprune.core.errors import UserError

STATE_FILE, WEIGHTS_FILE = "supernet_state.pt", "supernet_G.pt"
_RESUME_MUST_MATCH = ("batch_size", "lr", "lambda_l1", "lambda_density", "sandwich", "seed", "max_macs", "pool", "widths_key",
                      "ranking_key")


class Supernet:
    """The shared weights (``net``, the teacher's architecture) and width-set slices of them."""

    def __init__(self, teacher_G: nn.Module, space, example_input: torch.Tensor, ranking: dict[str, list[int]],
                 cache_size: int = 256):
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

    def forward(self, widths, x: torch.Tensor) -> torch.Tensor:
        """The slice's output on the shared weights, in the supernet's own train/eval mode."""
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
        self._supernet, self._widths, self._batch_stats = supernet, widths, batch_stats

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


def train_supernet(teacher_G: nn.Module, space, dataset, out=None, *, steps: int = 1000, batch_size: int = 4,
                   lr: float = 2e-4, lambda_l1: float = 1.0, lambda_density: float = 0.0, objective=None,
                   sandwich: tuple[str, ...] = ("largest", "smallest", "random", "random"),
                   max_macs: float | None = None, pool: int = 64, ranking: dict | None = None, seed: int = 0, device="auto", save_every: int = 200,
                   progress: bool = True) -> Supernet:
    """Distil ``teacher_G`` into a supernet over ``space`` on ``dataset`` (items with ``"A"``, a search split).

    Every step draws one batch and, for each entry of ``sandwich``, a width set; the loss of each slice is
    ``lambda_l1·|slice(A) − T(A)|₁ + lambda_density·objective(slice)`` (the density objective with the
    teacher's neighbourhoods; off by default: see the README's rank benchmark), gradients summed over the
    slices, one Adam step. ``max_macs`` (a fraction of G's MACs) caps the random slices, which are drawn from
    a seeded pool of ``pool`` width sets (each slice's gather indices are built once; 0: a fresh draw every
    step). With ``out``, the run is resumable and writes ``supernet_G.pt`` (the shared
    weights as a plain state dict) and ``supernet_state.pt``."""
    from ganprune.core.device import pick_device
    from ganprune.core.io import atomic_torch_save
    from ganprune.core.timing import Forecast
    from ganprune.models.checkpoint import safe_torch_load
    from ganprune.pruning.physical import channel_ranking
    from ganprune.train.common import SeededItems, StepBatches
    from ganprune.train.common import mix as _mix

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UserError(f"supernet steps: expected an integer >= 0, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"supernet batch_size: expected an integer >= 1, got {batch_size!r}")
    if lambda_density and objective is None:
        raise UserError("supernet lambda_density > 0 needs the density objective (objective=...)")
    if len(dataset) == 0:
        raise UserError("supernet: no training images in the search split")
    if len(dataset) < batch_size:   # a tiny but valid data set: every batch is the whole set
        if progress:
            print(f"supernet: {len(dataset)} training image(s), fewer than batch_size {batch_size}: batches of "
                  f"{len(dataset)}", flush=True)
        batch_size = len(dataset)
    dev = pick_device(device)
    teacher = teacher_G.to(dev).eval()
    first = dataset[0]["A"].unsqueeze(0).to(dev)
    ranking = ranking if ranking is not None else channel_ranking(teacher, first)
    supernet = Supernet(teacher, space, first, ranking)
    supernet.net.to(dev).train()
    opt = torch.optim.Adam(supernet.net.parameters(), lr=lr, betas=(0.5, 0.999))
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "lambda_l1": lambda_l1,
                "lambda_density": lambda_density, "sandwich": list(sandwich), "seed": seed, "max_macs": max_macs, "pool": pool,
                "widths_key": [[g.name, list(g.choices)] for g in space.groups],
                "ranking_key": _ranking_key(ranking)}   # which channels a slice keeps: another ranking, another net
    start_step = 0
    out = Path(out) if out is not None else None
    if out is not None and (out / STATE_FILE).is_file():
        state = safe_torch_load(out / STATE_FILE)
        for key in _RESUME_MUST_MATCH:
            if state["settings"].get(key) != settings[key]:
                raise UserError(f"{out / STATE_FILE}: was trained with {key}={state['settings'].get(key)!r}, "
                                f"now {settings[key]!r}; use another folder or the same settings")
        supernet.net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start_step = int(state["step"])

    def save(step):
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"settings": settings, "step": step, "net": supernet.net.state_dict(),
                           "opt": opt.state_dict()}, out / STATE_FILE)
        atomic_torch_save({k: v.detach().cpu() for k, v in supernet.net.state_dict().items()}, out / WEIGHTS_FILE)

    items = SeededItems(dataset)   # each item's augmentation is a function of its own seed
    batches = iter(StepBatches(len(dataset), batch_size, _mix(seed, 1), start_step, steps))
    pool_rng = _rng(seed, 1, 0)
    random_pool = [supernet.sample(pool_rng, "random", max_macs) for _ in range(pool)]
    began = time.perf_counter()
    bar = range(start_step, steps)
    forecast = Forecast("supernet", steps - start_step, enabled=progress)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc="supernet", initial=start_step, total=steps, leave=False)
    for step in bar:
        a = torch.stack([items[(i, s)]["A"] for i, s in next(batches)]).to(dev)
        with torch.no_grad():
            target = teacher(a)
        rng = _rng(seed, 0, step)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for which in sandwich:
            widths = (rng.choice(random_pool) if which == "random" and random_pool
                      else supernet.sample(rng, which, max_macs))
            loss = lambda_l1 * (supernet.forward(widths, a) - target).abs().mean()
            if lambda_density:
                view = supernet.module(widths, batch_stats=True)
                loss = loss + lambda_density * objective(view, reference=objective.reference(a, index=step))
            loss.backward()
            total += float(loss.detach())
        opt.step()
        forecast.tick()
        if progress:
            bar.set_postfix(loss=f"{total / len(sandwich):.4f}")
        if out is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
            save(step + 1)
    supernet.net.eval()
    supernet.train_seconds = time.perf_counter() - began
    return supernet
