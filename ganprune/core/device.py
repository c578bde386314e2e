"""Where training runs and at what precision: one place, so every trainer behaves the same.

CUDA when present (mixed precision, channels_last memory layout for the convolutions), the CPU
otherwise (fp32: CPU autocast rarely pays for these conv nets and changes the numbers).
"""
from __future__ import annotations

import torch
from torch import nn

from ganprune.core.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(preference: str = "auto") -> torch.device:
    """``"auto"``: the current CUDA device if there is one, else the CPU; ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` as asked (asking for a GPU that is not there is a user error, not a silent fallback)."""
    pref = str(preference or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise UserError(f"device {preference!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"device {preference!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"device {preference!r}: CUDA is not available on this machine (use --device cpu or auto)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"device {preference!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    return device


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``"auto"`` → bf16 on a CUDA device that supports it, else fp16 on CUDA, fp32 on the CPU.
    fp16 is CUDA-only (the CPU has no fast fp16 kernels); bf16 is allowed on the CPU when asked."""
    prec = str(precision or "auto").strip().lower()
    if prec not in PRECISIONS:
        raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if prec == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if prec == "fp16" and not cuda:
        raise UserError("precision 'fp16' needs a CUDA device (use fp32 or bf16 on the CPU)")
    if prec == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)} (use fp16)")
    return prec


def autocast(device: torch.device, precision: str = "auto"):
    """A ``torch.autocast`` context for the resolved precision (disabled for fp32)."""
    prec = resolve_precision(device, precision)
    return torch.autocast(device.type, dtype=_DTYPES.get(prec, torch.float32), enabled=prec != "fp32")


def make_grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler:
    """Loss scaling is needed only for fp16 (bf16 has fp32's range); disabled scalers are no-ops."""
    prec = resolve_precision(device, precision)
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and prec == "fp16")


def to_channels_last(obj):
    """Module or 4-D tensor → channels_last memory layout, on CUDA only (where cuDNN runs NHWC
    convolutions faster); on the CPU it is returned unchanged."""
    if isinstance(obj, nn.Module):
        first = next(iter(obj.parameters()), None)
        return obj.to(memory_format=torch.channels_last) if first is not None and first.is_cuda else obj
    if torch.is_tensor(obj) and obj.is_cuda and obj.dim() == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj
