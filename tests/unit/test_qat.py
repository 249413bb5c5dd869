"""Quantization-aware training: fake-quant fine-tuning, QDQ export with the learned scales, the
step registry and the CLI."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import edgeopt.compile as eoc
from edgeopt.compress import QATConfig, qat
from edgeopt.compress.fidelity import runner_outputs
from edgeopt.core.errors import InputError
from edgeopt.pipeline.tasks import Split
from edgeopt.runtimes import load
from helpers import edgeopt_cli, example_inputs, tiny_conv_net

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies


class _Task:
    """The parts of a task qat reads: labelled train and val splits."""

    def __init__(self, n=96, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
        with torch.no_grad():  # labels the model can learn: the teacher's own predictions
            y = tiny_conv_net()(torch.from_numpy(x)).argmax(1).numpy()
        self.train, self.val = Split(x[:64], y[:64]), Split(x[64:], y[64:])


@pytest.fixture(scope="module")
def qat_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "int8"
    teacher = tiny_conv_net()
    lines = []
    r = qat(tiny_conv_net(), QATConfig(epochs=2, batch_size=16, lr=1e-3), _Task(), teacher=teacher,
            example_inputs=example_inputs(), out=out, progress=lines.append)
    return r, lines


def test_qat_writes_int8_qdq_that_onnxruntime_runs(qat_result):
    r, lines = qat_result
    g = onnx.load(str(r.path)).graph
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= {n.op_type for n in g.node}
    assert "BatchNormalization" not in {n.op_type for n in g.node}
    assert any(i.data_type == onnx.TensorProto.INT8 for i in g.initializer)
    m = r.metrics
    assert m["layers_learned"] == m["layers_with_learned_scales"] == 2 and m["layers_calibrated"] == []
    assert m["batchnorm_folded"] and m["teacher"]
    # the ONNX computes what training simulated: the fake-quant model and int8 onnxruntime agree
    assert m["int8_val_accuracy"] == pytest.approx(m["fake_quant_val_accuracy"], abs=1 / 32 + 1e-9)
    x = np.concatenate([example_inputs(seed=s) for s in range(8)])
    ref = runner_outputs(load(r.path), x)
    assert np.isfinite(ref).all() and ref.shape == (8, 3)
    assert [h["name"] for h in r.artifact.history] == ["qat"]
    assert any("qat epoch 2/2" in ln for ln in lines)


def test_qat_weights_are_the_learned_int8_grid(qat_result):
    """Each weight DQ holds int8 values in [-127, 127] and positive per-channel scales; the
    dequantized weights are what the fake-quant forward used (scale * integer)."""
    r, _ = qat_result
    g = onnx.load(str(r.path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8]
    assert len(weights) == 2
    for dq in weights:
        w, s = inits[dq.input[0]], inits[dq.input[1]]
        assert w.min() >= -127 and w.max() <= 127 and (s > 0).all() and s.size == w.shape[0]


def test_qat_output_builds_with_tvm_int8_ops(qat_result, tmp_path):
    b = eoc.build(qat_result[0], eoc.BuildConfig(target="cpu"), out=tmp_path / "tvm")
    assert b.metrics["int8_ops"] > 0
    assert [h["name"] for h in b.artifact.history] == ["qat", "compile"]


def test_qat_is_registered_and_applies_through_the_registry(tmp_path):
    from edgeopt.pipeline.steps import StepData, apply_step, check_order, make_step

    step = make_step("qat", {"epochs": 1, "batch_size": 32})
    assert step.kind.level == "torch-to-onnx" and step.kind.final
    with pytest.raises(InputError, match="two ONNX-level steps"):
        check_order([step, make_step("quantize", {})])

    class T(_Task):
        calib = Split(np.zeros((4, 1, 8, 8), np.float32), None)

    r = apply_step(step, tiny_conv_net(), StepData(example=example_inputs(), task=T()), out=tmp_path / "q")
    assert r.artifact is not None and r.record["name"] == "qat"


def test_qat_bad_input():
    with pytest.raises(InputError, match="labelled training data"):
        qat(tiny_conv_net(), QATConfig(), np.zeros((4, 1, 8, 8), np.float32), out="x")
    with pytest.raises(InputError, match="needs out="):
        qat(tiny_conv_net(), QATConfig(), _Task())
    with pytest.raises(InputError, match="alpha must be in"):
        QATConfig(alpha=2)
    with pytest.raises(InputError, match="epochs must be an integer"):
        QATConfig(epochs=1.5)


@pytest.mark.slow  # exports and fine-tunes digits_cnn in a subprocess (tens of seconds)
def test_cli_compress_qat(tmp_path):
    r = edgeopt_cli("compress", "qat", "zoo:digits_cnn", "--task", "digits", "--epochs", "1",
                    "--max-train-samples", "64", "--calibration-samples", "16", "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    assert "layers with learned int8 scales" in r.stdout and (tmp_path / "q" / "model.onnx").is_file()
    bad = edgeopt_cli("compress", "qat", "zoo:digits_cnn", "--task", "nope", "--out", tmp_path / "b")
    assert bad.returncode == 2 and "unknown task 'nope'" in bad.stderr


def _outlier_task():
    """A labelled task on the outlier MLP's inputs, labelled by the MLP itself."""
    from edgeopt.pipeline.tasks import Task
    from helpers import OutlierMLP, outlier_samples

    def split(n, seed):
        x = outlier_samples(n, seed=seed).reshape(n, 8)
        with torch.no_grad():
            return Split(x, OutlierMLP().eval()(torch.from_numpy(x)).argmax(1).numpy())

    return Task("outliers", "top1", (1, 8), 4, train=split(256, 1), val=split(64, 2), calib=split(64, 3),
                test=split(64, 4), model="")


LADDER = """\
model: helpers:OutlierMLP
task: helpers:tiny_image_task
variants:
  int8:
    - qat: {epochs: 1, batch_size: 32, lr: 0.001, ptq_method: minmax, ptq_per_channel: false,
            ptq_min_agreement: %s, ptq_max_float_nodes: %s}
targets:
  - runtime: onnxruntime
"""


def _ladder_step(min_agreement, max_float_nodes):
    from edgeopt.pipeline.recipe import parse_recipe

    (step,) = parse_recipe(LADDER % (min_agreement, max_float_nodes), "r.yaml").variants["int8"]
    return step


def test_accuracy_aware_flow_ends_in_qat_when_ptq_misses(tmp_path):
    """A recipe's qat step with a ptq budget, applied as a study applies it: plain int8 of the
    outlier MLP misses a tight agreement budget and no layer may stay in float, so the flow goes
    on to QAT and records every attempt, cheapest first."""
    from edgeopt.pipeline.steps import StepData, apply_step
    from helpers import OutlierMLP, outlier_samples

    step = _ladder_step(0.999, 0)
    assert step.config.ptq.min_agreement == 0.999 and step.config.ptq.max_float_nodes == 0
    model = OutlierMLP().eval()
    r = apply_step(step, model, StepData(outlier_samples(1)[0], _outlier_task(), teacher=model),
                   out=tmp_path / "best")
    methods = [a["method"] for a in r.metrics["attempts"]]
    assert methods[0] == "ptq" and methods[-2] == "fallback" and methods[-1] == "qat"
    assert all("agreement" in a for a in r.metrics["attempts"])
    assert isinstance(r.metrics["budget_met"], bool)
    assert r.artifact.history[-1]["name"] == "qat"
    assert r.artifact.history[-1]["metrics"]["attempts"][-1]["method"] == "qat"


def test_accuracy_aware_flow_stops_at_ptq_when_it_meets_the_budget(tmp_path):
    """With layers allowed in float, the per-layer fallback meets the budget: no training, the
    result is quantize's model and record."""
    from edgeopt.pipeline.steps import StepData, apply_step
    from helpers import OutlierMLP, outlier_samples

    model = OutlierMLP().eval()
    r = apply_step(_ladder_step(0.95, 2), model, StepData(outlier_samples(1)[0], _outlier_task(), teacher=model),
                   out=tmp_path / "best")
    assert r.record["name"] == "quantize" and r.metrics["budget_met"] is True
    assert [h["name"] for h in r.artifact.history] == ["export", "quantize"]


def test_ptq_needs_a_budget(capsys, tmp_path):
    from edgeopt.pipeline.cli import main

    with pytest.raises(InputError, match="ptq_max_accuracy_drop or ptq_min_agreement"):
        _ladder_step("null", 0)
    # the command line spells the same fields --ptq-<field>
    assert main(["compress", "qat", "helpers:OutlierMLP", "--task", "digits", "--ptq-method", "minmax",
                 "--out", str(tmp_path / "q")]) == 2
    assert "ptq_max_accuracy_drop or ptq_min_agreement" in capsys.readouterr().err
