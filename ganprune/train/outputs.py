"""The folder a training run writes: one resumable state file plus the results people use.

Why separate from the trainer: the same loop writes two formats. Fine-tuning writes ``G.pt``/``D.pt``
(``save_pruned``: spec + widths travel along), ``state.pt`` and ``log.csv``; teacher training
(``ganprune.train.teacher.TeacherFiles``) writes the reference pix2pix layout. The trainer only calls
``read_state`` (every rank, when resuming), ``prepare``/``write`` (rank 0) and ``complete``.

The state is written first: it alone is enough to resume, so a kill between the writes loses nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.core.io import atomic_torch_save
from ganprune.models.checkpoint import safe_torch_load
from ganprune.train.common import write_log

STATE_KEYS = ("step", "config", "nets", "optimizers", "rng", "train_seconds", "log")


class RunFiles:
    """Fine-tuning's folder: ``G.pt``/``D.pt`` (``save_pruned`` format), ``state.pt``, ``log.csv``."""

    FILES = {"G": "G.pt", "D": "D.pt", "state": "state.pt", "log": "log.csv"}
    label = "finetune"

    def __init__(self, out, g_spec: dict | None = None, d_spec: dict | None = None):
        self.out = Path(out)
        self.specs = {"G": g_spec, "D": d_spec}
        self.infos: dict = {}
        self.last_state: dict | None = None

    def path(self, name: str) -> Path:
        return self.out / self.FILES[name]

    def paths(self) -> dict:
        return {name: str(self.out / f) for name, f in self.FILES.items()}

    # ----------------------------------------------------------------------- reading

    def read_state(self) -> dict | None:
        """The saved state to continue from (None: none here), refused if it is not a state of this kind."""
        path = self.path("state")
        if not path.is_file():
            return None
        state = self.upgrade(safe_torch_load(path))
        missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise UserError(f"{path}: not a {self.label} state (missing {', '.join(missing)}); use another out "
                            "folder or resume=False (--no-resume)")
        self.last_state = state
        return state

    def upgrade(self, state):
        """A state in an older layout, in the current one (nothing to do for fine-tuning)."""
        return state

    # ----------------------------------------------------------------------- writing

    def prepare(self, G: nn.Module, D: nn.Module, first: dict, conditional_D: bool) -> None:
        """Learn what ``save_pruned`` needs before training changes anything (rank 0 only)."""
        channels = first["A"].shape[0] + first["B"].shape[0] if conditional_D else first["B"].shape[0]
        d_example = torch.zeros(1, channels, *first["B"].shape[1:])
        d_spec, d_widths, d_shape = _save_info(D, self.specs["D"], d_example, "student_D")
        self.infos = {"G": _save_info(G, self.specs["G"], first["A"][None], "student_G"),
                      "D": ({**d_spec, "conditional": bool(conditional_D)}, d_widths, d_shape)}  # the fact travels

    def write(self, state: dict, G: nn.Module, D: nn.Module) -> None:
        from ganprune.pruning.physical import save_pruned
        atomic_torch_save(state, self.path("state"))
        for name, net in (("G", G), ("D", D)):
            save_pruned(self.path(name), net, *self.infos[name])
        write_log(self.path("log"), state["log"])
        self.last_state = state

    def complete(self) -> bool:
        """Whether the results are all there (a finished run whose files were removed writes them again)."""
        return self.path("G").is_file()


def _save_info(net: nn.Module, spec, example: torch.Tensor, what: str) -> tuple[dict, dict, list]:
    """(spec, widths, input_shape) that ``save_pruned`` needs; a dense net gets its full widths."""
    from ganprune.pruning.physical import PrunedInfo, prune, pruned_info
    info = pruned_info(net) or PrunedInfo()
    spec = spec or info.spec
    if spec is None:
        raise UserError(f"{what}: no build spec known; load it with load_pruned or pass {what[0].lower()}_spec="
                        "{'arch': ..., ...}")
    shape = info.input_shape or [1, *example.shape[1:]]
    widths = info.widths
    if widths is None:
        widths = pruned_info(prune(net, {}, torch.zeros(shape), importance="first")).widths
    return dict(spec), dict(widths), list(shape)
