import pytest
import torch
from torch import nn

from ganprune.core.device import autocast, make_grad_scaler, pick_device, resolve_precision, to_channels_last
from ganprune.core.errors import UserError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_pick_device_cpu_and_auto():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device(None).type == pick_device("auto").type


@no_cuda
@pytest.mark.parametrize("pref", ["cuda", "cuda:1", "CUDA:0"])
def test_pick_device_cuda_without_gpu_is_a_user_error(pref):
    with pytest.raises(UserError, match="CUDA is not available"):
        pick_device(pref)


@pytest.mark.parametrize("pref", ["gpu0", "tpu", "meta"])
def test_pick_device_rejects_unknown_names(pref):
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        pick_device(pref)


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == "fp32"
    assert resolve_precision(cpu, "bf16") == "bf16"
    with pytest.raises(UserError, match="fp16.*CUDA"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(UserError, match="expected one of"):
        resolve_precision(cpu, "fp8")


def test_autocast_and_scaler_on_cpu():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, "auto"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    assert not make_grad_scaler(cpu, "auto").is_enabled()
    assert not make_grad_scaler(cpu, "bf16").is_enabled()


def test_channels_last_is_cuda_only():
    conv = nn.Conv2d(3, 8, 3)
    x = torch.randn(1, 3, 8, 8)
    assert to_channels_last(conv) is conv and conv.weight.is_contiguous()
    assert to_channels_last(x) is x


@needs_cuda
def test_cuda_paths():
    dev = pick_device("cuda")
    prec = resolve_precision(dev, "auto")
    assert prec == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert make_grad_scaler(dev, "fp16").is_enabled() and not make_grad_scaler(dev, "bf16").is_enabled()
    conv = to_channels_last(nn.Conv2d(3, 8, 3).to(dev))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = to_channels_last(torch.randn(1, 3, 8, 8, device=dev))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with autocast(dev, "fp16"):
        assert conv(x).dtype == torch.float16
