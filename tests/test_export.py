import copy
import json
import os
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ganprune.cli import main
from ganprune.core.errors import UserError
from ganprune.deploy.export import dynamo_available, export_onnx
from ganprune.deploy.runtimes import ort_session
from ganprune.deploy.fuse import count_batchnorm, fold_batchnorm
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
from ganprune.pruning.physical import pruned_info, set_pruned_info


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
    diff = float(printed.split("at batch 1 and 2, 64x64 (")[1].split("): ")[1].split()[0])
    assert diff < 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--generator", "{tmp}/missing.pth", "--onnx", "{tmp}/x.onnx"], "checkpoint file not found"),
    (["--generator", "{tmp}/G.pth", "--arch", "unet_65", "--onnx", "{tmp}/x.onnx"], "unknown generator arch"),
    (["--generator", "{tmp}/G.pth", "--arch", "resnet_6blocks", "--ngf", "8", "--onnx", "{tmp}/x.onnx"], "missing key"),
    (["--generator", "{tmp}/G.pth"], "give the file to write as --out"),
    (["--generator", "{tmp}/G.pth", "--arch", "unet_64", "--ngf", "8", "--out", "{tmp}/x.onnx", "--format", "pte"],
     "a pte file must end in .pte"),
    (["--generator", "{tmp}/G.pth", "--arch", "unet_64", "--ngf", "8", "--onnx", "{tmp}/x.onnx", "--threads", "0"],
     "--threads '0'"),
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
    from ganprune.pruning.physical import prune, save_pruned
    from ganprune.pruning.space import SearchSpace
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


# --------------------------------------------------------------------------- exports you can trust

def _instance_resnet():
    return load_generator(arch="resnet_6blocks", ngf=8, norm="instance").eval()


def test_parity_on_a_constant_example_uses_image_like_inputs(tmp_path):
    """All-zero input: InstanceNorm is degenerate there, so parity must not be measured on it."""
    result = export_onnx(_instance_resnet(), tmp_path / "g.onnx", torch.zeros(1, 3, 64, 64))
    assert result["parity_input"].startswith("synthetic image-like")
    assert result["max_abs_diff"] < 1e-4
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    given = export_onnx(_instance_resnet(), tmp_path / "h.onnx", torch.zeros(1, 3, 64, 64), images=images)
    assert given["parity_input"] == "given images" and given["max_abs_diff"] < 1e-4


def test_dynamic_height_and_width_where_the_net_allows(tmp_path):
    net = _instance_resnet()
    result = export_onnx(net, tmp_path / "g.onnx", torch.randn(1, 3, 64, 64))
    assert result["dynamic_hw"] and result["checked_sizes"] == [(64, 64), (32, 32)]
    session = ort_session(tmp_path / "g.onnx", threads=1)
    shape = session.get_inputs()[0].shape   # symbolic names: the legacy exporter's, or dynamo's own
    assert shape[:2] == ["batch", 3] and all(isinstance(d, str) for d in shape[2:])
    x = torch.randn(1, 3, 48, 80)   # a size never traced nor checked
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - want).max() < 1e-4
    fixed = export_onnx(net, tmp_path / "f.onnx", torch.randn(1, 3, 64, 64), dynamic_hw=False)
    assert not fixed["dynamic_hw"] and ort_session(tmp_path / "f.onnx").get_inputs()[0].shape[2:] == [64, 64]


def test_unet_keeps_its_fixed_size_and_records_it(tmp_path):
    result = export_onnx(load_generator(arch="unet_64", ngf=8), tmp_path / "u.onnx", torch.randn(1, 3, 64, 64))
    assert not result["dynamic_hw"] and result["metadata"]["input_shape"] == "batchx3x64x64"
    with pytest.raises(UserError, match="runs only at"):
        export_onnx(load_generator(arch="unet_64", ngf=8), tmp_path / "v.onnx", torch.randn(1, 3, 64, 64),
                    dynamic_hw=True)


def test_metadata_props_say_what_the_file_holds(tmp_path):
    from ganprune import __version__
    from ganprune.deploy.runtimes import read_metadata, recorded_threads
    pruned, _, _ = _pruned_unet(tmp_path)
    set_pruned_info(pruned, spec={"arch": "unet_64", "ngf": 8})
    export_onnx(pruned, tmp_path / "p.onnx", torch.randn(1, 3, 64, 64), threads=3,
                metadata={"stage": "finetune", "source": "teacher/G.pth"})
    meta = read_metadata(tmp_path / "p.onnx")
    assert meta["ganprune_version"] == __version__ and meta["stage"] == "finetune"
    assert meta["source"] == "teacher/G.pth" and json.loads(meta["spec"]) == {"arch": "unet_64", "ngf": 8}
    assert json.loads(meta["widths"]) == pruned_info(pruned).widths
    assert recorded_threads(tmp_path / "p.onnx") == 3


def test_thread_count_timed_and_recorded(tmp_path):
    from ganprune.deploy.runtimes import recorded_threads
    from ganprune.deploy.export import thread_candidates
    result = export_onnx(load_discriminator(ndf=8), tmp_path / "d.onnx", torch.randn(1, 6, 64, 64), threads="auto")
    assert set(result["latency_ms_by_threads"]) == set(thread_candidates())
    assert all(ms > 0 for ms in result["latency_ms_by_threads"].values())
    best = min(result["latency_ms_by_threads"].values())
    assert result["latency_ms_by_threads"][result["threads"]] <= best * 1.05 + 1e-9
    assert recorded_threads(tmp_path / "d.onnx") == result["threads"]


@pytest.mark.parametrize("fmt, ext", [("openvino", "xml"), ("pte", "pte")])
def test_other_runtime_formats_match_torch(fmt, ext, tmp_path):
    from ganprune.deploy.export import export_model
    from ganprune.deploy.runtimes import read_metadata
    from ganprune.deploy.runtimes import available, load_runner
    if not available(fmt):
        pytest.skip(f"{fmt} runtime not installed")
    net = _random_bn_stats(load_generator(arch="resnet_6blocks", ngf=8)).eval()
    path = tmp_path / f"g.{ext}"
    result = export_model(net, path, torch.zeros(1, 3, 64, 64), threads=1, metadata={"stage": "test"})
    assert result["format"] == fmt and result["max_abs_diff"] < 1e-4
    assert read_metadata(path)["stage"] == "test" and read_metadata(path)["threads"] == "1"
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(load_runner(path)(x.numpy())[0] - want).max() < 1e-4
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_cli_export_format_choice_and_missing_runtime(tmp_path, capsys, monkeypatch):
    import ganprune.deploy.runtimes as runtimes
    save_checkpoint(tmp_path / "G.pth", load_generator(arch="resnet_6blocks", ngf=8))
    monkeypatch.setattr(runtimes, "available", lambda fmt: fmt == "onnx")
    argv = ["export", "--generator", str(tmp_path / "G.pth"), "--arch", "resnet_6blocks", "--ngf", "8", "--size", "64"]
    assert main([*argv, "--out", str(tmp_path / "g.xml")]) == 2
    assert "pip install 'ganprune[openvino]'" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "g.onnx"), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "format: onnx" in printed and "input: batchx3xheightxwidth" in printed and "threads: 1" in printed
    assert main([*argv, "--out", str(tmp_path / "G.pth")]) == 2   # never over an input, whichever option names it
    assert "is the input --generator" in capsys.readouterr().err
