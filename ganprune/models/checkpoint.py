"""Load reference-format Pix2Pix/CycleGAN checkpoints, safely.

Every file is read with ``torch.load(weights_only=True)``: a checkpoint that needs arbitrary objects
unpickled is refused, never executed. What is accepted: a plain state dict, a dict wrapping one
(``state_dict``, ``netG``, ``G``, ...), ``module.`` prefixes from DataParallel, and older checkpoints
whose affine-free InstanceNorm layers carry running statistics (dropped, as the reference loader does).
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.models.networks import init_weights
from ganprune.models.registry import allow_arch, build

_WRAPPER_KEYS = {
    "generator": ("state_dict", "model_state_dict", "netG", "G", "generator", "netG_A", "G_A", "model", "net"),
    "discriminator": ("state_dict", "model_state_dict", "netD", "D", "discriminator", "netD_A", "D_A", "model", "net"),
}
_INSTANCE_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def safe_torch_load(path) -> Any:
    """``torch.load`` restricted to tensors and plain containers, with one-line errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; the refusal says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: refused to load: not a tensors-only PyTorch checkpoint ({_unpickler_reason(exc)}); "
                        "files that need arbitrary Python objects unpickled could run code and are never executed") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:   # junk bytes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def _unpickler_reason(exc: Exception) -> str:
    """The one informative line of torch's long weights-only error (e.g. 'Unsupported global: posix.system')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest.rstrip(".")
    return "weights_only loader rejected it"


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def extract_state_dict(obj, kind: str = "generator", source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in a loaded checkpoint and strip DataParallel ``module.`` prefixes."""
    state = obj
    if not _is_state_dict(state):
        if not isinstance(obj, Mapping):
            raise UserError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
        for key in _WRAPPER_KEYS[kind]:
            if _is_state_dict(obj.get(key)):
                state = obj[key]
                break
        else:
            raise UserError(f"{source}: no state dict found; expected a mapping of tensors, or one under "
                            f"a key such as {', '.join(_WRAPPER_KEYS[kind][:6])} (found keys: {', '.join(map(str, list(obj)[:8]))})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _drop_instance_norm_stats(state: dict, net: nn.Module) -> dict:
    """Old reference checkpoints stored running stats for affine-free InstanceNorm; drop them."""
    modules = dict(net.named_modules())
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        module = modules.get(prefix)
        if (leaf in _INSTANCE_NORM_STATS and isinstance(module, nn.modules.instancenorm._InstanceNorm)
                and not module.track_running_stats):
            continue
        out[key] = value
    return out


def load_state_strict(net: nn.Module, state: Mapping[str, torch.Tensor], source: str, options: Mapping) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first bad key and the options."""
    expected = net.state_dict()
    opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
    for key in expected:
        if key not in state:
            raise UserError(f"{source}: missing key {key!r} for the network built with {opts}")
    for key in state:
        if key not in expected:
            raise UserError(f"{source}: unexpected key {key!r} for the network built with {opts}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{source}: key {key!r} has shape {tuple(state[key].shape)}, expected "
                            f"{tuple(tensor.shape)} for the network built with {opts}")
    net.load_state_dict(state, strict=True)


def _load(path, kind: str, arch: str, **options) -> nn.Module:
    net = build(arch, kind, **options)
    if path is None:
        return init_weights(net) if ":" not in arch else net
    state = extract_state_dict(safe_torch_load(path), kind, source=os.fspath(path))
    state = _drop_instance_norm_stats(state, net)
    load_state_strict(net, state, os.fspath(path), {"arch": arch, **options})
    return net


def load_generator(path=None, arch: str = "unet_256", ngf: int = 64, norm: str = "batch", input_nc: int = 3,
                   output_nc: int = 3, dropout: bool = False, **kwargs) -> nn.Module:
    """A reference-format generator checkpoint (``latest_net_G.pth``), or a fresh pix2pix-initialised
    net when ``path`` is None. ``arch="pkg.module:Class"`` builds your own module with ``**kwargs``; naming
    it here allows it (code passing an arch read from a file checks ``registry.check_arch_allowed`` first)."""
    allow_arch(arch)
    kwargs.pop("kind", None)   # a saved spec's kind says which loader; it is no option of the net
    kwargs.pop("conditional", None)
    if ":" in arch:
        return _load(path, "generator", arch, **kwargs)
    return _load(path, "generator", arch, ngf=ngf, norm=norm, input_nc=input_nc, output_nc=output_nc,
                 dropout=dropout, **kwargs)


def load_discriminator(path=None, arch: str = "basic", ndf: int = 64, norm: str = "batch", input_nc: int = 6,
                       n_layers: int = 3, **kwargs) -> nn.Module:
    """A reference-format discriminator checkpoint (``latest_net_D.pth``); see ``load_generator``."""
    allow_arch(arch)
    kwargs.pop("kind", None)
    kwargs.pop("conditional", None)   # a D spec's fact (``registry.conditional_d``), no option of the net
    if ":" in arch:
        return _load(path, "discriminator", arch, **kwargs)
    return _load(path, "discriminator", arch, ndf=ndf, norm=norm, input_nc=input_nc, n_layers=n_layers, **kwargs)


def save_checkpoint(path, net: nn.Module) -> None:
    """Write a plain CPU state dict, as the reference code does, atomically (write then rename)."""
    from ganprune.core.io import atomic_torch_save
    atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
