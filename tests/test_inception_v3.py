"""FIDInceptionV3 with pytorch-fid state dicts: key layout, agreement with the bundled TorchScript, errors, CLI.

The pytorch-fid file itself cannot be downloaded here, so the tests build it: the bundled TorchScript
holds the same TF graph's tensors under other names, and ``bundled_as_pytorch_fid`` renames them.
"""
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganprune.cli import main
from ganprune.core.errors import UserError
from ganprune.metrics.fid_inception import FIDInceptionFeatures, load_fid_inception
from ganprune.metrics.inception_v3 import FIDInceptionV3, inception_from_state_dict
from ganprune.metrics.quality import (InceptionStateDictFeatures, _extractor_name, fid_kid, load_feature_extractor, quantize)
from ganprune.models.checkpoint import load_generator, save_checkpoint

STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3"}
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
      "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
      "tower_2.conv": "branch_pool",
      **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
      **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
      "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
# TorchScript's mixed, mixed_1, ..., mixed_10 in order
MIXED = [("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A), ("Mixed_6a", _B), ("Mixed_6b", _C), ("Mixed_6c", _C),
         ("Mixed_6d", _C), ("Mixed_6e", _C), ("Mixed_7a", _D), ("Mixed_7b", _E), ("Mixed_7c", _E)]
TF_BN = {"beta": "bias", "mean": "running_mean", "var": "running_var"}


def bundled_as_pytorch_fid() -> dict:
    """The bundled TorchScript's tensors under pytorch-fid's keys (``net.layers.<layer>.<leaf>`` → ours)."""
    state = {}
    layers = {}
    for key, value in load_fid_inception().state_dict().items():
        layer, leaf = key.removeprefix("net.layers.").rsplit(".", 1)
        layers.setdefault(layer, {})[leaf] = value
    for layer, leaves in layers.items():
        # TF's batch norm had no scale: every layer is conv weight + beta/mean/var, so pytorch-fid's γ is 1
        assert set(leaves) == {"weight", "beta", "mean", "var"}, layer
        if layer in STEM:
            name = STEM[layer]
        else:
            block, _, rest = layer.partition(".")
            block_name, table = MIXED[0 if block == "mixed" else int(block.split("_")[1])]
            name = f"{block_name}.{table[rest]}"
        state[f"{name}.conv.weight"] = leaves["weight"]
        state[f"{name}.bn.weight"] = torch.ones_like(leaves["beta"])
        state.update({f"{name}.bn.{ours}": leaves[tf] for tf, ours in TF_BN.items()})
    return state


@pytest.fixture(scope="module")
def fid_state():
    return bundled_as_pytorch_fid()


@pytest.fixture(scope="module")
def fid_file(tmp_path_factory, fid_state):
    """The state dict as a pytorch-fid-style file, with an fc layer (never read by FID) like the real one."""
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({**fid_state, "fc.weight": torch.randn(1008, 2048, generator=g) * 0.01, "fc.bias": torch.zeros(1008)},
               path)
    return path


def _images(n, size=64, seed=0):
    return quantize(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


def test_state_dict_layout_is_pytorch_fids(fid_state):
    expected = FIDInceptionV3().state_dict()
    assert len(expected) == 94 * 5 + 2 and not any("num_batches_tracked" in k for k in expected)
    shapes = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
              "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5), "Mixed_5b.branch_pool.bn.bias": (32,),
              "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
              "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
              "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
              "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
              "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    assert {k: tuple(expected[k].shape) for k in shapes} == shapes
    # the bundled network's 94 layers map one to one onto ours, shape for shape
    assert set(fid_state) == set(expected) - {"fc.weight", "fc.bias"}
    assert all(fid_state[k].shape == expected[k].shape for k in fid_state)


@pytest.mark.slow   # the first Inception forward in a process sets up ~100 conv kernels (seconds)
def test_wrapped_prefixed_state_without_fc_loads_and_ignores_train_mode(fid_state):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in fid_state.items()}}
    wrapped["state_dict"]["module.Mixed_5b.branch1x1.bn.num_batches_tracked"] = torch.tensor(7)
    net = inception_from_state_dict(wrapped, "w.pth")
    assert torch.equal(net.Mixed_6c.branch7x7dbl_3.conv.weight, fid_state["Mixed_6c.branch7x7dbl_3.conv.weight"])
    assert torch.equal(net.Mixed_7b.branch_pool.bn.running_mean, fid_state["Mixed_7b.branch_pool.bn.running_mean"])
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    with torch.no_grad():
        frozen = net(x)
        net.train()   # frozen BatchNorm: a parent's .train() must not switch to batch statistics
        assert torch.equal(net(x), frozen) and frozen.shape == (2, 2048)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.__setitem__("Mixed_6c.branch7x7_2.conv.kernel", s.pop("Mixed_6c.branch7x7_2.conv.weight")),
     "missing key 'Mixed_6c.branch7x7_2.conv.weight' .* found unexpected key 'Mixed_6c.branch7x7_2.conv.kernel'"),
    (lambda s: s.__setitem__("Mixed_7b.branch3x3_2a.bn.running_var", torch.ones(383)),
     r"key 'Mixed_7b.branch3x3_2a.bn.running_var' has shape \[383\], expected \[384\]"),
    (lambda s: s.__setitem__("fc.weight", torch.zeros(1000, 2048)), r"key 'fc.weight' has shape \[1000, 2048\]"),
    (lambda s: s.__setitem__("AuxLogits.fc.weight", torch.zeros(1008, 768)), "unexpected key 'AuxLogits.fc.weight'"),
])
def test_wrong_key_or_shape_is_named(fid_state, edit, message):
    state = dict(fid_state)
    edit(state)
    with pytest.raises(UserError, match=f"^bad.pth: {message}"):
        inception_from_state_dict(state, "bad.pth")


def test_wrong_files_name_file_and_key(tmp_path):
    renamed = tmp_path / "renamed.pth"
    torch.save({"Conv2d_1a_3x3.conv.kernel": torch.zeros(32, 3, 3, 3)}, renamed)
    with pytest.raises(UserError, match=f"^{re.escape(str(renamed))}: missing key 'Conv2d_1a_3x3.conv.weight' "
                                        ".*pt_inception-2015-12-05.*found unexpected key 'Conv2d_1a_3x3.conv.kernel'$"):
        load_feature_extractor(renamed)
    listed = tmp_path / "l.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(UserError, match=f"^{re.escape(str(listed))}: not FID weights: expected a TorchScript .*list$"):
        load_feature_extractor(listed)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(UserError, match=f"^{re.escape(str(junk))}: "):
        load_feature_extractor(junk)


@pytest.mark.slow
def test_pytorch_fid_weights_match_the_bundled_network(fid_file, fid_state, tmp_path):
    real, fake = _images(3, seed=1), _images(3, seed=2) * 0.6
    bundled, ours = FIDInceptionFeatures((-1.0, 1.0)), load_feature_extractor(fid_file)
    assert isinstance(ours, InceptionStateDictFeatures) and ours.num_features == 2048
    assert _extractor_name(ours) == f"FID Inception-v3 (pytorch-fid weights {fid_file})"
    with torch.no_grad():
        ref_real, ref_fake = bundled(real), bundled(fake)
        got_real, got_fake = ours(real), ours(fake)
    scale = float(ref_real.abs().max())
    assert got_real.shape == (3, 2048) and scale > 0.5
    assert float((got_real - ref_real).abs().max()) < 1e-4 * scale
    assert float((got_fake - ref_fake).abs().max()) < 1e-4 * scale
    ref, got = fid_kid(ref_real, ref_fake, kid=False)["fid"], fid_kid(got_real, got_fake, kid=False)["fid"]
    assert ref > 1 and got == pytest.approx(ref, abs=1e-3)
    # the file as pytorch-fid's era of torch wrote it (legacy format, not a zip), wrapped, with no fc
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": fid_state}, legacy, _use_new_zipfile_serialization=False)
    again = load_feature_extractor(legacy).net.state_dict()
    assert all(torch.equal(again[k], v) for k, v in fid_state.items())


@pytest.mark.slow
def test_eval_cli_with_pytorch_fid_weights(fid_file, tmp_path, capsys):
    val = tmp_path / "data" / "val"
    val.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(val / f"{i}.png")
    save_checkpoint(tmp_path / "G.pth", load_generator(None, arch="unet_64", ngf=8))
    rc = main(["eval", "--generator", str(tmp_path / "G.pth"), "--arch", "unet_64", "--ngf", "8", "--dataroot",
               str(tmp_path / "data"), "--fid-weights", str(fid_file), "--out", str(tmp_path / "r")])
    printed = capsys.readouterr().out
    assert rc == 0 and f"FID/KID vs 2 real images, FID Inception-v3 (pytorch-fid weights {fid_file})" in printed
    row = pd.read_csv(tmp_path / "r" / "eval.csv").iloc[0]
    assert row["FID"] > 0 and math.isfinite(row["KID"])
