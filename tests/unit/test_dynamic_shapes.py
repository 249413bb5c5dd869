"""ONNX models with dynamic dimensions (-1 batch as Paddle writes it, symbolic height and width)
through bench, compile, quantize and a study, with and without a concrete input shape."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.core.errors import InputError
from edgeopt.core.tensors import TensorSpec
from helpers import edgeopt_cli

SHAPE = (1, 3, 16, 24)
DECLARED = "[-1, 3, ?, ?]"


def dynamic_conv_net(path, second_input_rank: int | None = None):
    """Conv -> (x sr) -> Relu -> global pool -> MatMul + bias, input x of shape (-1, 3, ?, ?);
    with ``second_input_rank``, a second input ``sr`` of that rank (0: a scalar) scales the conv."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "fw"),
             numpy_helper.from_array(np.full(4, 0.1, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])]
    last = "c"
    if second_input_rank is not None:
        nodes.append(helper.make_node("Mul", ["c", "sr"], ["cs"], name="scale"))
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.FLOAT, [1] * second_input_rank))
        last = "cs"
    nodes += [helper.make_node("Relu", [last], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "fw"], ["m"], name="fc"),
              helper.make_node("Add", ["m", "fb"], ["y"], name="fc_bias")]
    graph = helper.make_graph(nodes, "dynamic", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def dynamic(tmp_path):
    return dynamic_conv_net(tmp_path / "dyn.onnx")


def calibration(tmp_path, n=8):
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(1).standard_normal((n, *SHAPE[1:])).astype(np.float32))
    return path


def test_shapes_are_parsed_and_checked_against_the_declared_ones():
    from edgeopt.compile.onnx_shapes import parse_input_shape, resolve_input_shapes

    assert parse_input_shape("1,3,48,320") == (1, 3, 48, 320)
    assert parse_input_shape(["x=1,3,48,320", "sr=1"]) == {"x": (1, 3, 48, 320), "sr": (1,)}
    assert parse_input_shape({"x": [1, 3, 48, 320], "sr": [1]}) == {"x": (1, 3, 48, 320), "sr": (1,)}
    specs = [TensorSpec("x", ["-1", 3, "h", "w"], "float32"), TensorSpec("sr", [1], "float32")]
    assert resolve_input_shapes(specs, ["x=1,3,48,320"]) == {"x": [1, 3, 48, 320], "sr": [1]}
    with pytest.raises(InputError, match=r"input 'x' has declared shape \[-1, 3, h, w\]; --input-shape "
                       r"\(recipe: input_shape\) gives \[1, 4, 48, 320\] \(dim 1 is fixed at 3\)"):
        resolve_input_shapes(specs, {"x": [1, 4, 48, 320]})
    with pytest.raises(InputError, match=r"input 'x' has declared shape \[-1, 3, h, w\] with dynamic "
                       r"dimension\(s\) 0, 2, 3; pass a concrete shape with --input-shape"):
        resolve_input_shapes(specs, None)
    with pytest.raises(InputError, match="the model has 2 inputs .* by name"):
        resolve_input_shapes(specs, "1,3,48,320")
    with pytest.raises(InputError, match="no input 'y'; its inputs are x, sr"):
        resolve_input_shapes(specs, ["y=1"])
    with pytest.raises(InputError, match="malformed"):
        parse_input_shape("1,3,a")
    # a dynamic batch alone may stay dynamic
    assert resolve_input_shapes([TensorSpec("x", ["-1", 3, 8, 8], "float32")], None) == {"x": ["batch", 3, 8, 8]}


def test_onnx_flops_take_the_shape_and_never_count_a_minus_one(dynamic):
    from edgeopt.compress import onnx_flops

    conv = 2 * 8 * 3 * 9 * 16 * 24
    assert onnx_flops(dynamic, "1,3,16,24") >= conv
    with pytest.raises(InputError, match="no static shape.*input_shape"):
        onnx_flops(dynamic)


def test_bench_times_the_given_shape(dynamic, tmp_path):
    from edgeopt.pipeline.bench import bench_inputs
    from edgeopt.runtimes import load

    r = edgeopt_cli("bench", dynamic, "--repeat", "2", "--warmup", "0")
    assert r.returncode == 2, r.stderr
    assert f"input 'x' has declared shape {DECLARED}" in r.stderr and "--input-shape" in r.stderr
    assert "Traceback" not in r.stderr
    r = edgeopt_cli("bench", dynamic, "--repeat", "2", "--warmup", "0", "--input-shape", "1,4,16,24")
    assert r.returncode == 2 and "dim 1 is fixed at 3" in r.stderr, r.stderr
    r = edgeopt_cli("bench", dynamic, "--repeat", "2", "--warmup", "0", "--input-shape", "1,3,16,24",
                    "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b.json").read_text())["latency_ms"]["n"] == 2
    assert [a.shape for a in bench_inputs(load(dynamic), "1,3,16,24")] == [SHAPE]


def test_compile_fixes_the_dims_before_tvm(dynamic, tmp_path):
    from edgeopt.runtimes import load

    r = edgeopt_cli("compile", dynamic, "--out", tmp_path / "no-shape")
    assert r.returncode == 2, r.stderr
    assert f"input 'x' has declared shape {DECLARED}" in r.stderr and "--input-shape" in r.stderr
    assert not (tmp_path / "no-shape").exists()
    r = edgeopt_cli("compile", dynamic, "--out", tmp_path / "art", "--input-shape", "x=1,3,16,24")
    assert r.returncode == 0, r.stderr
    tvm = load(tmp_path / "art")
    assert tvm.inputs[0].shape == list(SHAPE)
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(tvm.run(x)[0], load(dynamic).run(x)[0], rtol=1e-4, atol=1e-5)


def test_quantize_calibrates_at_the_given_shape_and_leaves_the_cwd_clean(dynamic, tmp_path):
    from edgeopt.runtimes import load

    calib, cwd = calibration(tmp_path), tmp_path / "cwd"
    cwd.mkdir()
    r = edgeopt_cli("compress", "quantize", dynamic, "--calibration-data", calib, "--out", tmp_path / "q0",
                    cwd=cwd)
    assert r.returncode == 2, r.stderr
    assert f"input 'x' has declared shape {DECLARED}" in r.stderr and "--input-shape" in r.stderr
    assert not (tmp_path / "q0").exists()
    r = edgeopt_cli("compress", "quantize", dynamic, "--calibration-data", calib, "--out", tmp_path / "q",
                    "--input-shape", "1,3,16,24", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "costliest quantized layers" in r.stdout
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npy", "cwd", "dyn.onnx", "q"]
    history = json.loads((tmp_path / "q" / "manifest.json").read_text())["history"]
    assert history[-1]["metrics"]["calibration_samples"] == 8
    runner = load(tmp_path / "q")
    assert runner.inputs[0].shape == list(SHAPE)
    assert runner.run(np.zeros(SHAPE, np.float32))[0].shape == (1, 4)


def test_what_onnxruntime_preprocessing_writes_goes_to_the_temporary_folder(dynamic, tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx (with external
    data) in the working directory when it gives up; quantize runs it elsewhere."""
    import onnxruntime.quantization as oq

    from edgeopt.compress import QuantizeConfig, quantize

    real = oq.quant_pre_process

    def gives_up_like_onnxruntime(src, dst, skip_symbolic_shape=False, **kw):
        if not skip_symbolic_shape:
            onnx.save(onnx.load(src), "sym_shape_infer_temp.onnx", save_as_external_data=True,
                      size_threshold=0)
            raise Exception("Incomplete symbolic shape inference")
        return real(src, dst, skip_symbolic_shape=skip_symbolic_shape, **kw)

    monkeypatch.setattr(oq, "quant_pre_process", gives_up_like_onnxruntime)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    x = np.random.default_rng(3).standard_normal((4, *SHAPE[1:])).astype(np.float32)
    quantize(dynamic, QuantizeConfig(debug_layers=0), x, out=tmp_path / "q.onnx", input_shape=SHAPE)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "dyn.onnx", "q.onnx"]


@pytest.mark.parametrize("rank", [0, 1])
def test_quantize_with_the_debugger_takes_a_scalar_like_second_input(tmp_path, rank):
    model = dynamic_conv_net(tmp_path / "two.onnx", second_input_rank=rank)
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, *SHAPE[1:])).astype(np.float32),
             sr=np.full((8,) + (1,) * rank, 1.5, np.float32))
    shapes = ["--input-shape", "x=1,3,16,24"] + (["--input-shape", "sr=1"] if rank else [])
    r = edgeopt_cli("compress", "quantize", model, "--calibration-data", tmp_path / "calib.npz",
                    "--out", tmp_path / "q", *shapes)
    assert r.returncode == 0, r.stderr
    assert "costliest quantized layers (2 measured" in r.stdout, r.stdout


@pytest.mark.slow  # a whole study: two TVM builds and four timed pairs (half a minute)
def test_a_study_of_a_dynamic_model_on_onnxruntime_and_tvm(dynamic, tmp_path):
    recipe = (f"model: {dynamic}\ntask: random\nINPUT_SHAPE"
              "variants:\n  fp32: []\n  int8: [{quantize: {method: minmax, debug_layers: 0}}]\n"
              "targets: [{runtime: onnxruntime}, {runtime: tvm, target: cpu}]\n"
              "bench: {warmup: 1, repeat: 2}\n")
    (tmp_path / "none.yaml").write_text(recipe.replace("INPUT_SHAPE", ""))
    r = edgeopt_cli("run", tmp_path / "none.yaml", "--out", tmp_path / "none")
    assert r.returncode == 2, r.stderr
    assert f"input 'x' has declared shape {DECLARED}" in r.stderr and "input_shape in the recipe" in r.stderr
    assert not (tmp_path / "none").exists()
    (tmp_path / "r.yaml").write_text(recipe.replace("INPUT_SHAPE", "input_shape: {x: [1, 3, 16, 24]}\n"))
    r = edgeopt_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    variants = json.loads((tmp_path / "out" / "report.json").read_text())["variants"]
    assert len(variants) == 4 and all(v.get("status") != "failed" for v in variants)
    assert all(v["flops"] >= 2 * 8 * 3 * 9 * 16 * 24 for v in variants)


def test_a_recipe_takes_one_shape_per_onnx_input_by_name(dynamic):
    from edgeopt.pipeline.recipe import parse_recipe

    body = "task: random\nvariants: {fp32: []}\ntargets: [{runtime: onnxruntime}]\n"
    recipe = parse_recipe(f"model: {dynamic}\ninput_shape: {{x: [1, 3, 48, 320]}}\n" + body)
    assert recipe.input_shape == {"x": (1, 3, 48, 320)}
    assert parse_recipe(f"model: {dynamic}\ninput_shape: [1, 3, 48, 320]\n" + body).input_shape == (1, 3, 48, 320)
    with pytest.raises(InputError, match="line 2: 'input_shape' by input name is for ONNX models"):
        parse_recipe("model: zoo:digits_cnn\ninput_shape: {x: [1, 1, 32, 32]}\n" + body)
    with pytest.raises(InputError, match=r"line 2: 'input_shape.x' must be positive"):
        parse_recipe(f"model: {dynamic}\ninput_shape: {{x: [1, 0, 48, 320]}}\n" + body)
