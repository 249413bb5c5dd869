"""Recurrent (LSTM / GRU / RNN) and control-flow (If) models: unrolled into plain ONNX ops,
built with TVM, counted once, and reported right by quantize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeopt.compile.onnx_recurrent import unroll_recurrent
from edgeopt.core.errors import InputError

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op, direction="forward", layout=0, steps=5, batch=2, size=3, hidden=4, bias=True,
                    initial=True, peepholes=False, seed=0, dynamic_seq=False, dynamic_batch=False, **attrs):
    """One ONNX recurrent node with random weights; every output is a graph output."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    inits = [numpy_helper.from_array(rng.standard_normal((dirs, g * hidden, size)).astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.standard_normal((dirs, g * hidden, hidden)).astype(np.float32) * 0.5, "R")]
    inputs = ["x", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 2 * g * hidden)).astype(np.float32), "B"))
        inputs[3] = "B"
    state_shape = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    seq_dim, batch_dim = ("T" if dynamic_seq else steps), ("N" if dynamic_batch else batch)
    graph_inputs = [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [seq_dim, batch_dim, size] if layout == 0 else [batch_dim, seq_dim, size])]
    if initial:
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        inputs[5] = "h0"
        if op == "LSTM":
            graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state_shape))
            inputs[6] = "c0"
    if peepholes:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 3 * hidden)).astype(np.float32), "P"))
        inputs[7] = "P"
    n_inputs = max(i for i, v in enumerate(inputs) if v) + 1
    outputs = ["y", "y_h", "y_c"][:3 if op == "LSTM" else 2]
    node = helper.make_node(op, inputs[:n_inputs], outputs, name=f"{op.lower()}_node", hidden_size=hidden,
                            direction=direction, layout=layout, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((steps, batch, size) if layout == 0 else (batch, steps, size)).astype(np.float32)}
    if initial:
        feeds["h0"] = rng.standard_normal(state_shape).astype(np.float32)
        if op == "LSTM":
            feeds["c0"] = rng.standard_normal(state_shape).astype(np.float32)
    return model, feeds


def ort_run(model, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def reference_run(model, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


CASES = [
    dict(op="LSTM"), dict(op="LSTM", direction="reverse"), dict(op="LSTM", direction="bidirectional"),
    dict(op="LSTM", layout=1, direction="bidirectional"), dict(op="LSTM", initial=False, bias=False),
    dict(op="LSTM", peepholes=True), dict(op="LSTM", clip=0.7), dict(op="LSTM", steps=1),
    dict(op="GRU"), dict(op="GRU", linear_before_reset=1), dict(op="GRU", direction="bidirectional"),
    dict(op="GRU", layout=1, linear_before_reset=1), dict(op="GRU", direction="reverse", initial=False),
    dict(op="RNN"), dict(op="RNN", direction="bidirectional", layout=1),
    dict(op="RNN", activations=["Relu"], initial=False),
    dict(op="LSTM", initial=False, dynamic_batch=True), dict(op="GRU", initial=False, dynamic_batch=True, layout=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_unrolled_graph_matches_onnxruntime(case):
    model, feeds = recurrent_model(**case)
    unrolled = unroll_recurrent(model)
    ops = {n.op_type for n in unrolled.graph.node}
    assert not ops & {"LSTM", "GRU", "RNN"}
    assert ops <= {"MatMul", "Add", "Sub", "Mul", "Sigmoid", "Tanh", "Relu", "Clip", "Split", "Squeeze",
                   "Unsqueeze", "Concat", "Transpose", "Identity", "Shape", "ConstantOfShape"}
    # onnxruntime refuses layout=1 (batch first) recurrent nodes: onnx's reference evaluator runs those
    expected = ort_run(model, feeds) if case.get("layout", 0) == 0 else reference_run(model, feeds)
    got = ort_run(unrolled, feeds)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_dynamic_sequence_length_names_the_input():
    model, _ = recurrent_model("GRU", dynamic_seq=True)
    with pytest.raises(InputError, match=r"GRU node 'gru_node'.*give 'x' a concrete shape"):
        unroll_recurrent(model)


def test_unequal_sequence_lens_refused():
    model, _ = recurrent_model("LSTM", initial=False)
    model.graph.initializer.append(numpy_helper.from_array(np.array([5, 3], np.int32), "lens"))
    node = model.graph.node[0]
    del node.input[:]
    node.input.extend(["x", "W", "R", "B", "lens"])
    with pytest.raises(InputError, match="sequence_lens"):
        unroll_recurrent(model)


def if_model(condition_from_input: bool):
    """y = x + 1 when the condition holds, else x * 2; the condition is a constant or read from x."""
    then_g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["t_out"], name="then_add")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 3])],
                               [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["e_out"], name="else_mul")], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 3])],
                               [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    if condition_from_input:  # data-dependent: sum(x) > 0
        nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
                 helper.make_node("Greater", ["s", "zero"], ["cond"], name="greater")]
        inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    else:  # constant after folding: shape(x)[0] == 2
        nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
                 helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0, name="rows"),
                 helper.make_node("Equal", ["rows", "two_rows"], ["cond"], name="equal")]
        inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                 numpy_helper.from_array(np.array(2, np.int64), "two_rows")]
    nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch"))
    nodes.append(helper.make_node("Relu", ["y"], ["out"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_if_with_a_constant_condition_is_inlined():
    from edgeopt.compile.onnx_prepare import prepare_onnx

    model = if_model(condition_from_input=False)
    prepared = prepare_onnx(model, static_graph=True)
    assert "If" not in {n.op_type for n in prepared.graph.node}
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(ort_run(prepared, {"x": x})[0], ort_run(model, {"x": x})[0])
    np.testing.assert_allclose(ort_run(prepared, {"x": x})[0], np.maximum(x + 1, 0))


def test_data_dependent_if_is_refused_naming_the_node():
    from edgeopt.compile.onnx_prepare import prepare_onnx

    model = if_model(condition_from_input=True)
    assert [n.op_type for n in prepare_onnx(model).graph.node].count("If") == 1  # onnxruntime runs it as is
    with pytest.raises(InputError, match=r"If node 'branch' is data-dependent control flow"):
        prepare_onnx(model, static_graph=True)


class GRUClassifier(torch.nn.Module):
    """Conv1d features, a batch-first GRU over time, a linear head on the last step."""

    def __init__(self, features=4, channels=8, hidden=16, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(features, channels, 3, padding=1)
        self.gru = torch.nn.GRU(channels, hidden, batch_first=True)
        self.fc = torch.nn.Linear(hidden, classes)

    def forward(self, x):  # x: [batch, features, steps]
        seq, _ = self.gru(torch.relu(self.conv(x)).transpose(1, 2))
        return self.fc(seq[:, -1])


class ConvBiLSTM(torch.nn.Module):
    """OCR-like: a conv over a [1, 1, height, width] strip, columns as steps, a 2-layer
    bidirectional LSTM, per-step class scores."""

    def __init__(self, height=4, hidden=12, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.lstm = torch.nn.LSTM(4 * height, hidden, num_layers=2, bidirectional=True)
        self.fc = torch.nn.Linear(2 * hidden, classes)

    def forward(self, x):
        columns = torch.relu(self.conv(x)).flatten(1, 2).permute(2, 0, 1)  # [width, batch, 4*height]
        seq, _ = self.lstm(columns)
        return self.fc(seq)


TORCH_MODELS = {"gru_classifier": (GRUClassifier, (1, 4, 10)), "conv_bilstm": (ConvBiLSTM, (1, 1, 4, 8))}


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_torch_recurrent_model_builds_for_tvm_with_parity(name, tmp_path):
    import edgeopt.compile as eoc
    import edgeopt.runtimes as ert

    factory, shape = TORCH_MODELS[name]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    onnx_art = eoc.export(factory().eval(), eoc.ExportConfig(), x, out=tmp_path / "onnx").output
    tvm_art = eoc.build(onnx_art, eoc.BuildConfig(target="cpu", kernels="tvm"), out=tmp_path / "tvm").output
    expected = ert.load(onnx_art.path, threads=1).run(x)[0]
    got = ert.load(tvm_art.path, threads=1).run(x)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def gate_matmul_flops(steps, batch, inputs, hidden, gates, directions=1):
    """The documented formula: per step and direction 2 * (in * G*h + h * G*h)."""
    return directions * steps * batch * 2 * (inputs * gates * hidden + hidden * gates * hidden)


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_recurrent_flops_agree_between_torch_and_onnx(name, tmp_path):
    import edgeopt.compile as eoc
    from edgeopt.compile.onnx_prepare import prepare_onnx
    from edgeopt.compress.counting import count_flops, onnx_flops

    factory, shape = TORCH_MODELS[name]
    model, x = factory().eval(), np.zeros(shape, np.float32)
    if name == "gru_classifier":
        conv, fc = 2 * 8 * 10 * 4 * 3, 2 * 16 * 3
        expected = conv + fc + gate_matmul_flops(10, 1, 8, 16, gates=3)
    else:
        conv, fc = 2 * 4 * 4 * 8 * 9, 2 * 8 * 24 * 5
        expected = (conv + fc + gate_matmul_flops(8, 1, 16, 12, gates=4, directions=2)
                    + gate_matmul_flops(8, 1, 24, 12, gates=4, directions=2))
    onnx_file = eoc.export(model, eoc.ExportConfig(), x, out=tmp_path / "onnx").output.model_file
    assert count_flops(model, torch.from_numpy(x)) == expected
    assert onnx_flops(onnx_file) == expected
    assert onnx_flops(prepare_onnx(onnx_file, static_graph=True)) == expected  # the unrolled graph too


def test_quantize_names_the_recurrent_layer_left_float(tmp_path):
    import edgeopt.compile as eoc
    import edgeopt.compress as ec

    x = np.random.default_rng(2).standard_normal((1, 4, 10)).astype(np.float32)
    onnx_art = eoc.export(GRUClassifier().eval(), eoc.ExportConfig(), x, out=tmp_path / "onnx").output
    calib = [np.random.default_rng(i).standard_normal((1, 4, 10)).astype(np.float32) for i in range(4)]
    int8 = ec.quantize(onnx_art, ec.QuantizeConfig(), calib, out=tmp_path / "int8")
    m = int8.record["metrics"]
    assert (m["compute_nodes_quantized"], m["compute_nodes_total"]) == (2, 3)
    assert m["float_ops"] == {"GRU": 1}
    assert m["summary"] == "2/3 compute nodes int8; float: GRU (1)"

    # the int8 model, its GRU in float between quantized layers, builds for TVM too
    import edgeopt.runtimes as ert

    tvm_art = eoc.build(int8.output, eoc.BuildConfig(target="cpu", kernels="tvm"), out=tmp_path / "tvm").output
    np.testing.assert_allclose(ert.load(tvm_art.path, threads=1).run(x)[0],
                               ert.load(int8.output.path, threads=1).run(x)[0], rtol=1e-4, atol=1e-5)


def test_torch_count_covers_projections_keyword_inputs_and_packed_sequences():
    from edgeopt.compress.counting import count_flops

    class Projected(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(3, 4, proj_size=2, batch_first=True)

        def forward(self, x):
            return self.lstm(input=x)[0]

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(3, 4)

        def forward(self, x):
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3])
            return torch.nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0])[0]

    # LSTM with a projection: per step 2 * (in*4h + p*4h + h*p), 2 sequences of 5 steps
    assert count_flops(Projected(), torch.zeros(2, 5, 3)) == 2 * 5 * 2 * (3 * 16 + 2 * 16 + 4 * 2)
    # packed: 5 + 3 real steps, padding not computed
    assert count_flops(Packed(), torch.zeros(5, 2, 3)) == gate_matmul_flops(8, 1, 3, 4, gates=3)


def test_compile_cli_refuses_a_data_dependent_if_in_one_line(tmp_path):
    import onnx

    from helpers import edgeopt_cli

    onnx.save(if_model(condition_from_input=True), str(tmp_path / "branchy.onnx"))
    r = edgeopt_cli("compile", tmp_path / "branchy.onnx", "--target", "cpu", "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "If node 'branch'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
