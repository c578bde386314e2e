import copy
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ganprune.cli import main
from ganprune.errors import UserError
from ganprune.export import dynamo_available, export_onnx, ort_session
from ganprune.fuse import count_batchnorm, fold_batchnorm
from ganprune.models import load_discriminator, load_generator, save_checkpoint


def _random_bn_stats(net: nn.Module) -> nn.Module:
    """Fresh nets have mean 0 / var 1 running stats, which would make folding look trivially right."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return net


def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}, net.training


def _unchanged(net, snap):
    state, training = snap
    return net.training == training and all(torch.equal(state[k], v) for k, v in net.state_dict().items())


NETS = {
    "unet": (lambda: load_generator(arch="unet_64", ngf=8), 3),
    "resnet": (lambda: load_generator(arch="resnet_6blocks", ngf=8), 3),
    "patchgan": (lambda: load_discriminator(ndf=8), 6),
    "conv_grouped_no_affine": (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6, affine=False)), 4),
    "convtranspose_grouped_bias": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
                                                         nn.BatchNorm2d(6), nn.ReLU()), 4),
}


@pytest.mark.parametrize("name", list(NETS))
def test_fold_batchnorm_matches_eval_output_and_leaves_input_alone(name):
    build, channels = NETS[name]
    net = _random_bn_stats(build()).train()
    snap = _snapshot(net)
    x = torch.randn(2, channels, 64, 64)
    folded = fold_batchnorm(net)
    assert _unchanged(net, snap)
    assert count_batchnorm(net) > 0 and count_batchnorm(folded) == 0
    assert not folded.training
    with torch.no_grad():
        want = copy.deepcopy(net).eval()(x)
        got = folded(x)
    assert want.abs().max() > 1e-3
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_fold_batchnorm_skips_pairs_it_cannot_fold():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),           # not adjacent to a conv
                        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))  # no running stats
    folded = fold_batchnorm(net)
    assert count_batchnorm(folded) == 2
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), net.eval()(x), atol=1e-6)


def _export_and_check(net, channels, path, **kw):
    x = torch.randn(1, channels, 64, 64)
    result = export_onnx(net, path, x, **kw)
    onnx.checker.check_model(str(path), full_check=True)
    assert result["checker"] is True and result["opset"] >= 17
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] < 1e-4
    assert result["bytes"] == path.stat().st_size > 0
    session = ort_session(path, threads=1)
    assert session.get_inputs()[0].shape[0] == "batch"
    x3 = torch.randn(3, channels, 64, 64)
    out = session.run(None, {session.get_inputs()[0].name: x3.numpy()})[0]
    with torch.no_grad():
        want = copy.deepcopy(net).eval()(x3).numpy()
    assert out.shape == want.shape and np.abs(out - want).max() < 1e-4
    return result


@pytest.mark.parametrize("name", ["unet", "patchgan"])
def test_export_dense_passes_checker_and_matches_torch(name, tmp_path):
    build, channels = NETS[name]
    net = _random_bn_stats(build()).train()
    snap = _snapshot(net)
    result = _export_and_check(net, channels, tmp_path / f"{name}.onnx")
    assert _unchanged(net, snap)
    assert result["batchnorm_folded"] == count_batchnorm(net)
    ops = {n.op_type for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node}
    assert "BatchNormalization" not in ops
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no temporary left behind


def test_export_without_our_folding_still_matches(tmp_path):
    net = _random_bn_stats(load_discriminator(ndf=8))
    result = _export_and_check(net, 6, tmp_path / "d.onnx", fold_bn=False, dynamic_batch=True)
    assert result["batchnorm_folded"] == 0 and result["fold_bn"] is False


def test_static_batch_export(tmp_path):
    x = torch.randn(1, 6, 64, 64)
    result = export_onnx(load_discriminator(ndf=8), tmp_path / "d.onnx", x, dynamic_batch=False)
    assert result["max_abs_diff"] < 1e-4
    assert ort_session(tmp_path / "d.onnx").get_inputs()[0].shape[0] == 1


def test_legacy_exporter_when_onnxscript_missing(tmp_path, monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    assert not dynamo_available()
    result = _export_and_check(_random_bn_stats(load_discriminator(ndf=8)), 6, tmp_path / "d.onnx")
    assert result["exporter"] == "legacy" and result["opset"] == 17
    assert not [w for w in recwarn if "legacy TorchScript-based ONNX export" in str(w.message)]


@pytest.mark.skipif(not dynamo_available(), reason="onnxscript not installed (dynamo exporter unavailable)")
@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    result = _export_and_check(_random_bn_stats(load_generator(arch="unet_64", ngf=8)), 3, tmp_path / "g.onnx")
    assert result["exporter"] == "dynamo"


def test_export_rejects_an_input_the_model_cannot_take(tmp_path):
    with pytest.raises(UserError, match="cannot run on an input of shape"):
        export_onnx(load_discriminator(ndf=8), tmp_path / "d.onnx", torch.randn(1, 3, 64, 64))
    assert not list(tmp_path.iterdir())


def test_cli_export_dense_generator(tmp_path, capsys):
    ckpt = tmp_path / "latest_net_G.pth"
    save_checkpoint(ckpt, _random_bn_stats(load_generator(arch="unet_64", ngf=8)))
    out = tmp_path / "g.onnx"
    assert main(["export", "--generator", str(ckpt), "--arch", "unet_64", "--ngf", "8", "--size", "64",
                 "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "onnx checker: ok" in printed and "exporter: " in printed
    diff = float(printed.split("at batch 1 and 2: ")[1].split()[0])
    assert diff < 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--generator", "{tmp}/missing.pth", "--onnx", "{tmp}/x.onnx"], "checkpoint file not found"),
    (["--generator", "{tmp}/G.pth", "--arch", "unet_65", "--onnx", "{tmp}/x.onnx"], "unknown generator arch"),
    (["--generator", "{tmp}/G.pth", "--arch", "resnet_6blocks", "--ngf", "8", "--onnx", "{tmp}/x.onnx"], "missing key"),
    (["--generator", "{tmp}/G.pth"], "missing --onnx"),
    (["--generator", "{tmp}/G.pth", "--pruned", "{tmp}/G.pth", "--onnx", "{tmp}/x.onnx"], "exactly one of"),
    (["--generator", "{tmp}/G.pth", "--arch", "unet_64", "--ngf", "8", "--size", "32", "--onnx", "{tmp}/x.onnx"],
     "cannot take 32x32"),
])
def test_cli_export_bad_inputs_exit_2_with_one_line(tmp_path, capsys, argv, message):
    save_checkpoint(tmp_path / "G.pth", load_generator(arch="unet_64", ngf=8))
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def _pruned_unet(tmp_path):
    from ganprune.prune import prune, save_pruned
    from ganprune.space import SearchSpace
    dense = _random_bn_stats(load_generator(arch="unet_64", ngf=8))
    x = torch.randn(1, 3, 64, 64)
    space = SearchSpace.from_model(dense, x, arch="unet_64")
    widths = space.uniform(0.5)
    pruned = prune(dense, widths, x)
    path = tmp_path / "pruned.pt"
    save_pruned(path, pruned, {"arch": "unet_64", "ngf": 8}, widths)
    return pruned, path, space.macs(widths) / space.macs(space.full_widths())


@pytest.mark.slow
def test_export_pruned_model_and_cli(tmp_path, capsys):
    pruned, path, ratio = _pruned_unet(tmp_path)
    assert ratio < 0.5
    result = _export_and_check(pruned, 3, tmp_path / "direct.onnx")
    assert result["batchnorm_folded"] == count_batchnorm(pruned) > 0
    out = tmp_path / "cli.onnx"
    assert main(["export", "--pruned", str(path), "--onnx", str(out)]) == 0  # size 64 from the file
    printed = capsys.readouterr().out
    assert "onnx checker: ok" in printed and out.is_file()
    session = ort_session(out, threads=1)
    assert session.get_inputs()[0].shape[1:] == [3, 64, 64]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = pruned.eval()(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - want).max() < 1e-4


def test_cli_export_pruned_rejects_a_dense_checkpoint(tmp_path, capsys):
    save_checkpoint(tmp_path / "G.pth", load_generator(arch="unet_64", ngf=8))
    assert main(["export", "--pruned", str(tmp_path / "G.pth"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a pruned-model file" in err and len(err.splitlines()) == 1
