"""A study of an ONNX model with several inputs (a streaming voice-activity model takes audio, its
recurrent state and the sample rate): the task .npz holds one array per input, named as it, and
every step that feeds inputs (calibration, evaluation, timing, the TVM build) takes them all."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.core.errors import InputError
from helpers import edgeopt_cli

N = 80


def streaming_net(path, branch: bool = False):
    """``input`` (?, 8) audio, ``state`` (2, ?, 4) and ``sr`` (an int64 scalar) ->
    ``output`` (?, 1), a sigmoid probability, and ``stateN`` (2, ?, 4), the next state: the shape
    of silero-vad's interface, dynamic dims included. ``branch``: as silero-vad, an ``If`` on the
    sample rate (16 kHz: the features as they are, else negated)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32) * 0.5, "w"),
             numpy_helper.from_array(rng.standard_normal((4, 1)).astype(np.float32), "v"),
             numpy_helper.from_array(np.array(1 / 16000, np.float32), "per_hz")]
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"]),
             helper.make_node("ReduceMean", ["state"], ["s"], axes=[0], keepdims=0),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["srf", "per_hz"], ["scale"]),
             helper.make_node("Add", ["h", "s"], ["hs"]),
             helper.make_node("Mul", ["hs", "scale"], ["z0"]),
             helper.make_node("Tanh", ["z0"], ["z" if not branch else "zt"]),
             helper.make_node("MatMul", ["z", "v"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["output"]),
             helper.make_node("Add", ["state", "z"], ["next"]),
             helper.make_node("Tanh", ["next"], ["stateN"])]
    if branch:
        then = helper.make_graph([helper.make_node("Identity", ["zt"], ["z_then"])], "then", [],
                                 [helper.make_tensor_value_info("z_then", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Neg", ["zt"], ["z_else"])], "else", [],
                                  [helper.make_tensor_value_info("z_else", TensorProto.FLOAT, None)])
        inits.append(numpy_helper.from_array(np.array(16000, np.int64), "rate16k"))
        nodes[7:7] = [helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
                      helper.make_node("If", ["is16k"], ["z"], then_branch=then, else_branch=other, name="rate_branch")]
    graph = helper.make_graph(
        nodes, "streaming",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def task_arrays(**change) -> dict:
    """One array per input, one sample per row, each row the input's whole shape."""
    rng = np.random.default_rng(1)
    arrays = {"input": rng.standard_normal((N, 1, 8)).astype(np.float32),
              "state": np.tanh(rng.standard_normal((N, 2, 1, 4))).astype(np.float32),
              "sr": np.full(N, 16000, np.int64),
              "outputs": json.dumps([{"name": "speech", "kind": "regression"}, {"name": "state", "kind": "regression"}])}
    arrays.update(change)
    return {k: v for k, v in arrays.items() if v is not None}


RECIPE = ("model: {model}\ntask: {task}\ninput_shape: {{input: [1, 8], state: [2, 1, 4]}}\n"
          "variants:\n  fp32: []\n  int8: [{{quantize: {{method: minmax}}}}]\n"
          "targets: [{targets}]\nbench: {{warmup: 1, repeat: 2}}\n")


def write_recipe(tmp_path, targets="{runtime: onnxruntime}", **change):
    model = streaming_net(tmp_path / "stream.onnx")
    np.savez(tmp_path / "task.npz", **task_arrays(**change))
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(model=model, task=tmp_path / "task.npz", targets=targets))
    return path


def test_a_task_of_named_input_arrays_splits_them_together(tmp_path):
    from edgeopt.pipeline.task_types import sample
    from edgeopt.pipeline.tasks import load_task

    np.savez(tmp_path / "t.npz", **task_arrays())
    shapes = {"input": (1, 8), "state": (2, 1, 4), "sr": ()}
    task = load_task(str(tmp_path / "t.npz"), seed=3, input_shape=shapes)
    assert task.input_shape == shapes and not task.labelled
    assert sorted(task.test.x) == ["input", "sr", "state"]
    assert sum(len(getattr(task, s)) for s in ("train", "val", "calib", "test")) == N
    feed = sample(task.calib.x, 0)
    assert feed["state"].shape == (2, 1, 4) and feed["sr"].dtype == np.int64 and feed["sr"].shape == ()
    # rows stay together: each split's input and state rows come from the same original sample
    original = task_arrays()
    row = int(np.flatnonzero((original["input"] == task.test.x["input"][0]).all(axis=(1, 2)))[0])
    assert np.array_equal(original["state"][row], task.test.x["state"][0])


@pytest.mark.parametrize("change, message", [
    ({"state": None}, r"has no array for input\(s\) \['state'\]; the model takes inputs \['input', 'state', 'sr'\]"),
    ({"extra": np.zeros(N)}, r"array\(s\) \['extra'\] that are no input of the model"),
])
def test_a_task_missing_an_input_names_it_and_the_expected_names(tmp_path, change, message):
    from edgeopt.pipeline.tasks import load_task

    np.savez(tmp_path / "t.npz", **task_arrays(**change))
    with pytest.raises(InputError, match=message):
        load_task(str(tmp_path / "t.npz"), input_shape={"input": (1, 8), "state": (2, 1, 4), "sr": ()})


@pytest.mark.parametrize("change, message", [
    ({"state": None}, "has no array for input(s) ['state']; the model takes inputs ['input', 'state', 'sr']"),
    ({"sr": np.full(N, 16000.0, np.float32)}, "gives input 'sr' as float32 samples of shape (); the model takes int64"),
    ({"state": np.zeros((N, 2, 4), np.float32)}, "gives input 'state' as float32 samples of shape (2, 4); "
                                                 "the model takes float32 of shape (2, 1, 4)"),
])
def test_a_study_refuses_a_task_that_does_not_fit_the_inputs(tmp_path, change, message):
    r = edgeopt_cli("run", write_recipe(tmp_path, **change), "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_one_array_for_a_model_with_several_inputs_is_refused(tmp_path):
    model = streaming_net(tmp_path / "stream.onnx")
    np.savez(tmp_path / "x.npz", x=np.zeros((N, 8), np.float32))
    (tmp_path / "r.yaml").write_text(RECIPE.format(model=model, task=tmp_path / "x.npz", targets="{runtime: onnxruntime}"))
    r = edgeopt_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert r.returncode == 2
    assert "has no array for input(s) ['input', 'state', 'sr']" in r.stderr


def test_a_scalar_input_stays_0_d_for_the_runtime(tmp_path):
    from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(streaming_net(tmp_path / "stream.onnx"))
    feed = {"input": np.zeros((1, 8), np.float32), "state": np.zeros((2, 1, 4), np.float32), "sr": np.int64(16000)}
    assert runner.prepare(feed)[2].shape == ()  # TVM's VM refuses a (1,) array for a scalar parameter
    assert runner.run(feed)[1].shape == (2, 1, 4)


def test_a_classifier_with_several_inputs_gets_exemplars_of_every_input(tmp_path):
    from edgeopt.pipeline.evaluate import EvaluateConfig, Evaluation
    from edgeopt.pipeline.tasks import load_task

    np.savez(tmp_path / "t.npz", **task_arrays())
    task = load_task(str(tmp_path / "t.npz"), input_shape={"input": (1, 8), "state": (2, 1, 4), "sr": ()})
    scores = lambda feed: feed["input"][..., 0, :3] if feed["input"].ndim == 3 else feed["input"][:, :3]  # noqa: E731
    reference = scores(task.test.x)
    evaluation = Evaluation(task, reference, scores, EvaluateConfig(samples=8), out=tmp_path)
    changed = reference.copy()
    changed[:3] = changed[:3, ::-1]  # three samples change their top class
    entry = evaluation.evaluate(changed, scores, "int8/onnxruntime")
    moved = int(np.sum(changed.argmax(1) != reference.argmax(1)))
    assert entry["exemplars"]["count"] == moved >= 1
    saved = np.load(tmp_path / entry["exemplars"]["file"])
    assert sorted(saved.files) == ["fp32_pred", "index", "pred", "x_input", "x_sr", "x_state"]
    assert saved["x_state"].shape == (moved, 2, 1, 4) and saved["x_sr"].dtype == np.int64


def test_recipe_constant_inputs_are_checked():
    from edgeopt.pipeline.recipe import parse_recipe

    body = "task: random\nvariants: {fp32: []}\ntargets: [{runtime: onnxruntime}]\n"
    assert parse_recipe("model: m.onnx\nconstant_inputs: {sr: 16000, w: [[1, 2.5]]}\n" + body
                        ).constant_inputs == {"sr": 16000, "w": [[1, 2.5]]}
    for text, message in [
        ("model: zoo:digits_cnn\nconstant_inputs: {sr: 1}\n", "line 2: 'constant_inputs' is for ONNX models"),
        ("model: m.onnx\nconstant_inputs: {sr: fast}\n", "'constant_inputs.sr' must be a number or a list of numbers"),
        ("model: m.onnx\ninput_shape: {sr: [1]}\nconstant_inputs: {sr: 1}\n",
         "input 'sr' is in both 'input_shape' and 'constant_inputs'"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_recipe(text + body, "r.yaml")


@pytest.mark.parametrize("constants, message", [
    ("{rate: 16000}", "constant input 'rate' is no input of the model; its inputs are input, state, sr"),
    ("{sr: [16000, 8000]}", "constant input 'sr': a value of shape [2]; the input's declared shape is []"),
])
def test_a_constant_input_that_does_not_fit_exits_2_before_any_work(tmp_path, constants, message):
    recipe = write_recipe(tmp_path, sr=None)
    recipe.write_text(recipe.read_text().replace("variants:", f"constant_inputs: {constants}\nvariants:"))
    r = edgeopt_cli("run", recipe, "--out", tmp_path / "out")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a whole study: two TVM builds and four timed pairs
def test_a_constant_sample_rate_folds_the_branch_for_tvm(tmp_path):
    model = streaming_net(tmp_path / "stream.onnx", branch=True)
    np.savez(tmp_path / "task.npz", **task_arrays(sr=None))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=model, task=tmp_path / "task.npz",
                                    targets="{runtime: onnxruntime}, {runtime: tvm, target: cpu}")
                      .replace("variants:", "constant_inputs: {sr: 16000}\nvariants:"))
    r = edgeopt_cli("run", recipe, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    variants = json.loads((tmp_path / "out" / "report.json").read_text())["variants"]
    assert len(variants) == 4 and all(v.get("status") != "failed" for v in variants), variants
    base = json.loads((tmp_path / "out" / "base-model" / "manifest.json").read_text())
    assert [i["name"] for i in base["io"]["inputs"]] == ["input", "state"]
    assert base["history"][-1]["config"]["constant_inputs"] == {"sr": 16000}
    fp32_tvm = next(v for v in variants if v["name"] == "fp32" and v["runtime"] == "tvm")
    assert all(q["snr_db"] > 60 for q in fp32_tvm["output_quality"])  # the 16 kHz branch, as onnxruntime ran it


@pytest.mark.slow  # a whole study: two TVM builds and four timed pairs
def test_a_study_feeds_every_input_on_onnxruntime_and_tvm(tmp_path):
    recipe = write_recipe(tmp_path, targets="{runtime: onnxruntime}, {runtime: tvm, target: cpu}")
    r = edgeopt_cli("run", recipe, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    variants = json.loads((tmp_path / "out" / "report.json").read_text())["variants"]
    assert sorted((v["name"], v["runtime"]) for v in variants) == [
        ("fp32", "onnxruntime"), ("fp32", "tvm"), ("int8", "onnxruntime"), ("int8", "tvm")]
    for v in variants:
        assert v.get("status") != "failed", v
        assert [q["output"] for q in v["output_quality"]] == ["speech", "state"]
        if v["name"] == "fp32":  # TVM's fp32 agrees with onnxruntime's on both outputs
            assert all(q["snr_db"] > 60 for q in v["output_quality"]), v["output_quality"]
        else:  # int8 calibrated on all three inputs: close, not equal
            assert all(15 < q["snr_db"] < 60 for q in v["output_quality"]), v["output_quality"]
    int8 = json.loads((tmp_path / "out" / "variants" / "int8" / "quantize" / "manifest.json").read_text())
    assert int8["history"][-1]["name"] == "quantize"
