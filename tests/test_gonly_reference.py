"""G-only pruning of the reference project's own generators, as its users hold them: a pix2pix unet_256
(batch norm, 256² images) and a CycleGAN resnet_9blocks (instance norm, as older reference versions saved
it: with InstanceNorm running statistics; fully convolutional, so 64² images keep it fast), saved the way
the reference code saves ``latest_net_G.pth`` — a plain CPU state dict whose key names and (ngf-scaled)
shapes match tests/data/reference_keys — go through `ganprune prune --config` with no discriminator:
searched, pruned, fine-tuned, evaluated and exported. Small ngf and few images keep each run short."""
import json
import os

import pytest
import torch

from conftest import REFERENCE_KEYS
from ganprune.data.demo import make_demo
from ganprune.models.checkpoint import load_generator
from test_gonly import _prune


def demo(root, layout: str, size: int) -> str:
    return make_demo(root / layout, size=size, task="gray2color", layout=layout)["out"]


def save_like_reference(path, arch: str, norm: str, ngf: int, old_instance_norm_stats: bool = False) -> dict:
    """``torch.save(net.cpu().state_dict(), path)`` as the reference ``save_networks`` does, checked against
    the reference key list (shapes at ngf 64 scaled to ``ngf``); optionally with the InstanceNorm running
    statistics older reference versions wrote. Returns the saved state dict."""
    torch.manual_seed(0)
    net = load_generator(arch=arch, ngf=ngf, norm=norm, dropout=(arch.startswith("unet")))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    reference = json.load(open(os.path.join(REFERENCE_KEYS, f"{arch}_{norm}.json")))["state_dict"]
    assert list(state) == list(reference), "not the reference key names"
    scaled = {k: [d * ngf // 64 if d % 64 == 0 else d for d in shape] for k, shape in reference.items()}
    assert {k: list(v.shape) for k, v in state.items()} == scaled, "not the reference shapes at this ngf"
    if old_instance_norm_stats:
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.InstanceNorm2d):
                c = module.num_features
                state |= {f"{name}.running_mean": torch.zeros(c), f"{name}.running_var": torch.ones(c),
                          f"{name}.num_batches_tracked": torch.tensor(0)}
        assert len(state) > len(reference)
    torch.save(state, path)
    return state


# unet_256 at 256² is costly on a CPU even at ngf 8: two images, two fine-tune steps, and a
# greedy search that shrinks in one round, trying 6 groups a round (about 10 candidates instead of 30).
SMALL = {"calib_images": 2, "calib_batch": 2, "eval_images": 2, "batch_size": 1, "finetune_steps": 2,
         "g_agent_options": {"refine": False, "rounds": 1, "max_trials_per_round": 6}}


@pytest.mark.slow
def test_g_only_reference_unet_256_pix2pix(tmp_path, capsys, one_thread):
    ckpt = tmp_path / "latest_net_G.pth"
    save_like_reference(ckpt, "unet_256", "batch", ngf=8)
    out, winner, G, D = _prune(tmp_path, {**SMALL, "generator": str(ckpt), "g_arch": "unet_256", "ngf": 8, "ndf": 8,
                                          "dropout": True, "dataroot": demo(tmp_path, "aligned", 256)}, capsys)
    assert D.model[0].in_channels == 6                          # conditional PatchGAN for aligned pairs
    assert G(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 256, 256)


@pytest.mark.slow
def test_g_only_reference_resnet_9blocks_cyclegan(tmp_path, capsys, one_thread):
    ckpt = tmp_path / "latest_net_G.pth"
    save_like_reference(ckpt, "resnet_9blocks", "instance", ngf=8, old_instance_norm_stats=True)
    out, winner, G, D = _prune(tmp_path, {**SMALL, "generator": str(ckpt), "g_arch": "resnet_9blocks", "ngf": 8,
                                          "ndf": 8, "norm": "instance", "mode": "unaligned",
                                          "dataroot": demo(tmp_path, "unaligned", 64)}, capsys)
    assert D.model[0].in_channels == 3                          # unconditional PatchGAN for unaligned data
    assert G(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
