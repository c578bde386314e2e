import warnings

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from ganprune.core.errors import UserError
from ganprune.models.registry import build
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
from ganprune.pruning.physical import FORMAT, load_pruned, prune, pruned_info, save_pruned
from ganprune.pruning.space import SearchSpace
from ganprune.pruning.graph import builtin_names

# arch, kind, build options, input size
ARCHS = [
    ("unet_64", "generator", {"ngf": 8}, 64),
    ("unet_128", "generator", {"ngf": 8, "norm": "instance", "dropout": True}, 128),
    ("unet_256", "generator", {"ngf": 8, "dropout": True}, 256),
    ("resnet_6blocks", "generator", {"ngf": 8, "norm": "instance"}, 32),
    ("resnet_9blocks", "generator", {"ngf": 8, "dropout": True}, 32),
    ("basic", "discriminator", {"ndf": 8, "norm": "instance"}, 64),
    ("n_layers", "discriminator", {"ndf": 8, "n_layers": 4}, 64),
    ("pixel", "discriminator", {"ndf": 8}, 32),
]


class Residual(nn.Module):
    """A bring-your-own generator with a residual add and an InstanceNorm that keeps running stats."""

    def __init__(self, width=16):
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                   nn.InstanceNorm2d(width, affine=False, track_running_stats=True),
                                   nn.ReLU(True), nn.Conv2d(width, width, 3, padding=1))
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        return torch.tanh(self.tail(h + self.block(h)))


def _input(kind, size, batch=1):
    return torch.randn(batch, 6 if kind == "discriminator" else 3, size, size)


def _norms_match_channels(net, x):
    """Every norm's num_features equals the channels it sees; no warnings on forward."""
    seen = []

    def check(module, inputs, output):
        seen.append(module)
        assert module.num_features == inputs[0].shape[1], module

    handles = [m.register_forward_hook(check) for m in net.modules()
               if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            y = net.eval()(x)
    for h in handles:
        h.remove()
    return y, seen


@pytest.mark.slow
@pytest.mark.parametrize("arch,kind,options,size", ARCHS, ids=[a[0] for a in ARCHS])
def test_exact_widths_shapes_and_untouched_input(arch, kind, options, size):
    net, x = build(arch, kind, **options), _input(kind, size)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    space = SearchSpace.from_model(net, x, arch=arch)
    widths = space.uniform(0.5)
    pruned = prune(net, widths, x)
    roots = {}
    for path, name in builtin_names(pruned).items():
        roots.setdefault(name, path)
    assert {name: pruned.get_submodule(roots[name]).out_channels for name in widths} == widths
    assert pruned_info(pruned).widths == widths and pruned_info(pruned).input_shape == list(x.shape)
    macs, params = tp.utils.count_ops_and_params(pruned, x)
    assert (space.macs(widths), space.params(widths)) == (macs, params)
    y, norms = _norms_match_channels(pruned, x)
    assert y.shape == net.eval()(x).shape
    assert len(norms) == sum(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in pruned.modules())
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_modes_and_flags_kept():
    net, x = build("resnet_6blocks", "generator", ngf=8, norm="instance"), _input("generator", 32)
    net.train()
    net.model[1].weight.requires_grad_(False)
    with torch.no_grad():
        pruned = prune(net, {"trunk": np.int64(16), "stem": 4}, x)
    assert pruned.training and all(m.training for m in pruned.modules())
    assert all(m.inplace for m in pruned.modules() if isinstance(m, nn.ReLU))
    assert not pruned.model[1].weight.requires_grad and pruned.model[4].weight.requires_grad
    assert pruned.model[1].out_channels == 4 and pruned.model[7].out_channels == 16
    assert pruned.model[10].conv_block[5].out_channels == 16 and pruned.model[10].conv_block[1].out_channels == 32


def test_l2_keeps_the_channels_that_matter():
    """Zeroed channels are the least important: pruning them away leaves the output unchanged."""
    net = Residual()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        net.block[0].weight[:10] = 0      # block.0 channels 0..9 carry nothing ...
        net.block[0].bias[:10] = 0
        net.block[3].weight[:, :10] = 0   # ... and nothing reads them
    net.eval()
    for importance in ("l2", "l1"):
        pruned = prune(net, {"block.0": 6}, x, importance=importance).eval()
        assert torch.equal(pruned.block[0].weight, net.block[0].weight[10:])
        assert torch.allclose(pruned(x), net(x), atol=1e-6)
    first = prune(net, {"block.0": 6}, x, importance="first")
    assert torch.equal(first.block[0].weight, net.block[0].weight[:6])


def test_bn_scale_ranks_by_gamma_and_falls_back_to_l2():
    net = build("pixel", "discriminator", ndf=8)
    x = _input("discriminator", 8)
    with torch.no_grad():
        net.net[3].weight.copy_(torch.arange(16, 0, -1) * 0.01)  # BN γ: channel 0 largest
        net.net[2].weight.copy_(torch.linspace(1, 2, 16).view(16, 1, 1, 1).expand(16, 8, 1, 1))  # l2: last largest
    gamma = net.net[3].weight
    assert torch.equal(prune(net, {"conv2": 4}, x, importance="bn_scale").net[3].weight, gamma[:4])
    assert torch.equal(prune(net, {"conv2": 4}, x, importance="l2").net[3].weight, gamma[12:])
    no_bn = prune(net, {"conv1": 3}, x, importance="bn_scale")  # conv1's group has no BN: l2 over the group
    norms = net.net[0].weight.pow(2).flatten(1).sum(1) + net.net[2].weight.pow(2).transpose(0, 1).flatten(1).sum(1)
    assert torch.equal(no_bn.net[0].weight, net.net[0].weight[norms.argsort(descending=True)[:3].sort().values])


def test_instance_norm_running_stats_are_sliced():
    net = Residual()
    with torch.no_grad():
        net.block[1].running_mean.copy_(torch.arange(16.0))
        net.block[1].running_var.copy_(torch.arange(1.0, 17.0))
    x = torch.randn(1, 3, 16, 16)
    pruned = prune(net, {"block.0": 5}, x, importance="first")
    assert pruned.block[1].running_mean.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert pruned.block[1].running_var.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    _norms_match_channels(pruned, x)


def test_bad_widths_and_importance():
    net, x = build("pixel", "discriminator", ndf=8), _input("discriminator", 8)
    cases = [({"conv7": 4}, "unknown group 'conv7'"), ({"conv1": 0}, "from 1 to 8"), ({"conv1": 9}, "from 1 to 8"),
             ({"conv1": 4.5}, "integer"), ([("conv1", 4)], "expected a mapping")]
    for widths, message in cases:
        with pytest.raises(UserError, match=message):
            prune(net, widths, x)
    with pytest.raises(UserError, match="importance"):
        prune(net, {}, x, importance="taylor")


def test_save_load_round_trip_from_reference_checkpoint(tmp_path):
    """U-Net/BatchNorm: reference checkpoint → load_generator → prune → save → load: same outputs."""
    dense = load_generator(None, arch="unet_64", ngf=8)
    save_checkpoint(tmp_path / "latest_net_G.pth", dense)
    net = load_generator(tmp_path / "latest_net_G.pth", arch="unet_64", ngf=8)
    x = torch.randn(2, 3, 64, 64)
    pruned = prune(net, {"down1": 4, "down4": 24, "up3": 8}, x[:1]).eval()
    spec = {"arch": "unet_64", "ngf": 8, "norm": "batch"}
    save_pruned(tmp_path / "g.pth", pruned, spec, pruned_info(pruned).widths)
    data = torch.load(tmp_path / "g.pth", weights_only=True)
    assert data["format"] == FORMAT and data["input_shape"] == [1, 3, 64, 64] and data["spec"] == spec
    loaded = load_pruned(tmp_path / "g.pth").eval()
    assert pruned_info(loaded).spec == spec and pruned_info(loaded).widths == pruned_info(pruned).widths
    assert isinstance(pruned_info(loaded).spec, dict) and isinstance(pruned_info(loaded).widths, dict)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pth", "latest_net_G.pth"]  # no temp files left


def test_old_instance_norm_checkpoint_prunes_saves_reloads(tmp_path):
    """ResNet with the running stats older reference checkpoints carry for affine-free InstanceNorm."""
    dense = build("resnet_6blocks", "generator", ngf=8, norm="instance")
    state = dense.state_dict()
    for name, m in dense.named_modules():
        if isinstance(m, nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.randn(m.num_features)
            state[f"{name}.running_var"] = torch.rand(m.num_features) + 0.5
            state[f"{name}.num_batches_tracked"] = torch.tensor(7)
    torch.save(state, tmp_path / "old_G.pth")
    net = load_generator(tmp_path / "old_G.pth", arch="resnet_6blocks", ngf=8, norm="instance")
    x = torch.randn(1, 3, 32, 32)
    pruned = prune(net, {"trunk": 16, "block2.inner": 8, "up2": 5}, x).eval()
    spec = {"arch": "resnet_6blocks", "ngf": 8, "norm": "instance"}
    save_pruned(tmp_path / "g.pth", pruned, spec, pruned_info(pruned).widths)
    loaded = load_pruned(tmp_path / "g.pth").eval()
    y, _ = _norms_match_channels(loaded, x)
    assert torch.equal(y, pruned(x))


def test_discriminator_and_byo_round_trip(tmp_path):
    d = load_discriminator(None, arch="basic", ndf=8)
    x = torch.randn(1, 6, 64, 64)
    pruned = prune(d, {"conv3": 12, "conv4": 20}, x).eval()
    save_pruned(tmp_path / "d.pth", pruned, {"arch": "basic", "ndf": 8}, pruned_info(pruned).widths)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "d.pth").eval()(x), pruned(x))

    own = Residual()
    with torch.no_grad():
        own.block[1].running_mean.normal_()
    pruned = prune(own, {"head": 8, "block.0": 4}, torch.zeros(1, 3, 8, 8)).eval()
    spec = {"arch": f"{__name__}:Residual", "kind": "generator", "width": 16}
    with pytest.raises(UserError, match="kind"):
        save_pruned(tmp_path / "own.pth", pruned, {"arch": spec["arch"]}, pruned_info(pruned).widths)
    save_pruned(tmp_path / "own.pth", pruned, spec, pruned_info(pruned).widths)
    from ganprune.models.registry import allow_arch
    allow_arch(spec["arch"])                   # a file's class path loads only once the user names it
    loaded = load_pruned(tmp_path / "own.pth").eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert torch.equal(loaded.block[1].running_mean, pruned.block[1].running_mean)


def test_save_needs_plain_spec_and_input_shape(tmp_path):
    net = build("pixel", "discriminator", ndf=8)
    with pytest.raises(UserError, match="input_shape unknown"):
        save_pruned(tmp_path / "d.pth", net, {"arch": "pixel", "ndf": 8}, {})
    with pytest.raises(UserError, match="spec.norm: must be plain data"):
        save_pruned(tmp_path / "d.pth", net, {"arch": "pixel", "norm": nn.BatchNorm2d}, {}, input_shape=[1, 6, 8, 8])
    with pytest.raises(UserError, match="'arch' string"):
        save_pruned(tmp_path / "d.pth", net, {"ndf": 8}, {}, input_shape=[1, 6, 8, 8])
    assert not any(tmp_path.iterdir())


def test_load_rejects_bad_files(tmp_path):
    net = build("pixel", "discriminator", ndf=8)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    torch.save(net, tmp_path / "pickled.pth")
    save_pruned(tmp_path / "bad_widths.pth", net, {"arch": "pixel", "ndf": 8}, {"conv9": 3}, input_shape=[1, 6, 8, 8])
    save_pruned(tmp_path / "bad_arch.pth", net, {"arch": "nope", "ndf": 8}, {}, input_shape=[1, 6, 8, 8])
    save_pruned(tmp_path / "mismatch.pth", net, {"arch": "pixel", "ndf": 8}, {"conv1": 3}, input_shape=[1, 6, 8, 8])
    cases = {"text.pth": "text.pth: ", "plain.pth": "plain.pth: not a pruned-model file",
             "pickled.pth": "pickled.pth: refused to load",
             "bad_widths.pth": "bad_widths.pth: widths: unknown group 'conv9'",
             "bad_arch.pth": "unknown arch 'nope'", "mismatch.pth": "mismatch.pth: key 'net.0.weight' has shape",
             "missing.pth": "not found"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_pruned(tmp_path / name)


def test_precomputed_ranking_keeps_the_top_channels():
    from ganprune.pruning.physical import channel_ranking
    net = load_generator(None, arch="unet_64", ngf=8).eval()
    x = torch.zeros(1, 3, 64, 64)
    ranking = channel_ranking(net, x, "l2")
    assert sorted(ranking["down1"]) == list(range(8))
    widths = {"down1": 4, "up2": 4}
    with_rank = prune(net, widths, x, ranking=ranking)
    keep = sorted(ranking["down1"][:4])
    assert torch.equal(with_rank.model.model[0].weight, net.model.model[0].weight[keep])
    assert with_rank.model.model[0].out_channels == 4
    plain = prune(net, {"down1": 4}, x)  # a single group: same channels either way
    assert torch.equal(plain.model.model[0].weight, prune(net, {"down1": 4}, x, ranking=ranking).model.model[0].weight)


def test_pruned_metadata_is_one_declared_object():
    """Pruned-model metadata is a PrunedInfo dataclass, not loose attributes read back with defaults."""
    import dataclasses

    from ganprune.pruning.physical import PrunedInfo, set_pruned_info
    G = load_generator(None, arch="unet_64", ngf=8)
    assert pruned_info(G) is None
    x = torch.zeros(2, 3, 64, 64)
    small = prune(G, {}, x, importance="first")
    info = pruned_info(small)
    assert isinstance(info, PrunedInfo) and info.input_shape == [1, 3, 64, 64] and info.spec is None
    assert {f.name for f in dataclasses.fields(PrunedInfo)} == {"spec", "widths", "input_shape"}
    assert not any(k.startswith("ganprune_") and k != "ganprune_info" for k in vars(small))
    assert set_pruned_info(small, spec={"arch": "unet_64", "ngf": 8}).widths == info.widths
    assert pruned_info(small).spec == {"arch": "unet_64", "ngf": 8} and pruned_info(G) is None
