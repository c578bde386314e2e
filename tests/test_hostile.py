"""Hostile and broken inputs: a data file never chooses which code runs; mistakes are one clear line."""
from __future__ import annotations

import pytest
import torch
import yaml

import ganprune
from ganprune.cli import main
from ganprune.core.errors import UserError
from ganprune.models import registry
from ganprune.pruning.physical import FORMAT, load_pruned


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


def test_user_named_class_loads_from_a_pruned_file(tmp_path):
    from test_models import TinyNet          # the bring-your-own net of the model tests
    arch = "test_models:TinyNet"
    x = torch.randn(1, 3, 16, 16)
    net = TinyNet(8)
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


# =========================================================================== shared tiny setup

import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

from ganprune.search.agent import Agent, get_agent, register_agent  # noqa: E402
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint  # noqa: E402


def _one_line_exit_2(argv, capsys, *needles):
    """``ganprune ARGV`` fails with exit 2 and a single 'ganprune: error:' line holding every needle."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]   # progress bars aside
    assert code == 2, (code, err)
    assert "Traceback" not in err and sum("error" in line for line in lines) == 1, err
    err = lines[-1]
    assert err.startswith("ganprune: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A fresh unet_64 (ngf 8, with dropout, as pix2pix trains it) / basic (ndf 8) pair as reference
    checkpoints, the 64² demo set, a pruned G file, and a prune config that runs in seconds."""
    from ganprune.data.demo import make_demo
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    G = load_generator(arch="unet_64", ngf=8, dropout=True)
    save_checkpoint(root / "G.pth", G)
    save_checkpoint(root / "D.pth", load_discriminator(ndf=8))
    data = make_demo(root / "data", size=64, task="gray2color")["out"]
    x = torch.zeros(1, 3, 64, 64)
    widths = {"down1": 4}
    small = ganprune.prune(G.eval(), widths, x)
    ganprune.save_pruned(root / "P.pt", small, {"arch": "unet_64", "ngf": 8, "dropout": True}, widths)
    config = {"generator": str(root / "G.pth"), "discriminator": str(root / "D.pth"), "g_arch": "unet_64",
              "ngf": 8, "ndf": 8, "dropout": True, "dataroot": data, "g_agent": "template", "d_agent": "template",
              "rounds": 3, "calib_images": 4, "calib_batch": 4, "m": 2, "finetune_steps": 2, "fid": False, "supernet_steps": 0,
              "eval_images": 4, "latency": False}
    return {"root": root, "data": data, "config": config, "P": root / "P.pt", "G": root / "G.pth",
            "D": root / "D.pth"}


def _bytes_and_mtime(path):
    return open(path, "rb").read(), os.stat(path).st_mtime_ns


# =========================================================================== data loss: outputs over inputs

def _collisions(t, d):
    """(argv, the input that must survive) — every command's outputs aimed at its own inputs."""
    d.mkdir(exist_ok=True)
    P = d / "P.pt"
    shutil.copy(t["P"], P)
    G_in_out = d / "G.pt"
    shutil.copy(t["P"], G_in_out)
    D_in_out = d / "D.pt"
    shutil.copy(t["P"], D_in_out)
    cfg = d / "config.yaml"
    cfg.write_text(yaml.safe_dump({**t["config"], "out": str(d)}))
    outside = d.parent / "outside.yaml"
    outside.write_text(yaml.safe_dump(t["config"]))
    link = d / "link.onnx"
    if not link.exists():
        link.symlink_to(P)
    hard = d / "hard.onnx"
    if not hard.exists():
        os.link(P, hard)
    gpth = d / "latest_net_G.pth"
    shutil.copy(t["G"], gpth)
    table = d / "search" / "latency_G.yaml"
    table.parent.mkdir(exist_ok=True)
    table.write_text("not touched\n")
    space = d / "space.yaml"
    space.write_text("groups: {}\n")
    teacher_cfg = d / "teacher.yaml"
    teacher_cfg.write_text(yaml.safe_dump({"dataroot": t["data"], "steps": 1}))
    eval_cfg = d / "eval.md"
    eval_cfg.write_text(yaml.safe_dump({"dataroot": t["data"], "pruned": str(P)}))
    pruned_g = d / "pruned_G.pt"
    shutil.copy(t["G"], pruned_g)
    return [
        (["export", "--pruned", P, "--onnx", P], P, "is the input --pruned"),
        (["export", "--pruned", P, "--onnx", link], P, "is the input --pruned"),
        (["export", "--pruned", P, "--onnx", hard], P, "is the input --pruned"),
        (["export", "--generator", gpth, "--arch", "unet_64", "--ngf", "8", "--onnx", gpth], gpth, "--generator"),
        (["finetune", "--pruned-g", G_in_out, "--generator", t["G"], "--discriminator", t["D"], "--g-arch", "unet_64",
          "--ngf", "8", "--ndf", "8", "--dataroot", t["data"], "--out", d], G_in_out, "--pruned-g"),
        (["finetune", "--pruned-g", t["P"], "--pruned-d", D_in_out, "--generator", t["G"], "--discriminator", t["D"],
          "--dataroot", t["data"], "--out", d], D_in_out, "--pruned-d"),
        (["prune", "--config", cfg, "--out", d], cfg, "--config"),
        (["prune", "--config", cfg], cfg, "--config"),                      # out: from the config itself
        (["prune", "--config", outside, "--generator", pruned_g, "--out", d], pruned_g, "--generator"),
        (["prune", "--config", outside, "--latency-table", table, "--out", d], table, "--latency-table"),
        (["search", "--generator", t["G"], "--discriminator", t["D"], "--dataroot", t["data"],
          "--latency-table", d / "history.csv", "--out", d], None, "--latency-table"),
        (["train-teacher", "--config", teacher_cfg, "--out", d], teacher_cfg, "--config"),
        (["eval", "--config", eval_cfg, "--no-fid", "--out", d], eval_cfg, "--config"),
        (["space", "--arch", "unet_64", "--space", space, "--csv", space], space, "--space"),
    ]


@pytest.mark.parametrize("index", range(14))
def test_no_output_replaces_an_input(tiny, tmp_path, capsys, index):
    argv, survivor, needle = _collisions(tiny, tmp_path / "DIR")[index]
    if argv[0] == "search":      # a history.csv the user keeps there as a (silly) latency table
        survivor = tmp_path / "DIR" / "history.csv"
        survivor.write_text("round\n")
    before = _bytes_and_mtime(survivor)
    listing = sorted(os.listdir(tmp_path / "DIR"))
    _one_line_exit_2(argv, capsys, needle)
    assert _bytes_and_mtime(survivor) == before
    assert sorted(os.listdir(tmp_path / "DIR")) == listing      # refused before any work: nothing new written


def test_pipeline_api_refuses_an_input_inside_its_outputs(tiny, tmp_path):
    from ganprune.pipeline import run_pipeline
    shutil.copy(tiny["G"], tmp_path / "pruned_G.pt")
    before = _bytes_and_mtime(tmp_path / "pruned_G.pt")
    with pytest.raises(UserError, match="--generator .*would be overwritten"):
        run_pipeline({**tiny["config"], "generator": str(tmp_path / "pruned_G.pt")}, tmp_path, progress=False)
    assert _bytes_and_mtime(tmp_path / "pruned_G.pt") == before


# =========================================================================== output paths that cannot be written

def _read_only_folder(tmp_path):
    """A folder nobody may create entries in: chmod 555 for a normal user; root ignores modes, so /sys."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    return "/sys"


@pytest.mark.parametrize("case", ["prune-file", "finetune-file", "search-file", "eval-file", "teacher-file",
                                  "prune-ro", "finetune-ro", "eval-ro", "export-ro", "onnx-folder", "csv-folder",
                                  "under-a-file", "make-demo-file"])
def test_unwritable_outputs_are_one_line(tiny, tmp_path, capsys, case):
    afile = tmp_path / "afile"
    afile.write_text("x")
    ro = _read_only_folder(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny["config"]))
    pair = ["--generator", tiny["G"], "--discriminator", tiny["D"], "--g-arch", "unet_64", "--ngf", "8", "--ndf", "8"]
    argv, needle = {
        "prune-file": (["prune", "--config", cfg, "--out", afile], "is an existing file"),
        "finetune-file": (["finetune", "--pruned-g", tiny["P"], *pair, "--dataroot", tiny["data"], "--out", afile],
                          "is an existing file"),
        "search-file": (["search", *pair, "--dataroot", tiny["data"], "--out", afile], "is an existing file"),
        "eval-file": (["eval", "--pruned", tiny["P"], "--dataroot", tiny["data"], "--out", afile], "existing file"),
        "teacher-file": (["train-teacher", "--dataroot", tiny["data"], "--out", afile], "is an existing file"),
        "prune-ro": (["prune", "--config", cfg, "--out", f"{ro}/run"], "cannot write"),
        "finetune-ro": (["finetune", "--pruned-g", tiny["P"], *pair, "--dataroot", tiny["data"], "--out",
                         f"{ro}/ft"], "cannot write"),
        "eval-ro": (["eval", "--pruned", tiny["P"], "--dataroot", tiny["data"], "--out", f"{ro}/ev"], "cannot write"),
        "export-ro": (["export", "--pruned", tiny["P"], "--onnx", f"{ro}/x.onnx"], "cannot write"),
        "onnx-folder": (["export", "--pruned", tiny["P"], "--onnx", tmp_path], "is a folder"),
        "csv-folder": (["space", "--arch", "unet_64", "--csv", tmp_path], "is a folder"),
        "under-a-file": (["prune", "--config", cfg, "--out", afile / "sub"], "is a file"),
        "make-demo-file": (["data", "make-demo", afile], "is an existing file"),
    }[case]
    _one_line_exit_2(argv, capsys, needle)
    assert afile.read_text() == "x"


# =========================================================================== agents under the guard

@register_agent("hostile-test")
class HostileAgent(Agent):
    """Misbehaves on its second ask (option ``how``), or at tell/done/construction."""
    description = "test agent that misbehaves on purpose"
    option_defaults = {"how": "list", "when": 1}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.options["how"] == "init-exit":
            sys.exit(0)

    def _act(self):
        how = self.options["how"]
        if how == "exit0":
            sys.exit(0)
        if how == "exit3":
            sys.exit(3)
        if how == "keyboard":
            raise KeyboardInterrupt
        if how == "hang":
            time.sleep(30)
        if how == "raise":
            raise ValueError("plugin bug")
        return {"list": [1, 2], "none": None, "str": "down1", "int": 7, "floats": {"down1": float("nan")}}.get(how)

    def ask(self, peer):
        if len(self.history) == self.options["when"] and not self.options["how"].startswith(("tell", "done")):
            return self._act()
        return self.fit_uniform()

    def tell(self, feedback):
        if self.options["how"] == "tell-exit":
            sys.exit(0)
        if self.options["how"] == "tell-raise":
            raise RuntimeError("tell bug")

    def done(self):
        if self.options["how"] == "done-raise":
            raise RuntimeError("done bug")
        return False


@pytest.fixture(scope="module")
def evaluator(tiny):
    from ganprune.search.setup import build_evaluator
    from ganprune.scoring.candidates import calibration_batches
    G = load_generator(tiny["G"], arch="unet_64", ngf=8, dropout=True).eval()
    D = load_discriminator(tiny["D"], ndf=8).eval()
    batches = calibration_batches(tiny["data"], n_images=4, batch_size=4)
    return build_evaluator(G, D, batches, g_spec={"arch": "unet_64"}, d_spec={"arch": "basic"}, m=2)


def _budgets(ev, g=0.3, d=0.5):
    from ganprune.search.budget import resolve_macs
    return (resolve_macs(g, ev.g_space.macs(ev.g_space.full_widths())),
            resolve_macs(d, ev.d_space.macs(ev.d_space.full_widths())))


AGENT_MISTAKES = {"list": "returned list, expected a dict", "none": "returned NoneType, expected a dict",
                  "str": "returned str, expected a dict", "int": "returned int, expected a dict",
                  "floats": "widths", "raise": "raised ValueError: plugin bug",
                  "exit0": "called sys.exit(0)", "exit3": "called sys.exit(3)", "keyboard": "raised KeyboardInterrupt",
                  "tell-raise": "tell() raised RuntimeError: tell bug", "tell-exit": "tell() called sys.exit(0)",
                  "done-raise": "done() raised RuntimeError", "hang": "did not return within 0.5 s"}


@pytest.mark.parametrize("how", list(AGENT_MISTAKES))
def test_agent_mistakes_stop_the_search_in_one_line_naming_the_agent(evaluator, tmp_path, how):
    from ganprune.search.loop import search
    g_max, d_max = _budgets(evaluator)
    g = get_agent("hostile-test")(evaluator.g_space, g_max, role="G", how=how)
    d = get_agent("greedy")(evaluator.d_space, d_max, seed=1, role="D")
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        search(evaluator, g, d, g_max, d_max, rounds=4, out_dir=tmp_path, progress=False, agent_timeout=0.5)
    message = str(info.value)
    assert "\n" not in message and "G-agent hostile-test" in message and AGENT_MISTAKES[how] in message, message
    assert message.startswith("search stopped at round") or how == "done-raise"
    assert time.perf_counter() - start < 10           # a hanging ask() does not hang the search
    if how not in ("done-raise",):
        assert len(pd.read_csv(tmp_path / "history.csv")) >= 1     # what ran is kept


def test_agent_constructor_exit_is_an_error(evaluator):
    from ganprune.search.agent import make_agent
    g_max, _ = _budgets(evaluator)
    with pytest.raises(UserError, match="G-agent hostile-test: __init__ called sys.exit"):
        make_agent("hostile-test", evaluator.g_space, g_max, role="G", how="init-exit")


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "raise SystemExit('bye')\n",
                                  "from ganprune.search.agent import Agent, register_agent\n"
                                  "@register_agent('hostile-file-agent')\nclass A(Agent):\n"
                                  "    '''exits'''\n    def ask(self, peer):\n        import sys; sys.exit(0)\n"])
def test_agent_file_that_exits_fails_the_command(tiny, tmp_path, capsys, body):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(body)
    argv = ["search", "--generator", tiny["G"], "--discriminator", tiny["D"], "--g-arch", "unet_64", "--ngf", "8",
            "--ndf", "8", "--dropout", "--dataroot", tiny["data"], "--calib-images", "4", "--m", "2",
            "--agent-file", plugin, "--rounds", "2", "--supernet-steps", "0", "--out", tmp_path / "out"]
    if "hostile-file-agent" in body:
        argv += ["--g-agent", "hostile-file-agent"]
    _one_line_exit_2(argv, capsys, "exit" if "hostile" not in body else "sys.exit(0)")


def test_agent_timeout_option_and_star_import():
    from ganprune.pipeline import resolve_config
    assert resolve_config({})["agent_timeout"] == 600.0
    namespace = {}
    exec("from ganprune.search.agent import *", namespace)   # __all__ names only what exists
    assert "Agent" in namespace and "make_agent" in namespace


# =========================================================================== exports refuse non-finite models

def _poisoned(kind):
    torch.manual_seed(0)
    net = load_generator(arch="unet_64", ngf=4).eval()
    with torch.no_grad():
        if kind == "nan-weight":
            net.model.model[0].weight[0, 0, 0, 0] = float("nan")
        elif kind == "inf-weight":
            net.model.model[0].weight[0, 0, 0, 0] = float("inf")
        elif kind == "inf-buffer":
            next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean[0] = float("inf")
        elif kind == "nan-output":
            net = _NanOut()
    return net


class _NanOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.sqrt(self.conv(x) - 1e6)


@pytest.mark.parametrize("kind", ["nan-weight", "inf-weight", "inf-buffer", "nan-output"])
def test_export_refuses_non_finite_models(tmp_path, kind):
    from ganprune.deploy.export import export_onnx
    with pytest.raises(UserError, match="non-finite"):
        export_onnx(_poisoned(kind), tmp_path / "x.onnx", torch.zeros(1, 3, 64, 64))
    assert not (tmp_path / "x.onnx").exists()


def test_export_cli_refuses_a_pruned_file_with_nan_weights(tmp_path, capsys):
    net = _poisoned("nan-weight")
    ganprune.save_pruned(tmp_path / "nan.pt", net, {"arch": "unet_64", "ngf": 4}, {}, input_shape=[1, 3, 64, 64])
    _one_line_exit_2(["export", "--pruned", tmp_path / "nan.pt", "--onnx", tmp_path / "x.onnx"], capsys, "non-finite")
    assert not (tmp_path / "x.onnx").exists()


# =========================================================================== sizes a net cannot take

@pytest.mark.parametrize("arch,size,valid", [("unet_128", 64, "multiples of 128"),
                                             ("unet_256", 128, "multiples of 256"),
                                             ("unet_256", 300, "nearest: 256 or 512"), ("unet_64", 96, "64 or 128"),
                                             ("resnet_6blocks", 66, "multiples of 4")])
def test_eval_says_the_sizes_a_net_takes(tiny, tmp_path, capsys, arch, size, valid):
    save_checkpoint(tmp_path / "G.pth", load_generator(arch=arch, ngf=4))
    _one_line_exit_2(["eval", "--generator", tmp_path / "G.pth", "--arch", arch, "--ngf", "4", "--dataroot",
                      tiny["data"], "--size", size, "--no-fid", "--n", "1"], capsys,
                     f"cannot take {size}x{size}", valid)


@pytest.mark.parametrize("command", ["search", "export"])
def test_search_and_export_say_the_sizes_a_net_takes(tiny, tmp_path, capsys, command):
    if command == "search":
        argv = ["search", "--generator", tiny["G"], "--discriminator", tiny["D"], "--g-arch", "unet_64", "--ngf", "8",
                "--ndf", "8", "--dropout", "--dataroot", tiny["data"], "--size", "48", "--calib-images", "2"]
    else:
        argv = ["export", "--generator", tiny["G"], "--arch", "unet_64", "--ngf", "8", "--dropout", "--size", "48",
                "--onnx", tmp_path / "x.onnx"]
    _one_line_exit_2(argv, capsys, "cannot take 48x48", "multiples of 64")


def test_valid_sizes_pass():
    from test_models import TinyNet
    from ganprune.models.sizes import check_image_size
    check_image_size(load_generator(arch="unet_64", ngf=4), 64, 192)
    check_image_size(load_generator(arch="resnet_6blocks", ngf=4), 68, 300)
    check_image_size(TinyNet(), 7, 13)                 # a class with no known rule is not second-guessed


# =========================================================================== NNI trial parameters

@pytest.mark.parametrize("content,needle", [('{"parameter_id": 1, "parameters": [1, 2]}', "got list"),
                                            ('{"parameter_id": 1}', "'parameters' mapping"),
                                            ('[1, 2]', "'parameters' mapping"),
                                            ('{"parameters": {"G/nope": 8}}', "unknown group 'nope'")])
def test_nni_trial_parameters_are_checked(tiny, tmp_path, monkeypatch, capsys, content, needle):
    """A real parameter.cfg read through NNI's own local trial channel."""
    import nni.runtime.trial_command_channel as channels
    from nni.runtime.trial_command_channel.local_legacy import LocalLegacyTrialCommandChannel
    (tmp_path / "parameter.cfg").write_text(content)
    from nni.runtime import env_vars
    for key, value in {"NNI_PLATFORM": "local", "NNI_SYS_DIR": str(tmp_path), "NNI_TRIAL_JOB_ID": "t1",
                       "NNI_EXP_ID": "e1", "MULTI_PHASE": "false", "NNI_OUTPUT_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("nni.runtime.trial_command_channel.local_legacy.trial_env_vars",
                        env_vars._load_env_vars(env_vars._trial_env_var_names))
    monkeypatch.setattr(channels, "_channel", LocalLegacyTrialCommandChannel())
    try:
        _one_line_exit_2(["nni", "trial", "--generator", tiny["G"], "--discriminator", tiny["D"], "--g-arch",
                          "unet_64", "--ngf", "8", "--ndf", "8", "--dataroot", tiny["data"], "--calib-images", "2"],
                         capsys, needle)
    finally:
        channels._channel._metric_file.close()


# =========================================================================== resume: exactly the uninterrupted run

def _greedy_search(ev, rounds, out=None, seed=0, agents=("greedy", "greedy")):
    from ganprune.search.loop import search
    g_max, d_max = _budgets(ev)
    g = get_agent(agents[0])(ev.g_space, g_max, seed=seed, role="G")
    d = get_agent(agents[1])(ev.d_space, d_max, seed=seed + 1, role="D")
    torch.manual_seed(1234 + rounds)      # whatever the process did before must not matter
    torch.rand(rounds)
    return search(ev, g, d, g_max, d_max, rounds=rounds, out_dir=out, progress=False, seed=seed)


def _rows(history):
    """History rows as comparable records (wall-clock seconds aside)."""
    return history.drop(columns=["seconds"]).astype(str).to_dict("records")


@pytest.fixture(scope="module")
def straight(evaluator):
    runs = {n: _greedy_search(evaluator, n) for n in (12, 30)}
    runs["rl"] = _greedy_search(evaluator, 12, agents=("rl", "random"))
    assert runs[30].best is not None and runs["rl"].best is not None   # the comparisons include a winner
    return runs


@pytest.mark.parametrize("agents,stop,killed", [("greedy", 1, False), ("greedy", 5, False), ("greedy", 11, False),
                                                ("greedy", 1, True), ("greedy", 5, True), ("greedy", 11, True),
                                                ("rl", 3, True), ("rl", 8, False), ("rl", 8, True)])
def test_stopped_search_resumes_to_the_uninterrupted_result(evaluator, straight, tmp_path, agents, stop, killed):
    """A G with dropout (as pix2pix trains it): stopped after ``stop`` rounds (cleanly, or killed: no fill row),
    then resumed from a fresh state, the history and the winner are those of the straight 12 rounds."""
    pair = ("greedy", "greedy") if agents == "greedy" else ("rl", "random")
    want = straight[12 if agents == "greedy" else "rl"]
    _greedy_search(evaluator, stop, tmp_path, agents=pair)
    if killed:
        h = pd.read_csv(tmp_path / "history.csv")
        h[h["phase"] == "search"].to_csv(tmp_path / "history.csv", index=False)
        (tmp_path / "widths.yaml").unlink(missing_ok=True)
    resumed = _greedy_search(evaluator, 12, tmp_path, agents=pair)
    assert _rows(resumed.history) == _rows(want.history)
    assert (resumed.best is None) == (want.best is None)
    if want.best is not None:
        assert resumed.best["g_widths"] == want.best["g_widths"] and resumed.best["score"] == want.best["score"]
        assert yaml.safe_load((tmp_path / "widths.yaml").read_text())["score"] == want.best["score"]


def test_extended_search_equals_the_longer_straight_run(evaluator, straight, tmp_path):
    _greedy_search(evaluator, 12, tmp_path)
    extended = _greedy_search(evaluator, 30, tmp_path)
    assert _rows(extended.history) == _rows(straight[30].history)
    assert extended.best["g_widths"] == straight[30].best["g_widths"]
    winner = yaml.safe_load((tmp_path / "widths.yaml").read_text())
    assert winner["generator"]["widths"] == straight[30].best["g_widths"]


FOREIGN_HISTORIES = {
    "foreign-columns": ("trial,value,params\n1,0.5,{}\n", "not a ganprune search history"),
    "nni-like": ("round,g_widths,d_widths,score\n0,{},{},1.0\n", "missing column(s) phase"),
    "empty": ("", "cannot resume"),
    "not-utf8": (b"\xff\xfe\x00round\n", "cannot resume"),
    "widths-list": (None, "g_widths is not a JSON object"),
    "widths-not-json": (None, "row 1 is not a valid history row"),
    "round-text": (None, "row 1 is not a valid history row"),
    "score-text": (None, "row 1 is not a valid history row"),
    "other-agents": (None, "does not match what the agents propose"),
}


@pytest.mark.parametrize("case", list(FOREIGN_HISTORIES))
def test_resume_files_that_are_not_ours_are_one_line(evaluator, tmp_path, case):
    content, needle = FOREIGN_HISTORIES[case]
    if content is None:
        _greedy_search(evaluator, 2, tmp_path)
        h = pd.read_csv(tmp_path / "history.csv")
        if case == "widths-list":
            h.loc[0, "g_widths"] = "[1, 2]"
        elif case == "widths-not-json":
            h.loc[0, "d_widths"] = "{down1: 4"
        elif case == "round-text":
            h["round"] = h["round"].astype(str)
            h.loc[0, "round"] = "first"
        elif case == "score-text":
            h["score"] = h["score"].astype(str)
            h.loc[0, "score"] = "good"
        h.to_csv(tmp_path / "history.csv", index=False)
        agents = ("rl", "random") if case == "other-agents" else ("greedy", "greedy")
    else:
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(tmp_path / "history.csv", mode) as fh:
            fh.write(content)
        agents = ("greedy", "greedy")
    before = (tmp_path / "history.csv").read_bytes()
    with pytest.raises(UserError) as info:
        _greedy_search(evaluator, 4, tmp_path, agents=agents)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert (tmp_path / "history.csv").read_bytes() == before        # the input is never modified


WIDTHS_FILES = {
    "no-generator": {"discriminator": {"widths": {}, "macs": 1}},
    "widths-list": {"generator": {"widths": [8, 8], "macs": 1}, "discriminator": {"widths": {}, "macs": 1}},
    "widths-text": {"generator": {"widths": {"down1": "eight"}, "macs": 1}, "discriminator": {"widths": {}, "macs": 1}},
    "no-macs": {"generator": {"widths": {}}, "discriminator": {"widths": {}, "macs": 1}},
    "a-list": [1, 2, 3],
    "unknown-group": {"generator": {"widths": {"nope": 4}, "macs": 1}, "discriminator": {"widths": {}, "macs": 1}},
    "not-yaml": "generator: [unclosed",
}


@pytest.mark.parametrize("case", list(WIDTHS_FILES))
def test_prune_stage_checks_widths_yaml(tiny, tmp_path, case):
    from ganprune.pipeline import run_pipeline
    (tmp_path / "search").mkdir()
    content = WIDTHS_FILES[case]
    (tmp_path / "search" / "widths.yaml").write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(UserError) as info:
        run_pipeline(tiny["config"], tmp_path, stages=["prune"], progress=False)
    message = str(info.value)
    assert "\n" not in message and ("widths.yaml" in message or "nope" in message), message
    assert not (tmp_path / "pruned_G.pt").exists()


# =========================================================================== one run per --out; trusted markers

_HOLD = ("import sys, time\nfrom ganprune.core.outdir import run_lock\nwith run_lock(sys.argv[1]):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n")


def test_second_run_into_a_busy_out_is_refused_and_a_dead_runs_lock_is_taken_over(tiny, tmp_path, capsys):
    import subprocess
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(tiny["config"]))
        _one_line_exit_2(["prune", "--config", cfg, "--out", out, "--stage", "search"], capsys,
                         f"in use by another ganprune run (pid {holder.pid}")
        assert not (out / "search").exists()
    finally:
        holder.kill()          # kill -9: the lock file stays behind, with a dead pid in it
        holder.wait()
    assert f"pid: {holder.pid}" in (out / ".lock").read_text()
    from ganprune.pipeline import run_pipeline
    r = run_pipeline({**tiny["config"], "rounds": 2}, out, stages=["search"], progress=False)
    assert r["stages"] == {"search": "ran"} and not (out / ".lock").exists()


@pytest.mark.slow
def test_markers_need_their_outputs_and_stage_prune_reproduces_the_runs_weights(tiny, tmp_path):
    from ganprune.core.options import STAGES
    from ganprune.pipeline import run_pipeline
    from ganprune.pruning.physical import load_pruned
    out = tmp_path / "run"
    assert run_pipeline(tiny["config"], out, progress=False)["stages"] == {s: "ran" for s in STAGES}
    first = {k: v.clone() for k, v in load_pruned(out / "pruned_G.pt").state_dict().items()}
    first_d = {k: v.clone() for k, v in load_pruned(out / "pruned_D.pt").state_dict().items()}

    torch.rand(100)                   # another process state
    run_pipeline(tiny["config"], out, stages=["prune"], progress=False)
    again = load_pruned(out / "pruned_G.pt").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)    # bit for bit: BN stats included
    again_d = load_pruned(out / "pruned_D.pt").state_dict()
    assert all(torch.equal(first_d[k], again_d[k]) for k in first_d)

    (out / "pruned_G.pt").unlink()    # a deleted output re-runs its stage (and those after it)
    r = run_pipeline(tiny["config"], out, progress=False)
    assert r["stages"]["search"] == "skipped" and r["stages"]["prune"] == "ran"
    assert "prune: finished earlier, but pruned_G.pt is missing" in (out / "log.txt").read_text()
    with open(out / "G.onnx", "ab") as fh:   # a changed output too
        fh.write(b"\0")
    r = run_pipeline(tiny["config"], out, progress=False)
    assert [s for s, state in r["stages"].items() if state == "ran"] == ["export", "report"]
    assert "G.onnx changed since the stage wrote it" in (out / "log.txt").read_text()
    r = run_pipeline({**tiny["config"], "save_every": 1, "agent_timeout": 5}, out, progress=False)
    assert set(r["stages"].values()) == {"skipped"}          # settings that change no result redo nothing
    assert (out / "search" / "history.csv").exists()


def test_two_searches_into_one_folder(evaluator, tmp_path):
    from ganprune.core.outdir import run_lock
    with run_lock(tmp_path):
        with pytest.raises(UserError, match=f"in use by another ganprune run \\(pid {os.getpid()}"):
            _greedy_search(evaluator, 1, tmp_path)
    assert not (tmp_path / "history.csv").exists()
    _greedy_search(evaluator, 1, tmp_path)         # released: the next search runs
    assert len(pd.read_csv(tmp_path / "history.csv")) >= 1 and not (tmp_path / ".lock").exists()


# =========================================================================== the last hostile inputs (issue 23)

@pytest.mark.parametrize("shape, needle", [([1, 3, -64, 64], "-64"), ([1, 3, "64", 64], "'64'"),
                                           ([1, 3, 10 ** 6, 10 ** 6], "1000000"), ([1, 3, 64], "[1, 3, 64]"),
                                           ([1, 3, 12000, 12000], "12000")])
def test_pruned_file_with_a_bad_input_shape_is_one_line(tiny, tmp_path, capsys, shape, needle):
    data = torch.load(tiny["P"], weights_only=True)
    torch.save({**data, "input_shape": shape}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="input_shape"):
        load_pruned(tmp_path / "bad.pt")
    _one_line_exit_2(["export", "--pruned", tmp_path / "bad.pt", "--onnx", tmp_path / "bad.onnx"], capsys,
                     "bad.pt", "input_shape", needle)
    assert sorted(os.listdir(tmp_path)) == ["bad.pt"]


def _latency_search(tiny, table, out):
    return ["search", "--generator", tiny["G"], "--discriminator", tiny["D"], "--g-arch", "unet_64", "--ngf", "8",
            "--ndf", "8", "--dropout", "--dataroot", tiny["data"], "--calib-images", "4", "--m", "2", "--rounds", "1",
            "--supernet-steps", "0", "--g-budget", "5ms", "--latency-table", table, "--out", out]


@pytest.mark.parametrize("content, needle", [
    ("backend: torch\nfull: [1, 2\n layers: }\n", "not valid YAML"),
    (yaml.safe_dump({"backend": "torch+fold", "threads": 2, "input_shape": [1, 3, 64, 64], "full": {"down1": 8},
                     "layers": [], "fit": [float("nan"), 0.0, 0.0]}), "fit must be 3 finite numbers"),
    (yaml.safe_dump({"full": {"down1": 8}, "layers": [{"ms": [[1.0, float("inf")]]}], "fit": [1.0, 0.0, 0.0]}),
     "ms finite"),
])
def test_a_broken_latency_table_is_named_in_one_line(tiny, tmp_path, capsys, content, needle):
    table = tmp_path / "latency.yaml"
    table.write_text(content)
    before = _bytes_and_mtime(table)
    _one_line_exit_2(_latency_search(tiny, table, tmp_path / "out"), capsys, str(table), needle)
    assert _bytes_and_mtime(table) == before
    assert not (tmp_path / "out" / "history.csv").exists()


def test_a_single_training_image_is_a_valid_data_set(tiny, tmp_path):
    """The supernet and the finalists' distiller train on batches of the whole set when it is smaller."""
    from ganprune.data.datasets import build_dataset
    from ganprune.search.finalists import Distiller
    from ganprune.search.supernet import train_supernet
    from torch.utils.data import Subset
    G = load_generator(tiny["G"], arch="unet_64", ngf=8, dropout=True).eval()
    one = Subset(build_dataset(tiny["data"], "aligned", "train"), [0])
    ev = _tiny_space(G)
    supernet = train_supernet(G, ev, one, steps=2, batch_size=4, progress=False, device="cpu")
    assert supernet is not None
    g = ganprune.prune(G, ev.uniform(0.5), torch.zeros(1, 3, 64, 64))
    w0 = [p.detach().clone() for p in g.parameters()]
    Distiller(G, one, steps=1, batch_size=4)(g)
    assert any(not torch.equal(a, b) for a, b in zip(w0, g.parameters()))   # it trained
    with pytest.raises(UserError, match="no training images"):
        train_supernet(G, ev, Subset(one, []), steps=1, progress=False, device="cpu")


def _tiny_space(G):
    from ganprune.pruning.space import SearchSpace
    return SearchSpace.from_model(G, torch.zeros(1, 3, 64, 64), arch="unet_64")


def test_openvino_export_name_is_checked_before_openvino_is_imported(tiny, tmp_path, capsys):
    _one_line_exit_2(["export", "--pruned", tiny["P"], "--format", "openvino", "--out", tmp_path / "model"], capsys,
                     "--format openvino", ".xml")
    _one_line_exit_2(["export", "--pruned", tiny["P"], "--format", "pte", "--out", tmp_path / "m.onnx"], capsys,
                     ".pte")
    assert os.listdir(tmp_path) == []


def test_dynamo_export_of_an_instance_norm_resnet_prints_no_traceback(tmp_path, capsys):
    pytest.importorskip("onnxscript")   # the dynamo exporter; without it the legacy one runs (no converter)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "R.pth", load_generator(arch="resnet_9blocks", ngf=4, norm="instance"))
    assert main(["export", "--generator", str(tmp_path / "R.pth"), "--arch", "resnet_9blocks", "--ngf", "4",
                 "--norm", "instance", "--size", "32", "--onnx", str(tmp_path / "R.onnx")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "size:" in captured.out
    assert (tmp_path / "R.onnx").stat().st_size > 0


def test_a_write_that_runs_out_of_space_is_one_line_and_leaves_nothing_half_written(tiny, tmp_path, capsys):
    """A file-size limit stands in for a full disk: the first file over it fails its write."""
    import resource
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny["config"]))
    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))     # Python ignores SIGXFSZ: writes fail EFBIG
    try:
        err = _one_line_exit_2(["prune", "--config", cfg, "--out", out], capsys, "cannot write (File too large)")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(out) in err and ".pt" in err
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files if f.startswith(".tmp-")]
    assert leftovers == []
