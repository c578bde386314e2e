"""One validation layer for option values: the command line, config files, NNI's options and the Python
API all refuse a bad value in one line naming the option, before any heavy work."""
import math

import pytest
import torch

import ganprune
import ganprune.nni
from ganprune.cli import main
from ganprune.core.errors import UserError
from ganprune.nni.space import Setup, load_options
from ganprune.core.options import FINETUNE, NNI, PIPELINE, SEARCH, TEACHER, Option, check, read_config, resolve
from ganprune.pipeline import resolve_config, run_pipeline


def _one_line_error(capsys, *names):
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganprune: error:") and "\n" not in err, err
    for name in names:
        assert name in err, err
    return err


# --------------------------------------------------------------------------- config files

@pytest.mark.parametrize("text, name, expected", [
    ('fill: "false"\n', "fill", "expected true or false"),
    ("fill: 0\n", "fill", "expected true or false"),
    ("rounds: [1, 2]\n", "rounds", "expected an integer"),
    ("rounds: 2.5\n", "rounds", "expected an integer"),
    ("rounds: 0\n", "rounds", "must be >= 1"),
    ("rounds: true\n", "rounds", "expected an integer"),
    ("rounds: 2.5\n", "rounds", "expected an integer"),
    ("g_budget: [0.5]\n", "g_budget", "expected a fraction"),
    ("g_budget: 150%\n", "g_budget", "at most 100%"),
    ("g_budget: -1ms\n", "g_budget", "must be positive"),
    ("d_budget: .nan\n", "d_budget", "must be positive and finite"),
    ("d_budget: 0\n", "d_budget", "must be positive"),
    ("dataroot: 5\n", "dataroot", "expected a path"),
    ("dataroot: ''\n", "dataroot", "expected a path"),
    ("l1_weight: .inf\n", "l1_weight", "expected a finite number"),
    ("l1_weight: -0.5\n", "l1_weight", "must be >= 0"),
    ("mode: sideways\n", "mode", "expected one of aligned, unaligned"),
    ("calib_images: 0\n", "calib_images", "must be >= 1"),
    ("calib-batch: 0\n", "calib_batch", "must be >= 1"),
    ("ngf: 0\n", "ngf", "must be >= 1"),
    ("ngf: -8\n", "ngf", "must be >= 1"),
    ("ngf: '8x'\n", "ngf", "expected an integer"),
    ("g_arch: 5\n", "g_arch", "expected text"),
    ("seed: -1\n", "seed", "must be >= 0"),
    ("finetune_steps: 1.5\n", "finetune_steps", "expected an integer"),
    ("eval_images: 0\n", "eval_images", "must be >= 1"),
    ("latency: yes please\n", "latency", "expected true or false"),
    ("allow_arch: [5]\n", "allow_arch", "expected text or a list of text"),
    ("roundz: 3\n", "roundz", "unknown option"),
])
def test_bad_config_values_are_one_line_naming_the_option(tmp_path, capsys, text, name, expected):
    config = tmp_path / "c.yaml"
    config.write_text("dataroot: nowhere\n" + text, encoding="utf-8")
    assert main(["prune", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys, str(config), name, expected)
    assert "nowhere" not in err                      # refused before anything looked at the data
    assert not (tmp_path / "out").exists()           # ... or wrote anything


@pytest.mark.parametrize("content, expected", [
    (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n", "aliases"),
    (b"rounds: 5\ndataroot: caf\xe9\n", "not UTF-8"),
    (b"rounds: [1, 2\n", "not valid YAML"),
    (b"- rounds\n- 5\n", "expected a mapping"),
])
def test_unreadable_configs_are_one_line(tmp_path, capsys, content, expected):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    assert main(["search", "--config", str(config)]) == 2
    _one_line_error(capsys, str(config), expected)
    assert config.read_bytes() == content            # input never modified


def test_empty_config_is_no_options(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("# nothing yet\n")
    assert read_config(config) == {}


# --------------------------------------------------------------------------- command line

@pytest.mark.parametrize("argv, name, expected", [
    (["search", "--dataroot", "D", "--calib-images", "0"], "--calib-images", "must be >= 1 (got 0)"),
    (["search", "--dataroot", "D", "--calib-batch", "0"], "--calib-batch", "must be >= 1 (got 0)"),
    (["search", "--dataroot", "D", "--rounds", "2.5"], "--rounds", "expected an integer, got '2.5'"),
    (["search", "--dataroot", "D", "--rounds", "many"], "--rounds", "expected an integer"),
    (["search", "--dataroot", "D", "--ngf", "0"], "--ngf", "must be >= 1"),
    (["search", "--dataroot", "D", "--ngf", "-64"], "--ngf", "must be >= 1"),
    (["search", "--dataroot", "D", "--g-budget", "150%"], "--g-budget", "at most 100%"),
    (["search", "--dataroot", "D", "--g-budget", "-1ms"], "--g-budget", "must be positive"),
    (["search", "--dataroot", "D", "--l1-weight", "nan"], "--l1-weight", "finite"),
    (["search", "--dataroot", "D", "--mode", "sideways"], "--mode", "expected one of aligned, unaligned"),
    (["archs", "--size", "0"], "--size", "must be >= 1 (got 0)"),
    (["space", "--arch", "unet_64", "--ngf", "0"], "--ngf", "must be >= 1"),
    (["export", "--generator", "G", "--onnx", "x.onnx", "--opset", "99"], "--opset", "between 7 and 23"),
    (["export", "--generator", "G", "--onnx", "x.onnx", "--opset", "6"], "--opset", "between 7 and 23"),
    (["export", "--generator", "G", "--onnx", "x.onnx", "--ngf", "0"], "--ngf", "must be >= 1"),
    (["eval", "--pruned", "P", "--dataroot", "D", "--batch-size", "0"], "--batch-size", "must be >= 1"),
    (["finetune", "--pruned-g", "P", "--lr", "inf"], "--lr", "finite"),
    (["finetune", "--pruned-g", "P", "--beta1", "1.5"], "--beta1", "between 0 and 1"),
    (["finetune", "--pruned-g", "P", "--recipe-option", "novalue"], "--recipe-option", "KEY=VALUE"),
    (["train-teacher", "--dataroot", "D", "--out", "O", "--steps", "-1"], "--steps", "must be >= 0"),
    (["train-teacher", "--dataroot", "D", "--out", "O", "--log-every", "0"], "--log-every", "must be >= 1"),
    (["data", "make-demo", "O", "--seed", "x"], "--seed", "expected an integer"),
    (["nni", "run", "--dataroot", "D", "--out", "O", "--port", "70000"], "--port", "between 1 and 65535"),
    (["nni", "trial", "--dataroot", "D", "--infeasible-penalty", "-1"], "--infeasible-penalty", "must be >= 0"),
])
def test_bad_command_line_values_are_one_line_naming_the_option(tmp_path, capsys, monkeypatch, argv, name, expected):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, name, expected)
    assert list(tmp_path.iterdir()) == []             # nothing was written


def test_command_line_overrides_config_and_both_are_checked(tmp_path, capsys):
    from ganprune.cli import parse
    config = tmp_path / "c.yaml"
    config.write_text("rounds: 7\ng-budget: 30%\nfill: false\n")
    args, _ = parse(["search", "--config", str(config), "--rounds", "9"])
    assert (args.rounds, args.g_budget, args.fill, args.calib_images) == (9, "30%", False, 16)
    args, _ = parse(["search", "--config", str(config), "--fill"])
    assert args.fill is True and args.rounds == 7


# --------------------------------------------------------------------------- Python API and NNI

@pytest.mark.parametrize("values, name", [
    ({"rounds": 2.5}, "rounds"), ({"fill": "false"}, "fill"), ({"g_budget": [0.5]}, "g_budget"),
    ({"dataroot": 5}, "dataroot"), ({"calib_images": 0}, "calib_images"), ({"ngf": 0}, "ngf"),
    ({"size": -3}, "size"), ({"m": float("nan")}, "m"), ({"g_agent": None}, "g_agent"),
])
def test_api_and_nni_refuse_the_same_values(tmp_path, values, name):
    for call in (lambda: run_pipeline({"dataroot": "D", **values}, tmp_path / "out", progress=False),
                 lambda: resolve_config(values),
                 lambda: Setup(**{"dataroot": "D", **values}),
                 lambda: ganprune.nni.experiment.run_experiment(None, tmp_path / "nni", **{"dataroot": "D", **values})):
        with pytest.raises(UserError, match=rf"^{name}\b|: {name}\b") as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "nni").exists()


def test_nni_trial_config_is_checked(tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text("dataroot: D\ncalib-images: 0\n")
    with pytest.raises(UserError, match=r"trial\.yaml: calib_images must be >= 1"):
        load_options(config)
    config.write_text("- dataroot\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_options(config)


def test_resolve_converts_text_numbers_and_fills_defaults():
    o = resolve(SEARCH, {"rounds": "12", "l1-weight": "0.5", "g_budget": 0.3})
    assert o["rounds"] == 12 and o["l1_weight"] == 0.5 and o["g_budget"] == 0.3 and o["seed"] == 0
    assert isinstance(resolve(SEARCH, {"l1_weight": 1})["l1_weight"], float)
    assert resolve(FINETUNE, {"recipe_option": ["w=0.3", "aug=[noise, jitter]"]})["recipe_options"] == \
        {"w": 0.3, "aug": ["noise", "jitter"]}   # recipe_option (the flag's old spelling) is an alias
    assert resolve(FINETUNE, {"recipe_options": {"w": 1}})["recipe_options"] == {"w": 1}


def test_every_declared_default_passes_its_own_check():
    for schema in (SEARCH, PIPELINE, NNI, FINETUNE, TEACHER):
        names = [o.name for o in schema]
        assert len(names) == len(set(names))
        for o in schema:
            assert check(o, o.default) == o.default


def test_option_check_edges():
    count = Option("n", 1, "int", min=1, max=3)
    assert check(count, "3") == 3 and check(count, 2) == 2
    for bad in (0, 4, 2.0, True, "2.0", None, [2]):
        with pytest.raises(UserError, match="^n"):
            check(count, bad)
    ratio = Option("r", 0.5, "float", min=0, max=1)
    assert check(ratio, 1) == 1.0 and check(ratio, "0.25") == 0.25
    for bad in (math.inf, -math.inf, math.nan, -0.1, "x", False):
        with pytest.raises(UserError, match="^r"):
            check(ratio, bad)


def test_models_refuse_sizes_the_api_would_build_empty_or_huge():
    for bad in ({"ngf": 0}, {"ngf": -8}, {"ngf": 8.0}, {"ngf": 10 ** 6}, {"input_nc": 0}, {"output_nc": True}):
        with pytest.raises(UserError, match=next(iter(bad))):
            ganprune.load_generator(None, arch="unet_64", **bad)
    with pytest.raises(UserError, match="n_layers"):
        ganprune.load_discriminator(None, arch="n_layers", n_layers=0)
    assert isinstance(ganprune.load_generator(None, arch="unet_64", ngf=1), torch.nn.Module)


def test_nni_parameters_that_are_not_a_mapping_are_refused():
    from ganprune.nni.space import from_params
    for bad in ([["G/x", 8]], "G/x=8", 5):
        with pytest.raises(UserError, match="NNI parameters: expected a mapping"):
            from_params(bad, None, None)


def test_allow_arch_from_a_pipeline_config_is_honoured(monkeypatch):
    """The API takes the same allow_arch as --allow-arch: a class path a file names may then be built."""
    from ganprune.models import registry
    from ganprune.train.pair import pair_from_options
    monkeypatch.setattr(registry, "_ALLOWED_CLASS_PATHS", set())
    c = resolve_config({"allow_arch": "torch.nn:Identity"})
    assert c["allow_arch"] == ["torch.nn:Identity"]
    with pytest.raises(UserError, match="give a teacher folder"):
        pair_from_options(c)                     # no pair given; the allow-list was applied first
    registry.check_arch_allowed("torch.nn:Identity", "a file")
    with pytest.raises(UserError, match="refused"):
        registry.check_arch_allowed("torch.nn:Linear", "a file")


def test_every_option_of_every_command_says_its_default():
    from ganprune.cli import COMMANDS, build_parser
    build_parser()
    for name, (_, schema, _) in COMMANDS.items():
        for option in schema:
            if not option.positional:
                from ganprune.cli import option_help
                assert "default" in option_help(option), (name, option.name)
    parser, leaves = build_parser()
    text = leaves["finetune"].format_help()
    assert "(default 0.0002)" in text and "(default 0.5)" in text and "--mode" in text and "--dataset-mode" in text


def test_dataset_mode_is_mode_and_agent_options_come_from_cli_and_config(tmp_path):
    from ganprune.cli import parse
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset_mode: unaligned\ng_agent_options: {patience: 4}\nrecipe: cyclegan\n"
                   "infeasible-penalty: 2.0\n")
    args, _ = parse(["finetune", "--config", str(cfg)])
    assert args.mode == "unaligned" and args.recipe == "cyclegan"
    args, _ = parse(["search", "--config", str(cfg), "--g-agent-option", "rounds=1", "--d-agent-option", "refine=false"])
    assert args.mode == "unaligned" and args.g_agent_options == {"rounds": 1} and args.d_agent_options == {"refine": False}
    args, _ = parse(["search", "--config", str(cfg)])
    assert args.g_agent_options == {"patience": 4}
    args, _ = parse(["nni", "run", "--config", str(cfg)])
    assert args.infeasible_penalty == 2.0                 # the NNI key is the nni commands'; search left it alone
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 1\n")
    with pytest.raises(UserError, match="unknown option 'no_such_option'"):
        parse(["search", "--config", str(bad)])


def test_threads_are_set_before_torch_loads():
    import os
    import subprocess
    import sys
    code = ("import os, sys\nfrom ganprune.cli import main\nassert 'torch' not in sys.modules\n"
            "rc = main(['--threads', '1', 'agents'])\nimport torch\n"
            "print(rc, os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-4:] == ["0", "PASSIVE", "1", "1"]
    from ganprune.core.threads import physical_cores
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_the_conditional_d_fact_is_set_once_in_the_d_spec(tmp_path):
    """Whether D sees cat(A, B) is written in the D spec when the pair is loaded (options or checkpoint)
    and read from there; only a spec without it makes the one helper look at D's first conv."""
    from ganprune.models.checkpoint import load_discriminator, save_checkpoint
    from ganprune.models.registry import conditional_d
    from ganprune.core.options import PAIR, pair_specs
    from ganprune.train.pair import load_pair
    o = resolve(PAIR, {"generator": "g.pth"})
    assert pair_specs(o)[1]["conditional"] is True and pair_specs(o)[1]["input_nc"] == 6
    o = resolve(PAIR, {"generator": "g.pth", "unconditional_d": True})
    assert pair_specs(o)[1]["conditional"] is False and pair_specs(o)[1]["input_nc"] == 3
    D6 = load_discriminator(None, ndf=4, input_nc=6)
    assert conditional_d({"conditional": False}, D6) is False   # the spec wins: D is not consulted
    assert conditional_d({}, D6, 3, 3) is True and conditional_d(None, load_discriminator(None, ndf=4, input_nc=3)) is False
    with pytest.raises(UserError, match="takes 6 channels"):
        conditional_d({}, D6, 1, 1)
    save_checkpoint(tmp_path / "g.pth", ganprune.load_generator(None, arch="unet_64", ngf=4))
    save_checkpoint(tmp_path / "d.pth", D6)
    *_, d_spec = load_pair(None, tmp_path / "g.pth", tmp_path / "d.pth", {"arch": "unet_64", "ngf": 4},
                           {"arch": "basic", "ndf": 4})
    assert d_spec["conditional"] is True   # read from D once, at load time, and carried from then on
