"""Networks match the reference key for key; checkpoints load safely in every accepted variant."""
import json
import os
import pickle

import pytest
import torch
from conftest import REFERENCE_KEYS

import ganprune
from ganprune.cli import main
from ganprune.core.errors import UserError

# (reference file, builder kwargs)
REFERENCE_ARCHS = [
    ("unet_256_batch", dict(kind="G", arch="unet_256", norm="batch")),
    ("unet_256_instance", dict(kind="G", arch="unet_256", norm="instance")),
    ("unet_128_batch", dict(kind="G", arch="unet_128", norm="batch")),
    ("resnet_9blocks_batch", dict(kind="G", arch="resnet_9blocks", norm="batch")),
    ("resnet_9blocks_instance", dict(kind="G", arch="resnet_9blocks", norm="instance")),
    ("resnet_6blocks_instance", dict(kind="G", arch="resnet_6blocks", norm="instance")),
    ("D_basic_batch_in6", dict(kind="D", arch="basic", norm="batch", input_nc=6)),
    ("D_basic_instance_in3", dict(kind="D", arch="basic", norm="instance", input_nc=3)),
    ("D_n_layers5_batch_in6", dict(kind="D", arch="n_layers", norm="batch", input_nc=6, n_layers=5)),
    ("D_pixel_batch_in6", dict(kind="D", arch="pixel", norm="batch", input_nc=6)),
]


def _build(kind, **kw):
    return ganprune.load_generator(None, **kw) if kind == "G" else ganprune.load_discriminator(None, **kw)


@pytest.mark.parametrize("ref,kw", REFERENCE_ARCHS, ids=[r for r, _ in REFERENCE_ARCHS])
def test_state_dict_matches_reference(ref, kw):
    with open(os.path.join(REFERENCE_KEYS, ref + ".json")) as fh:
        expected = json.load(fh)
    net = _build(**kw)
    got = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert got == expected["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == expected["params"]


@pytest.mark.parametrize("kw,count", [
    (dict(kind="G", arch="unet_256", norm="batch"), 54_413_955),
    (dict(kind="G", arch="unet_128", norm="batch"), 41_828_995),
    (dict(kind="G", arch="resnet_9blocks", norm="instance"), 11_378_179),
    (dict(kind="D", arch="basic", norm="batch", input_nc=6), 2_768_705),
])
def test_parameter_counts(kw, count):
    assert sum(p.numel() for p in _build(**kw).parameters()) == count


def test_patchgan_output_is_30x30_at_256():
    d = ganprune.load_discriminator(None, arch="basic", ndf=8).eval()
    assert d(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("arch,size", [("unet_64", 64), ("unet_128", 128), ("resnet_6blocks", 32)])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_generators_keep_image_shape(arch, size, norm):
    g = ganprune.load_generator(None, arch=arch, ngf=4, norm=norm, dropout=True).eval()
    y = g(torch.randn(2, 3, size, size))
    assert y.shape == (2, 3, size, size) and y.abs().max() <= 1


def test_dropout_option_adds_dropout_layers():
    assert not any(isinstance(m, torch.nn.Dropout) for m in ganprune.load_generator(None, arch="unet_64", ngf=4).modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in ganprune.load_generator(None, arch="unet_64", ngf=4, dropout=True).modules())


def test_pix2pix_init_statistics():
    g = ganprune.load_generator(None, arch="resnet_6blocks", ngf=32)
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.mean().item()) < 2e-3 and abs(w.std().item() - 0.02) < 2e-3
    bn = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01


SMALL = [
    dict(kind="G", arch="unet_64", ngf=8, norm="batch"),
    dict(kind="G", arch="unet_128", ngf=4, norm="instance"),
    dict(kind="G", arch="unet_256", ngf=2, norm="batch"),
    dict(kind="G", arch="resnet_6blocks", ngf=8, norm="instance"),
    dict(kind="G", arch="resnet_9blocks", ngf=8, norm="batch"),
    dict(kind="D", arch="basic", ndf=8, norm="batch"),
    dict(kind="D", arch="n_layers", ndf=8, norm="instance", n_layers=4),
    dict(kind="D", arch="pixel", ndf=8, norm="batch"),
]


def _input(kw):
    if kw["kind"] == "D":
        return torch.randn(2, 6, 64, 64)
    size = {"unet_128": 128, "unet_256": 256}.get(kw["arch"], 64)
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize("kw", SMALL, ids=[f"{k['arch']}-{k['norm']}" for k in SMALL])
def test_checkpoint_round_trip_is_exact(tmp_path, kw):
    net = _build(**kw)
    net.train()
    net(_input(kw))  # move BN running stats away from their init
    net.eval()
    path = tmp_path / "latest_net.pth"
    ganprune.save_checkpoint(path, net)
    kind = kw.pop("kind")
    loaded = (ganprune.load_generator if kind == "G" else ganprune.load_discriminator)(path, **kw).eval()
    x = _input({"kind": kind, **kw})
    assert torch.equal(net(x), loaded(x))


@pytest.fixture
def unet_and_state():
    net = ganprune.load_generator(None, arch="unet_64", ngf=4).eval()
    return net, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "netG", "G", "module"])
def test_checkpoint_variants_load(tmp_path, unet_and_state, wrap):
    net, state = unet_and_state
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "netG": {"netG": state, "netD": {}},
           "G": {"G": state}, "module": {f"module.{k}": v for k, v in state.items()}}[wrap]
    torch.save(obj, tmp_path / "ck.pth")
    loaded = ganprune.load_generator(tmp_path / "ck.pth", arch="unet_64", ngf=4).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), net(x))


def test_old_instance_norm_checkpoint_loads(tmp_path):
    net = ganprune.load_generator(None, arch="resnet_6blocks", ngf=4, norm="instance").eval()
    state = dict(net.state_dict())
    n_norms = 0
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            n_norms += 1
            state[f"{name}.running_mean"] = torch.zeros(m.num_features)
            state[f"{name}.running_var"] = torch.ones(m.num_features)
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    assert n_norms > 0
    torch.save(state, tmp_path / "old.pth")
    loaded = ganprune.load_generator(tmp_path / "old.pth", arch="resnet_6blocks", ngf=4, norm="instance").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), net(x))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    with open("evil.pth", "wb") as fh:
        pickle.dump({"state_dict": _Payload()}, fh, protocol=protocol)
    with pytest.raises(UserError, match="refused"):
        ganprune.load_generator("evil.pth", arch="unet_64", ngf=4)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_input_checkpoint_is_not_modified(tmp_path, unet_and_state):
    _, state = unet_and_state
    path = tmp_path / "ck.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    before = path.read_bytes()
    ganprune.load_generator(path, arch="unet_64", ngf=4)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.pop("model.model.3.weight"), "missing key 'model.model.3.weight'"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "unexpected key 'extra.weight'"),
    (lambda s: s.__setitem__("model.model.0.weight", torch.zeros(5, 3, 4, 4)), "key 'model.model.0.weight' has shape"),
])
def test_mismatched_checkpoint_names_the_key_and_options(tmp_path, unet_and_state, mutate, message):
    _, state = unet_and_state
    mutate(state)
    torch.save(state, tmp_path / "ck.pth")
    with pytest.raises(UserError, match=message) as err:
        ganprune.load_generator(tmp_path / "ck.pth", arch="unet_64", ngf=4)
    assert "arch='unet_64'" in str(err.value) and "ngf=4" in str(err.value) and "\n" not in str(err.value)


def test_wrong_arch_is_a_clear_error(tmp_path, unet_and_state):
    torch.save(unet_and_state[1], tmp_path / "ck.pth")
    with pytest.raises(UserError, match="missing key"):
        ganprune.load_generator(tmp_path / "ck.pth", arch="resnet_6blocks", ngf=4)
    with pytest.raises(UserError, match="unknown generator arch 'unet_999'"):
        ganprune.load_generator(None, arch="unet_999")


@pytest.mark.parametrize("content,message", [(b"", "not a readable"), (b"not a checkpoint at all", "refused to load")])
def test_unreadable_files(tmp_path, content, message):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(UserError, match=message):
        ganprune.load_generator(tmp_path / "bad.pth", arch="unet_64", ngf=4)
    with pytest.raises(UserError, match="not found"):
        ganprune.load_generator(tmp_path / "missing.pth", arch="unet_64")


def test_non_state_dict_content_is_refused(tmp_path):
    torch.save({"epoch": 3, "notes": "x"}, tmp_path / "ck.pth")
    with pytest.raises(UserError, match="no state dict found"):
        ganprune.load_generator(tmp_path / "ck.pth", arch="unet_64")


class TinyNet(torch.nn.Module):
    """A bring-your-own generator used through ``arch='tests.test_models:TinyNet'``-style import paths."""

    def __init__(self, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.out(torch.relu(self.conv(x))))


def test_bring_your_own_arch(tmp_path):
    net = ganprune.load_generator(None, arch="test_models:TinyNet", width=6)
    assert isinstance(net, TinyNet) and net.conv.out_channels == 6
    ganprune.save_checkpoint(tmp_path / "byo.pth", net)
    again = ganprune.load_generator(tmp_path / "byo.pth", arch="test_models:TinyNet", width=6)
    assert torch.equal(again.conv.weight, net.conv.weight)
    with pytest.raises(UserError, match="cannot import"):
        ganprune.load_generator(None, arch="no_such_module_xyz:Net")


def test_cli_lists_archs_and_reports_errors_in_one_line(capsys, tmp_path):
    assert main(["archs", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "unet_256" in out and "54413955" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizee: 3\n")
    assert main(["archs", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganprune: error:") and "sizee" in err and "\n" not in err


def test_cli_config_values_and_overrides(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("size: 128\n")
    assert main(["archs", "--config", str(cfg)]) == 0
    assert "|    128 |" in capsys.readouterr().out
    assert main(["archs", "--config", str(cfg), "--size", "256"]) == 0
    assert "|    128 |" not in capsys.readouterr().out
