import os
import pickle
import random
import re
import timeit

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
import yaml
from torch import nn

from ganprune import search_spaces
from ganprune.cli import main
from ganprune.core.errors import UserError
from ganprune.models.registry import build
from ganprune.models.checkpoint import load_generator
from ganprune.pruning.physical import prune
from ganprune.pruning.space import SearchSpace, allowed_widths

# arch, kind, build options, input size, expected group names
ARCHS = [
    ("unet_64", "generator", {"ngf": 8}, 64,
     [f"down{d}" for d in range(1, 7)] + [f"up{d}" for d in range(6, 1, -1)]),
    ("unet_128", "generator", {"ngf": 8, "norm": "instance"}, 128,
     [f"down{d}" for d in range(1, 8)] + [f"up{d}" for d in range(7, 1, -1)]),
    ("unet_256", "generator", {"ngf": 8, "dropout": True}, 256,
     [f"down{d}" for d in range(1, 9)] + [f"up{d}" for d in range(8, 1, -1)]),
    ("resnet_6blocks", "generator", {"ngf": 8, "norm": "instance"}, 64,
     ["stem", "down1", "trunk"] + [f"block{i}.inner" for i in range(1, 7)] + ["up1", "up2"]),
    ("resnet_9blocks", "generator", {"ngf": 8}, 32,
     ["stem", "down1", "trunk"] + [f"block{i}.inner" for i in range(1, 10)] + ["up1", "up2"]),
    ("basic", "discriminator", {"ndf": 8}, 64, ["conv1", "conv2", "conv3", "conv4"]),
    ("n_layers", "discriminator", {"ndf": 8, "n_layers": 4, "norm": "instance"}, 64,
     ["conv1", "conv2", "conv3", "conv4", "conv5"]),
    ("pixel", "discriminator", {"ndf": 8}, 32, ["conv1", "conv2"]),
]


class PooledResidual(nn.Module):
    """A bring-your-own net: residual add, pooling, upsampling, LeakyReLU, an output conv."""

    def __init__(self, c=16):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, True),
                                  nn.Conv2d(c, c, 3, padding=1))
        self.up = nn.Upsample(scale_factor=2)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        h = self.pool(self.head(x))
        h = h + self.body(h)
        return torch.tanh(self.tail(F.relu(self.up(h))))


class SkipNet(nn.Module):
    """Concat skip, depthwise + pointwise conv, GroupNorm, PReLU, max-pool, bilinear upsampling."""

    def __init__(self):
        super().__init__()
        self.d1, self.dw = nn.Conv2d(3, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.pw, self.gn, self.act = nn.Conv2d(16, 32, 1), nn.GroupNorm(4, 32), nn.PReLU(32)
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="bilinear")
        self.fuse, self.out = nn.Conv2d(48, 16, 3, 1, 1), nn.Conv2d(16, 3, 1)

    def forward(self, x):
        a = F.relu(self.d1(x))
        b = self.act(self.gn(self.pw(self.dw(self.pool(a)))))
        return self.out(F.relu(self.fuse(torch.cat([a, self.up(b)], 1))))


class LinearHeadD(nn.Module):
    """Flatten → Linear → LayerNorm → GELU → Linear(1): the logit is never a group."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.bn = nn.Conv2d(6, 16, 4, 2, 1), nn.Conv2d(16, 32, 4, 2, 1), nn.BatchNorm2d(32)
        self.fc, self.ln, self.logit = nn.Linear(32 * 4 * 4, 64), nn.LayerNorm(64), nn.Linear(64, 1)

    def forward(self, x):
        h = F.leaky_relu(self.bn(self.c2(F.leaky_relu(self.c1(x), 0.2))), 0.2)
        return self.logit(F.gelu(self.ln(self.fc(h.flatten(1)))))


class DataDependent(nn.Module):
    """A forward that reads a value (``.item()``), so it cannot run on the meta device."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 3, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        scale = 0.5 if h.abs().max().item() > 1e6 else 1.0
        return self.out(torch.relu(self.b(h * scale)))


def _net(arch, kind, options, size):
    net = build(arch, kind, **options)
    return net, torch.randn(1, 6 if kind == "discriminator" else 3, size, size)


@pytest.mark.slow
@pytest.mark.parametrize("arch,kind,options,size,names", ARCHS, ids=[a[0] for a in ARCHS])
def test_groups_and_exact_costs(arch, kind, options, size, names):
    net, x = _net(arch, kind, options, size)
    space = SearchSpace.from_model(net, x, arch=arch)
    assert space.names == names
    assert all(g.choices[-1] == g.full and list(g.choices) == sorted(set(g.choices)) for g in space.groups)
    dense_macs, dense_params = tp.utils.count_ops_and_params(net, x)
    assert space.macs({}) == dense_macs and space.params(space.full_widths()) == dense_params
    rng = random.Random(arch)
    widths = {g.name: rng.choice(g.choices) for g in space.groups}  # uniform widths: see test_prune
    macs, params = tp.utils.count_ops_and_params(prune(net, widths, x), x)
    assert (space.macs(widths), space.params(widths)) == (macs, params)
    assert space.macs(space.uniform(0.5)) < 0.5 * dense_macs


@pytest.mark.slow
def test_reference_sizes_at_256():
    """DESIGN.md's dense sizes, predicted by the space (no counting pass)."""
    x = torch.zeros(1, 3, 256, 256)
    unet = SearchSpace.from_model(build("unet_256", "generator"), x, arch="unet_256")
    assert (unet.macs({}), unet.params({})) == (18152528384, 54413955)
    assert [g.full for g in unet.groups] == [64, 128, 256] + [512] * 9 + [256, 128, 64]
    resnet = SearchSpace.from_model(build("resnet_9blocks", "generator"), x, arch="resnet_9blocks")
    assert (resnet.macs({}), resnet.params({})) == (56887541760, 11383427)
    assert [g.full for g in resnet.groups] == [64, 128] + [256] * 10 + [128, 64]


def test_byo_residual_net_uses_module_paths_and_exact_costs():
    net, x = PooledResidual(), torch.randn(2, 3, 32, 32)
    space = SearchSpace.from_model(net, x)
    # head and body.3 write into the same residual sum: one group; tail makes the image: none
    assert [(g.name, g.full) for g in space.groups] == [("head", 16), ("body.0", 16)]
    assert space.source == "default search space"
    assert space.groups[0].choices == (8, 16)
    widths = {"head": 5, "body.0": 3}  # macs/params accept any width in range, not only choices
    pruned = prune(net, widths, x)
    assert pruned.head.out_channels == 5 and pruned.body[3].out_channels == 5 and pruned.body[1].num_features == 3
    macs, params = tp.utils.count_ops_and_params(pruned, x[:1])  # per sample (the counter's upsampling
    assert (space.macs(widths), space.params(widths)) == (macs, params)  # term is not per sample at batch 2)
    assert pruned(x).shape == x.shape


@pytest.mark.parametrize("net,names", [(SkipNet(), [("d1", 16), ("pw", 32), ("fuse", 16)]),
                                       (LinearHeadD(), [("c1", 16), ("c2", 32), ("fc", 64)])],
                         ids=["skip", "linear_head"])
def test_byo_layer_zoo_exact_costs(net, names):
    x = torch.randn(2, 6 if isinstance(net, LinearHeadD) else 3, 16, 16)
    space = SearchSpace.from_model(net, x)
    assert [(g.name, g.full) for g in space.groups] == names
    widths = {g.name: g.choices[len(g.choices) // 2 - 1] for g in space.groups}
    pruned = prune(net, widths, x)
    assert (space.macs(widths), space.params(widths)) == tp.utils.count_ops_and_params(pruned, x[:1])
    assert pruned(x).shape == net(x).shape
    if isinstance(net, SkipNet):  # GroupNorm(4 groups): widths must split evenly
        assert all(c % 4 == 0 for c in space.groups[1].choices)
        with pytest.raises(UserError, match="multiple of 4"):
            prune(net, {"pw": 15}, x)


def test_forward_that_needs_data_is_measured_on_a_real_copy():
    net, x = DataDependent().train(), torch.randn(1, 3, 12, 12)
    with pytest.warns(UserWarning, match="meta device"):
        space = SearchSpace.from_model(net, x)
    assert space.names == ["a", "b"] and net.training
    widths = {"a": 8, "b": 4}
    pruned = prune(net, widths, x)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.training) == (8, 4, True)
    assert (space.macs(widths), space.params(widths)) == tp.utils.count_ops_and_params(pruned, x)


def test_from_model_under_no_grad_and_leaves_model_alone():
    net, x = _net("pixel", "discriminator", {"ndf": 8}, 16)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    with torch.no_grad():
        space = SearchSpace.from_model(net, x, arch="pixel")
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(m.inplace for m in net.modules() if isinstance(m, nn.LeakyReLU))
    assert space.names == ["conv1", "conv2"]


def test_macs_is_fast():
    space = SearchSpace.from_model(build("unet_256", "generator", ngf=8), torch.zeros(1, 3, 256, 256))
    widths = space.uniform(0.5)
    seconds = min(timeit.repeat(lambda: space.macs(widths), number=200, repeat=3)) / 200
    assert seconds < 1e-3


def test_allowed_widths_rounding_and_fallbacks():
    fractions = search_spaces.DEFAULTS["fractions"]
    assert allowed_widths(64, fractions) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert allowed_widths(16, fractions) == (8, 16)            # multiples of 8 from 16 up, never 0
    assert allowed_widths(8, fractions) == (4, 5, 6, 7, 8)      # too narrow to round to 8: whole channels
    assert allowed_widths(3, fractions) == (3,)                 # narrower than min_width: frozen
    assert allowed_widths(64, fractions, min_width=20) == (24, 32, 40, 48, 56, 64)
    assert allowed_widths(100, [0.5, 0.9]) == (48, 88, 100)
    assert allowed_widths(64, widths=[16, 4]) == (4, 16, 64)    # explicit widths, full always allowed


def test_validate_and_uniform():
    net, x = _net("basic", "discriminator", {"ndf": 8}, 64)
    space = SearchSpace.from_model(net, x, arch="basic")
    assert space.full_widths() == {"conv1": 8, "conv2": 16, "conv3": 32, "conv4": 64}
    assert space.validate({"conv2": 8}) == {"conv1": 8, "conv2": 8, "conv3": 32, "conv4": 64}
    assert space.validate({"conv2": np.int64(8)})["conv2"] == 8 and space.macs({"conv2": np.int64(8)}) > 0
    assert space.uniform(0.5) == {"conv1": 4, "conv2": 8, "conv3": 16, "conv4": 32}
    assert space.uniform(1.0) == space.full_widths()
    bad = [({"conv9": 8}, "unknown group 'conv9'"), ({"conv2": 0}, "from 1 to 16"),
           ({"conv2": 17}, "from 1 to 16"), ({"conv2": 8.0}, "integer"), ({"conv2": True}, "integer"),
           ({"conv3": 20}, "widths['conv3'] = 20 is not an allowed choice (allowed: 8, 16, 24, 32)")]
    for widths, message in bad:
        with pytest.raises(UserError, match=re.escape(message)):
            space.validate(widths)
    with pytest.raises(UserError, match="expected a mapping"):
        space.validate([("conv1", 8)])
    with pytest.raises(UserError, match="unknown group"):
        space.macs({"nope": 1})
    with pytest.raises(UserError, match="from 1 to 64"):
        space.params({"conv4": 65})
    for fraction in (0, 1.5, "half"):
        with pytest.raises(UserError, match="fraction"):
            space.uniform(fraction)
    assert pickle.loads(pickle.dumps(space)).macs({"conv3": 16}) == space.macs({"conv3": 16})
    data = space.to_dict()
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    assert data["groups"][0] == {"name": "conv1", "full": 8, "choices": [4, 5, 6, 7, 8]}
    assert data["macs"] == space.macs({})


def test_packaged_files_load_and_match_their_archs():
    assert set(search_spaces.available()) == {"unet_64", "unet_128", "unet_256", "resnet_6blocks",
                                              "resnet_9blocks", "basic", "n_layers", "pixel"}
    header = open(search_spaces.path_for("unet_256"), encoding="utf-8").read()
    assert "Schema" in header and "freeze" in header
    net, x = _net("resnet_6blocks", "generator", {"ngf": 16}, 32)
    space = SearchSpace.from_model(net, x, arch="resnet_6blocks")
    assert space.source.endswith("resnet_6blocks.yaml")
    trunk = {g.name: g for g in space.groups}["trunk"]
    assert trunk.full == 64 and trunk.choices == (8, 16, 24, 32, 40, 48, 56, 64)  # 1/16 steps, rounded to 8


def test_config_dict_file_freeze_and_errors(tmp_path):
    net, x = _net("basic", "discriminator", {"ndf": 8}, 64)
    config = {"freeze": ["conv1"], "groups": {"conv4": {"widths": [16, 48]}, "conv3": {"fractions": [0.5]}}}
    space = SearchSpace.from_model(net, x, arch="basic", config=config)
    assert [g.choices for g in space.groups] == [(8,), (8, 16), (16, 32), (16, 48, 64)]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"round_to": 4, "fractions": [0.25, 1.0]}))
    assert SearchSpace.from_model(net, x, config=str(path)).groups[1].choices == (4, 16)
    cases = [({"foo": 1}, "unknown key 'foo'"), ({"groups": {"conv9": {}}}, "groups.conv9: no group 'conv9'"),
             ({"freeze": ["up2"]}, "freeze: no group 'up2'"), ({"groups": {"conv1": {"step": 2}}}, "groups.conv1.step"),
             ({"groups": {"conv1": {"widths": [4, 9]}}}, "groups.conv1.widths: 9 is wider"),
             ({"fractions": [0, 0.5]}, "fractions: expected numbers in"), ({"min_width": -1}, "min_width"),
             ({"groups": {"conv1": {"widths": [4], "fractions": [0.5]}}}, "either fractions or widths")]
    for config, message in cases:
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(UserError, match=f"{path.name}: .*{message}"):
            SearchSpace.from_model(net, x, config=str(path))
    with pytest.raises(UserError, match="cannot read"):
        SearchSpace.from_model(net, x, config=str(tmp_path / "missing.yaml"))


def test_bad_input_size_is_a_user_error():
    with pytest.raises(UserError, match=r"example input of shape \[1, 3, 64, 64\] does not run through UnetGenerator"):
        SearchSpace.from_model(build("unet_256", "generator", ngf=8), torch.zeros(1, 3, 64, 64))


def test_cli_space_table(tmp_path, capsys):
    csv = tmp_path / "groups.csv"
    assert main(["space", "--arch", "unet_64", "--ngf", "8", "--size", "64", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "| down1" in out and "MACs share %" in out and "11 groups" in out
    assert csv.read_text().splitlines()[0] == "group,full,choices,MACs share %,params share %"
    assert main(["space", "--arch", "n_layers", "--ngf", "8", "--size", "64", "--norm", "instance"]) == 0
    assert "conv4" in capsys.readouterr().out
    assert main(["space", "--arch", f"{__name__}:PooledResidual", "--kind", "generator", "--size", "16"]) == 0
    assert "| body.0" in capsys.readouterr().out
    assert main(["space", "--arch", "unet_64", "--size", "32"]) == 2
    assert "does not run through" in capsys.readouterr().err
    assert main(["space", "--arch", "pkg.mod:Cls"]) == 2
    assert "--kind" in capsys.readouterr().err
    assert os.path.exists(csv)


def test_frozen_model_still_shows_its_groups():
    net = load_generator(None, arch="unet_64", ngf=8).eval()
    x = torch.zeros(1, 3, 64, 64)
    groups = SearchSpace.from_model(net, x, arch="unet_64").names
    for p in net.parameters():
        p.requires_grad_(False)
    assert SearchSpace.from_model(net, x, arch="unet_64").names == groups and len(groups) > 5
    assert all(not p.requires_grad for p in net.parameters())
    pruned = prune(net, {"down1": 4}, x)
    assert pruned.model.model[0].out_channels == 4
