"""The default calibration keeps the full range of what a graph output reads as it is."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.compress.calibration import answer_tensors


def _logit_model(path):
    """x (1, 8) -> MatMul -> Relu -> MatMul -> logit (one number per sample) -> Sigmoid -> mean
    over its one frame: a speech probability, as silero-vad computes it."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 1)).astype(np.float32) / 4, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "w2"], ["mm"]), helper.make_node("Add", ["mm", "b2"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"]),
             helper.make_node("ReduceMean", ["prob"], ["p"], axes=[1], keepdims=1)]
    g = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])],
                          [w1, w2, numpy_helper.from_array(np.array([-1.5], np.float32), "b2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_answer_tensors_walk_back_to_the_op_that_computed_the_output(tmp_path):
    model = onnx.load(str(_logit_model(tmp_path / "m.onnx")))
    assert answer_tensors(model) == {"p", "prob", "logit", "mm"}


def test_a_logit_that_is_one_number_per_sample_keeps_its_whole_range_in_int8(tmp_path):
    """Averaged per-sample extremes of a one-number logit that is mostly negative put the top of
    its range at 0, and every probability above 0.5 read 0.5 (silero-vad's int8 never said
    speech): the default calibration gives it its full range."""
    import onnxruntime as ort

    path = _logit_model(tmp_path / "m.onnx")
    fp32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((64, 1, 8)).astype(np.float32)
    p = np.array([fp32.run(None, {"x": s})[0].item() for s in x])
    assert 0.5 < np.mean(p < 0.5) < 0.95 and p.max() > 0.75  # mostly low, some high
    art = quantize(path, QuantizeConfig(debug_layers=0, guard_outputs=False), x, out=tmp_path / "int8").artifact
    model = onnx.load(str(art.path / "model.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "logit"]
    scale, zero = float(init[q.input[1]]), int(init[q.input[2]])
    top = (255 - zero) * scale  # the largest logit uint8 can hold
    # the logit's largest calibration value: the largest p through the inverse sigmoid
    assert top >= 0.9 * np.log(p.max() / (1 - p.max()))
