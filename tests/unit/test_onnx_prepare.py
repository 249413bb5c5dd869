"""The third-party ONNX pre-pass: old opsets, Constant-node weights, folding, shapes, ops."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.compile.onnx_prepare import check_ops, prepare_onnx, prepare_onnx_file
from edgeopt.core.errors import InputError


def _const(name, array):
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=numpy_helper.from_array(np.asarray(array), name))


def third_party_model(opset: int, path=None, extra_nodes=()):
    """Conv-ReLU-flatten-MatMul with every weight in a Constant node, the flatten shape computed
    at run time (Shape -> Gather -> Unsqueeze -> Concat -> Reshape), as old exporters wrote it."""
    rng = np.random.default_rng(0)
    nodes = [
        _const("w", rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
        _const("b", rng.standard_normal(2).astype(np.float32)),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        _const("zero", np.array(0, np.int64)),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        # Unsqueeze takes axes as an attribute before opset 13: the converter must rewrite it.
        helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsqueeze", axes=[0]),
        _const("minus1", np.array([-1], np.int64)),
        helper.make_node("Concat", ["n1", "minus1"], ["shape2"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "shape2"], ["flat"], name="reshape"),
        _const("w2", rng.standard_normal((128, 3)).astype(np.float32)),
        _const("scale", np.array([2.0], np.float32)),
        _const("half", np.array([0.5], np.float32)),
        helper.make_node("Mul", ["scale", "half"], ["one"], name="folded_mul"),
        helper.make_node("MatMul", ["flat", "w2"], ["mm"], name="matmul"),
        helper.make_node("Mul", ["mm", "one"], ["y"], name="out"),
        *extra_nodes,
    ]
    graph = helper.make_graph(nodes, "third_party",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model


def _run(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [11, 12])
def test_prepare_upgrades_folds_and_infers(opset):
    model = third_party_model(opset)
    prepared = prepare_onnx(model)
    onnx.checker.check_model(prepared)
    assert prepared.opset_import[0].version == 17
    ops = [n.op_type for n in prepared.graph.node]
    # Weights are initializers; the run-time shape computation and the constant Mul are folded.
    assert ops == ["Conv", "Relu", "Reshape", "MatMul", "Mul"]
    assert {"w", "b", "w2"} <= {i.name for i in prepared.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in prepared.graph.value_info}
    assert shapes["r"] == [1, 2, 8, 8] and shapes["flat"] == [1, 128]  # inferred
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(prepared, x), _run(model, x), rtol=1e-5, atol=1e-6)
    assert model.opset_import[0].version == opset  # the input is not modified


def test_prepare_keeps_quantize_nodes_and_names_missing_ops(tmp_path):
    model = third_party_model(12)
    q = [_const("qs", np.array(0.1, np.float32)), _const("qz", np.array(0, np.int8)),
         _const("wq", np.ones((2, 2), np.int8)),
         helper.make_node("DequantizeLinear", ["wq", "qs", "qz"], ["wdq"], name="dq")]
    g = model.graph
    g.node.extend(q)
    g.output.append(helper.make_tensor_value_info("wdq", TensorProto.FLOAT, [2, 2]))
    prepared = prepare_onnx(model)
    assert "DequantizeLinear" in [n.op_type for n in prepared.graph.node]

    with pytest.raises(InputError, match=r"TVM lacks op\(s\) Relu \(node 'relu'\)"):
        prepare_onnx(model, supported={"Conv", "Reshape", "MatMul", "Mul", "DequantizeLinear"},
                     backend="TVM")
    custom = helper.make_node("FancyOp", ["y"], ["z"], name="fancy", domain="com.example")
    with pytest.raises(InputError, match=r"lacks op\(s\) com.example.FancyOp \(node 'fancy'\)"):
        check_ops(helper.make_model(helper.make_graph([custom], "g", [], [])), lambda op: True, "onnxruntime")

    path = third_party_model(11, tmp_path / "old.onnx")
    out = prepare_onnx_file(path, tmp_path / "prepared" / "new.onnx")
    assert onnx.load(str(out)).opset_import[0].version == 17
    with pytest.raises(InputError, match="takes an ONNX file path or an onnx.ModelProto"):
        prepare_onnx(42)


@pytest.mark.slow  # onnxruntime's quantizer end to end: tens of seconds on a loaded 2-core machine
def test_quantize_accepts_an_old_opset_file_with_constant_weights(tmp_path):
    import edgeopt.compress as ec

    path = tmp_path / "old.onnx"
    model = third_party_model(11, path)
    calib = np.random.default_rng(2).standard_normal((16, 1, 1, 8, 8)).astype(np.float32)
    result = ec.quantize(path, ec.QuantizeConfig(), list(calib), out=tmp_path / "int8.onnx")
    q = onnx.load(str(result.path))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert result.record["metrics"]["compute_nodes_quantized"] >= 1
    x = calib[0]
    ref, out = _run(model, x), _run(q, x)
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 1e-3


@pytest.mark.slow  # a TVM compile: tens of seconds on a loaded 2-core machine
def test_tvm_builds_an_old_opset_file_with_constant_weights(tmp_path):
    pytest.importorskip("tvm")
    from edgeopt.compile.tvm_build import BuildConfig, build
    from edgeopt.runtimes import load

    path = tmp_path / "old.onnx"
    model = third_party_model(11, path)
    art = build(path, BuildConfig(target="cpu"), out=tmp_path / "tvm").output
    x = np.random.default_rng(3).standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(load(art).run(x)[0], _run(model, x), rtol=1e-4, atol=1e-5)
