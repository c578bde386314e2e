import pytest
import torch

from ganprune.core.errors import UserError
from ganprune.deploy.export import export_onnx
from ganprune.metrics.complexity import complexity, macs_params
from ganprune.metrics.latency import measure_latency, parse_backend
from ganprune.models.checkpoint import load_discriminator, load_generator


def test_measure_latency_rows_for_modules_and_onnx_files(tmp_path):
    g = load_generator(arch="unet_64", ngf=8)
    d = load_discriminator(ndf=8, input_nc=3)
    onnx_path = tmp_path / "d.onnx"
    export_onnx(d, onnx_path, torch.randn(1, 3, 64, 64), check=False, parity=False)
    before = torch.get_num_threads()
    df = measure_latency({"g": g, "d": d, "d_file": onnx_path}, (1, 3, 64, 64), threads=1, warmup=1, repeats=2,
                         backends=("torch", "torch+fold+cl", "onnxruntime"), progress=False)
    assert torch.get_num_threads() == before
    # the ONNX file has no torch rows
    assert list(zip(df.model, df.backend)) == [("g", "torch"), ("g", "torch+fold+cl"), ("g", "onnxruntime"),
                                               ("d", "torch"), ("d", "torch+fold+cl"), ("d", "onnxruntime"),
                                               ("d_file", "onnxruntime")]
    assert (df.threads == 1).all() and (df.repeats == 2).all() and (df.input == "1x3x64x64").all()
    assert (df.median_ms > 0).all() and (df.p90_ms >= df.median_ms).all() and (df.min_ms <= df.median_ms).all()
    assert g.training  # untouched


@pytest.mark.parametrize("backend", ["tensorrt", "torch+fast", "onnxruntime+fold", "onnxruntime+basic+all"])
def test_bad_backend_is_a_user_error(backend):
    with pytest.raises(UserError, match="backend"):
        parse_backend(backend)


def test_parse_backend():
    assert parse_backend("torch+fold+cl") == ("torch", {"fold", "cl"})
    assert parse_backend("onnxruntime+basic") == ("onnxruntime", {"basic"})


def test_model_that_cannot_take_the_input_is_a_user_error():
    with pytest.raises(UserError, match="'d' cannot run on an input of shape"):
        measure_latency({"d": load_discriminator(ndf=8)}, (1, 3, 64, 64), repeats=1, progress=False)


def test_missing_onnx_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="ONNX file not found"):
        measure_latency({"x": tmp_path / "nope.onnx"}, (1, 3, 64, 64), repeats=1, progress=False)


def test_complexity_matches_a_hand_count():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False))
    macs, params = macs_params(net, torch.zeros(1, 3, 16, 16))
    assert params == 8 * 3 * 9 and macs == 8 * 3 * 9 * 16 * 16
    c = complexity(load_discriminator(ndf=8), (1, 6, 64, 64))
    assert c["params"] == sum(p.numel() for p in load_discriminator(ndf=8).parameters())
    assert c["GMACs"] == pytest.approx(c["macs"] / 1e9)


@pytest.mark.slow
def test_latency_table_channel_forms_predict_and_roundtrip(tmp_path):
    from torch import nn

    from ganprune.metrics.latency import LatencyTable, _affine
    from ganprune.pruning.physical import prune
    from ganprune.pruning.space import SearchSpace
    net = load_generator(arch="unet_64", ngf=8)
    x = torch.zeros(1, 3, 64, 64)
    space = SearchSpace.from_model(net, x, arch="unet_64")
    table = LatencyTable.build(net, space, x, threads=1, fractions=(0.5, 1.0), calibrate=(1.0, 0.5),
                               random_slices=1, repeats=2, progress=False)
    assert table.data["backend"] == "onnxruntime"      # the default: the exported file, as shipped
    layers = table.data["layers"]
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in net.modules())
    # the affine channel forms reproduce the physically pruned convs, skip concatenations included
    widths = {g.name: g.choices[i % len(g.choices)] for i, g in enumerate(space.groups)}
    pruned = prune(net, widths, x)
    convs = [m for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    full = {**space.full_widths(), **widths}
    assert [(_affine(layer["in_form"], full), _affine(layer["out_form"], full)) for layer in layers] == \
        [(m.in_channels, m.out_channels) for m in convs]
    cal = table.calibration()
    assert list(cal.slice) == ["uniform 1", "uniform 0.5", "random 0"] and (cal.measured_ms > 0).all()
    s, a, b = table.data["fit"]
    assert s >= 0 and b >= 0 and (cal.predicted_ms > 0).all()
    dense_ms, small_ms = table.predict({}), table.predict(space.uniform(0.125))
    assert 0 < small_ms and 0 < dense_ms
    path = tmp_path / "table.yaml"
    table.save(path)
    again = LatencyTable.load(path)
    assert again.predict(widths) == pytest.approx(table.predict(widths))
    with pytest.raises(UserError, match="unknown group"):
        table.predict({"nope": 8})


def test_interleaved_warm_calls_time_only_the_last_call_of_each_turn():
    import time

    from ganprune.core.timing import interleaved
    calls = {"a": 0, "b": 0}

    def runner(name, slow_first):
        def run():
            calls[name] += 1
            if slow_first and calls[name] % 2 == 1:    # the untimed call of each turn is the slow one
                time.sleep(0.02)
        return (name, "x", run)
    times = interleaved([runner("a", True), runner("b", False)], warmup=1, repeats=3, progress=False, calls=2)
    assert calls == {"a": 8, "b": 8} and [len(t) for t in times] == [3, 3]
    assert min(times[0]) < 0.01                        # the sleeping calls were not timed (each would be >= 0.02)


def test_whole_model_fit_recovers_a_negative_intercept_and_leaves_out_a_preempted_slice():
    from ganprune.metrics.latency import _fit_whole_model
    # convs timed one by one cost 0.05 ms each more than inside the graph (12 convs: a = -0.6)
    rows = [{"convs_ms": c, "activations": act, "measured_ms": 1.1 * c - 0.6 + 2e-5 * act}
            for c, act in ((1.0, 3e4), (1.5, 6e4), (2.0, 4e4), (3.0, 9e4), (4.0, 7e4), (6.0, 1.2e5))]
    assert _fit_whole_model(rows) == pytest.approx([1.1, -0.6, 2e-5], rel=1e-6)
    assert not any("left_out" in row for row in rows)
    rows[5]["measured_ms"] += 4.0                       # one scheduler slice in every round of the dense slice
    assert _fit_whole_model(rows) == pytest.approx([1.1, -0.6, 2e-5], rel=1e-6)
    assert [bool(row.get("left_out")) for row in rows] == [False] * 5 + [True]


def test_op_profiles_name_the_op_types_and_sum_to_the_call():
    from ganprune.deploy.fuse import fold_batchnorm
    from ganprune.metrics.op_profile import op_breakdown, ort_op_times, torch_op_times
    d = load_discriminator(ndf=8, input_nc=3).eval()
    x = torch.randn(1, 3, 64, 64)
    import tempfile
    with tempfile.TemporaryDirectory() as workdir:
        export_onnx(d, f"{workdir}/d.onnx", x, check=False, parity=False)
        ort = ort_op_times(f"{workdir}/d.onnx", x, threads=1, runs=3, warmup=1)
    assert "Conv" in ort and all(ms > 0 for ms in ort.values())
    assert max(ort, key=ort.get) == "Conv"           # a PatchGAN's time is its convs
    tch = torch_op_times(fold_batchnorm(d), x, threads=1, runs=2, warmup=1)
    assert any("conv" in op for op in tch) and all(ms > 0 for ms in tch.values())
    table = op_breakdown({"Conv": 10.0, "Relu": 1.0}, {"Conv": 1.0, "Relu": 1.0}, macs_reduction=10.0)
    assert table.set_index("op").loc["Conv", "eff"] == pytest.approx(1.0)
    assert table.set_index("op").loc["Relu", "eff"] == pytest.approx(0.1)   # kept its cost
    assert table["share of pruned %"].sum() == pytest.approx(100.0)


@pytest.mark.parametrize("backend", ["openvino", "executorch"])
def test_optional_runtime_backends_time_modules(backend):
    from ganprune.metrics.latency import available_backends
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    d = load_discriminator(ndf=8, input_nc=3)
    df = measure_latency({"d": d}, (1, 3, 64, 64), threads=1, warmup=1, repeats=2, backends=(backend, "onnxruntime"),
                         progress=False)
    assert list(df.backend) == [backend, "onnxruntime"] and (df.median_ms > 0).all()
    assert len(df.attrs["times_ms"][("d", backend)]) == 2
