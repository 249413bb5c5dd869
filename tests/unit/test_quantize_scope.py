"""quantize's scope (which activations become int8) and the budget judged by declared outputs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.compress.fidelity import runner_all_outputs, runner_outputs
from edgeopt.core.errors import InputError
from edgeopt.pipeline.output_quality import DeclaredOutputs, decode_sequences, parse_outputs
from edgeopt.runtimes import load

#: The offset a pair of Adds puts on and takes off again: exact in float, but an int8 scale
#: over [0, OFFSET] is ~40 per level, far coarser than the conv outputs it carries (~1).
OFFSET = 1e4


def _offset_net(path, steps: int = 4, classes: int = 5, seed: int = 0):
    """x (1, 2, 1, steps) -> Conv 1x1 -> Add(+OFFSET) -> Add(-OFFSET) -> Conv 1x1 -> (1, classes, 1,
    steps) -> Transpose -> (1, steps, classes): a per-step class score sequence whose middle
    elementwise pair is exact in float and destroyed when its output is rounded to int8."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(8, 2, 1, 1)).astype(np.float32)
    w2 = rng.normal(size=(classes, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array(OFFSET, np.float32), "up"),
             numpy_helper.from_array(np.array(-OFFSET, np.float32), "down")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
             helper.make_node("Add", ["a", "up"], ["b"], name="add_up"),
             helper.make_node("Add", ["b", "down"], ["c"], name="add_down"),
             helper.make_node("Conv", ["c", "w2"], ["d"], name="conv2"),
             helper.make_node("Reshape", ["d", "shape"], ["e"], name="flat"),
             helper.make_node("Transpose", ["e"], ["y"], name="steps_first", perm=[0, 2, 1])]
    inits.append(numpy_helper.from_array(np.array([1, classes, steps], np.int64), "shape"))
    graph = helper.make_graph(nodes, "offset", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, steps])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, steps, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _samples(n, steps=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 2, 1, steps)).astype(np.float32)


def _quantized_tensors(path) -> set[str]:
    """The activations a QuantizeLinear rounds (weights left out)."""
    g = onnx.load(str(path)).graph
    weights = {i.name for i in g.initializer}
    return {n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights}


def _sequence_share(fp32, int8, x):
    a = decode_sequences(runner_outputs(load(fp32), x), "ctc")
    b = decode_sequences(runner_outputs(load(int8), x), "ctc")
    return float(np.mean([p == q for p, q in zip(a, b)]))


@pytest.fixture(scope="module")
def offset_onnx(tmp_path_factory):
    return _offset_net(tmp_path_factory.mktemp("scope") / "offset.onnx")


def test_compute_scope_rounds_only_what_compute_ops_read_and_write(offset_onnx, tmp_path):
    calib = _samples(16)
    options = dict(method="minmax", debug_layers=0, guard_outputs=False)
    every = quantize(offset_onnx, QuantizeConfig(**options), calib, out=tmp_path / "all.onnx")
    compute = quantize(offset_onnx, QuantizeConfig(scope="compute", **options), calib, out=tmp_path / "compute.onnx")
    assert {"b"} <= _quantized_tensors(every.path), "scope all rounds the elementwise Add's output"
    assert _quantized_tensors(compute.path) == {"x", "a", "c", "d"}, "only the convs' inputs and outputs"
    assert every.record["metrics"]["scope"] == "all" and compute.record["metrics"]["scope"] == "compute"
    assert compute.record["metrics"]["compute_nodes_quantized"] == 2
    from edgeopt.compress.quantize import describe

    assert "int8 only where compute ops read and write (elementwise ops in float)" in describe(
        compute.record["metrics"], {})
    assert not any("compute ops read" in p for p in describe(every.record["metrics"], {}))
    held_out = _samples(64, seed=2)
    # the elementwise pair rounded to ~40 per level breaks the sequences; kept float, they hold
    assert _sequence_share(offset_onnx, every.path, held_out) < 0.5
    assert _sequence_share(offset_onnx, compute.path, held_out) >= 0.9


def test_budget_tries_compute_scope_before_float_layers(offset_onnx, tmp_path):
    calib, held_out = _samples(16), _samples(64, seed=2)
    judge = DeclaredOutputs(held_out, parse_outputs([{"kind": "sequence", "decode": "ctc"}]))
    r = quantize(offset_onnx, QuantizeConfig(method="minmax", min_agreement=0.9, debug_layers=0), calib,
                 out=tmp_path / "q.onnx", eval_data=judge)
    m = r.record["metrics"]
    first, last = m["attempts"][0], m["attempts"][-1]
    assert first["scope"] == "all" and first["agreement"] < 0.5
    assert last == {**last, "method": "ptq", "scope": "compute"} and last["agreement"] >= 0.9
    assert m["scope"] == "compute" and m["nodes_in_float"] == [] and m["fallback"] == []
    assert m["compute_nodes_quantized"] == 2, "both convs stay int8"
    # the budget was judged as the report judges the declared output: identical decoded sequences
    assert last["agreement"] == pytest.approx(_sequence_share(offset_onnx, r.path, held_out))


def test_declared_outputs_judge_the_budget_not_flattened_top1(offset_onnx, tmp_path):
    """Without a judge, unlabelled inputs are scored by top-1 over the whole flattened (steps x
    classes) tensor, one position per sample; with the declared sequence output, by identical
    decoded sequences."""
    calib, held_out = _samples(16), _samples(64, seed=2)
    config = QuantizeConfig(method="minmax", min_agreement=0.99, scope="compute", debug_layers=0,
                            guard_outputs=False, max_float_nodes=0)
    from edgeopt.compress.quantize import BudgetScorer

    plain = quantize(offset_onnx, QuantizeConfig(method="minmax", scope="compute", debug_layers=0,
                                                 guard_outputs=False), calib, out=tmp_path / "compute.onnx")
    judge = DeclaredOutputs(held_out, parse_outputs([{"kind": "sequence", "decode": "ctc"}]))
    declared = BudgetScorer(offset_onnx, judge, config)(plain.path)["agreement"]
    flattened = BudgetScorer(offset_onnx, held_out, config)(plain.path)["agreement"]
    assert declared == pytest.approx(_sequence_share(offset_onnx, plain.path, held_out))
    ref = runner_all_outputs(load(offset_onnx), held_out)[0].reshape(len(held_out), -1).argmax(1)
    got = runner_all_outputs(load(plain.path), held_out)[0].reshape(len(held_out), -1).argmax(1)
    assert flattened == pytest.approx(float(np.mean(ref == got)))
    assert declared != pytest.approx(flattened), "the two figures differ here, so the test tells them apart"


def test_scope_is_checked(offset_onnx, tmp_path):
    with pytest.raises(InputError, match="scope must be one of all, compute"):
        QuantizeConfig(scope="elementwise")
    with pytest.raises(InputError, match="scope applies to static mode"):
        QuantizeConfig(mode="dynamic", scope="compute")


def test_a_study_judges_the_budget_by_the_task_s_declared_outputs(tmp_path):
    import json

    from edgeopt.pipeline.steps import quantize_eval_data
    from edgeopt.pipeline.tasks import load_task

    x = _samples(40)
    np.savez(tmp_path / "seq.npz", x=x, outputs=json.dumps([{"kind": "sequence", "decode": "ctc"}]))
    np.savez(tmp_path / "bare.npz", x=x)
    declared = quantize_eval_data(load_task(str(tmp_path / "seq.npz")))
    assert isinstance(declared, DeclaredOutputs) and declared.specs[0].kind == "sequence"
    assert len(declared.x) == 4, "the validation split (10% of 40)"
    bare = quantize_eval_data(load_task(str(tmp_path / "bare.npz")))
    assert isinstance(bare, np.ndarray) and len(bare) == 4
