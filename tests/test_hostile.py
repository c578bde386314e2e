"""Hostile and broken inputs: a data file never chooses which code runs; mistakes are one clear line."""
from __future__ import annotations

import pytest
import torch
import yaml

import ganprune
from ganprune.cli import main
from ganprune.errors import UserError
from ganprune.models import registry
from ganprune.prune import FORMAT, load_pruned


@pytest.fixture(autouse=True)
def fresh_allow_list():
    saved = set(registry._ALLOWED_CLASS_PATHS)
    registry._ALLOWED_CLASS_PATHS.clear()
    yield
    registry._ALLOWED_CLASS_PATHS.clear()
    registry._ALLOWED_CLASS_PATHS.update(saved)


def _payload(marker):
    """Specs an attacker would write: call os.system / subprocess / eval with a marker-creating command."""
    cmd = f"touch {marker}"
    return [{"arch": "os:system", "kind": "generator", "command": cmd},
            {"arch": "subprocess:call", "kind": "generator", "args": cmd, "shell": True},
            {"arch": "builtins:eval", "kind": "generator", "source": f"__import__('os').system('{cmd}')"},
            {"arch": "os.system", "kind": "generator"}]


def _pruned_file(path, spec):
    torch.save({"format": FORMAT, "spec": spec, "widths": {}, "input_shape": [1, 3, 64, 64], "state_dict": {}}, path)


@pytest.mark.parametrize("index", range(4))
def test_pruned_file_spec_never_runs_code(tmp_path, index):
    marker = tmp_path / "pwned"
    spec = _payload(marker)[index]
    _pruned_file(tmp_path / "evil.pt", spec)
    with pytest.raises(UserError) as info:
        load_pruned(tmp_path / "evil.pt")
    assert not marker.exists()
    assert "\n" not in str(info.value)
    assert main(["export", "--pruned", str(tmp_path / "evil.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("index", range(4))
def test_teacher_yaml_spec_never_runs_code(tmp_path, index, capsys):
    marker = tmp_path / "pwned"
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    spec = {k: v for k, v in _payload(marker)[index].items() if k != "kind"}
    (teacher / "teacher.yaml").write_text(yaml.safe_dump({"G": spec, "D": {"arch": "basic", "ndf": 8}}))
    with pytest.raises(UserError, match="teacher.yaml: G"):
        ganprune.load_teacher(teacher)
    assert main(["eval", "--teacher", str(teacher), "--dataroot", str(tmp_path)]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganprune: error:") and "\n" not in err


def test_allowed_class_must_be_an_nn_module(tmp_path):
    marker = tmp_path / "pwned"
    ganprune.allow_arch("os:system")      # even a class path the user allowed is not called unless it is a Module
    with pytest.raises(UserError, match="nn.Module subclass"):
        registry.build("os:system", "generator", command=f"touch {marker}")
    assert not marker.exists()
    with pytest.raises(UserError, match="package.module:ClassName"):
        ganprune.allow_arch("os:system; rm -rf /")


class TinyG(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.out(torch.relu(self.conv(x))))


def test_user_named_class_loads_from_a_pruned_file(tmp_path):
    arch = f"{__name__}:TinyG"
    x = torch.randn(1, 3, 16, 16)
    net = TinyG(8)
    small = ganprune.prune(net, {"conv": 4}, x)
    ganprune.save_pruned(tmp_path / "p.pt", small, {"arch": arch, "kind": "generator", "width": 8}, {"conv": 4})
    with pytest.raises(UserError, match="names Python code"):
        load_pruned(tmp_path / "p.pt")       # the file alone cannot pick the class
    ganprune.allow_arch(arch)                # the user names it
    again = load_pruned(tmp_path / "p.pt")
    assert torch.allclose(again(x), small(x))
    registry._ALLOWED_CLASS_PATHS.clear()
    # On the command line: --allow-arch names it.
    assert main(["export", "--pruned", str(tmp_path / "p.pt"), "--onnx", str(tmp_path / "p.onnx")]) == 2
    assert main(["export", "--pruned", str(tmp_path / "p.pt"), "--onnx", str(tmp_path / "p.onnx"),
                 "--allow-arch", arch]) == 0
    assert (tmp_path / "p.onnx").stat().st_size > 0
