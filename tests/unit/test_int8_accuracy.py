"""int8 accuracy tools: equalization, bias correction, SmoothQuant, the per-layer debugger and
the accuracy-aware attempts of ``quantize``."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgeopt.compile import export
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.compress import quant_transforms as qt
from edgeopt.compress.fidelity import runner_outputs
from edgeopt.compress.quant_debug import collect, debug_layers, float_share, in_float
from edgeopt.core.errors import InputError
from edgeopt.runtimes import load


class Unbalanced(nn.Module):
    """Conv-BN-ReLU6 -> depthwise-ReLU -> pointwise, with output channels of the first conv
    scaled over three orders of magnitude and the depthwise conv scaling them back (so every
    channel matters): what per-tensor int8 weights handle worst."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(2, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.c1.weight.mul_(torch.logspace(-2, 1, 8).view(8, 1, 1, 1))
            self.dw.weight.mul_(torch.logspace(1, -2, 8).view(8, 1, 1, 1))
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.clamp(self.bn(self.c1(x)), 0, 6)
        return self.pw(torch.relu(self.dw(x)))


def _samples(n, shape=(1, 2, 8, 8), seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) + shift).astype(np.float32) for _ in range(n)]


def _preprocessed(model, x, tmp_path):
    from onnxruntime.quantization import quant_pre_process

    fp32 = export(model.eval(), None, x, out=tmp_path / "fp32.onnx").path
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    return fp32, pre


def _ranges(model, name):
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[name]
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1)


def test_equalization_keeps_outputs_and_balances_weight_ranges(tmp_path):
    xs = _samples(8)
    _, pre = _preprocessed(Unbalanced(), xs[0], tmp_path)
    before = onnx.load(str(pre))
    after, pairs = qt.equalize(before)
    assert len(pairs) == 2, "conv -> ReLU6 -> depthwise and depthwise -> ReLU -> pointwise"
    assert {n.op_type for n in after.graph.node} >= {"Relu", "Min"}, "ReLU6 got its per-channel ceiling"
    first = next(n for n in before.graph.node if n.op_type == "Conv").input[1]
    r0, r1 = _ranges(before, first), _ranges(after, first)
    assert r0.max() / r0.min() > 100 and r1.max() / r1.min() < r0.max() / r0.min() / 10
    onnx.save(after, str(tmp_path / "eq.onnx"))
    a, b = load(pre), load(tmp_path / "eq.onnx")
    for x in xs:
        np.testing.assert_allclose(b.run(x)[0], a.run(x)[0], rtol=1e-5, atol=1e-5)


def test_equalize_improves_per_tensor_int8(tmp_path):
    xs = _samples(32)
    fp32, _ = _preprocessed(Unbalanced(), xs[0], tmp_path)
    held = np.concatenate(_samples(32, seed=9))
    ref = runner_outputs(load(fp32), held)

    def err(config, name):
        r = quantize(fp32, config, xs, out=tmp_path / name)
        return np.abs(runner_outputs(load(r.path), held) - ref).mean(), r

    plain, _ = err(QuantizeConfig(per_channel=False, method="minmax"), "plain.onnx")
    eq, r = err(QuantizeConfig(per_channel=False, method="minmax", equalize=True), "eq.onnx")
    assert eq < plain / 2
    assert r.metrics["transforms"] == ["equalize"] and r.metrics["transform_details"]["equalized_pairs"] == 2


class Shifted(nn.Module):
    """Positive inputs through a conv whose per-tensor int8 weights round small channels
    off: a systematic (mean) output shift that bias correction removes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(2, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 1)
        with torch.no_grad():
            self.c2.weight.mul_(torch.logspace(-2.5, 0, 6).view(6, 1, 1, 1))

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_bias_correction_reduces_the_mean_output_error(tmp_path):
    xs = _samples(32, shift=1.0)
    fp32, _ = _preprocessed(Shifted(), xs[0], tmp_path)
    held = np.concatenate(_samples(32, seed=5, shift=1.0))
    ref = runner_outputs(load(fp32), held)

    def mean_error(config, name):
        r = quantize(fp32, config, xs, out=tmp_path / name)
        got = runner_outputs(load(r.path), held)
        return np.abs((got - ref).mean(axis=(0, 2, 3))).mean(), r

    base = QuantizeConfig(per_channel=False, method="minmax")
    plain, _ = mean_error(base, "plain.onnx")
    corrected, r = mean_error(QuantizeConfig(per_channel=False, method="minmax", bias_correction=True),
                              "bc.onnx")
    assert corrected < plain * 0.5
    assert r.metrics["transform_details"]["bias_corrected_layers"] == 2


class LNHead(nn.Module):
    """LayerNorm -> Linear with one activation channel carrying outliers (what SmoothQuant is for)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 8)
        with torch.no_grad():
            self.norm.weight[3] = 40.0

    def forward(self, x):
        return self.fc(self.norm(x))


def test_smooth_quant_is_exact_in_float_and_moves_the_outlier(tmp_path):
    xs = _samples(16, shape=(1, 5, 16))
    _, pre = _preprocessed(LNHead(), xs[0], tmp_path)
    model = onnx.load(str(pre))
    acts = collect(pre, [{"input": x} for x in xs], tmp_path)
    smoothed, names = qt.smooth_quant(model, acts, 0.5)
    assert len(names) == 1
    onnx.save(smoothed, str(tmp_path / "sq.onnx"))
    for x in xs[:4]:
        np.testing.assert_allclose(load(tmp_path / "sq.onnx").run(x)[0], load(pre).run(x)[0],
                                   rtol=1e-4, atol=1e-4)
    from onnx import numpy_helper

    ln = next(n for n in smoothed.graph.node if n.op_type == "LayerNormalization")
    gamma = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}[ln.input[1]]
    assert abs(gamma[3]) / np.median(np.abs(gamma)) < 40 / 2, "the outlier channel is smaller"


class BadMiddle(nn.Module):
    """Three convs; the middle one holds one huge weight on an input channel that is always
    zero (after ReLU), so it carries no signal, yet per-tensor int8 rounds every other weight of
    the layer to zero: the debugger must rank that layer first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Conv2d(2, 8, 3, padding=1)
        self.bad = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.bias[0] = -100.0  # channel 0 of a's output is always 0 after ReLU
            self.bad.weight[:, 0] = 50.0

    def forward(self, x):
        return self.c(torch.relu(self.bad(torch.relu(self.a(x)))))


def test_debugger_ranks_the_bad_layer_first_and_quantize_names_it(tmp_path):
    xs = _samples(16)
    fp32, _ = _preprocessed(BadMiddle(), xs[0], tmp_path)
    r = quantize(fp32, QuantizeConfig(per_channel=False, method="minmax", debug_layers=2), xs,
                 out=tmp_path / "q", progress=(lines := []).append)
    layers = r.metrics["layers"]
    bad = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"][1]
    assert layers[0]["node"] == bad and r.metrics["costliest_layers"][0] == bad
    assert len(r.metrics["costliest_layers"]) == 2 and len(layers) == 3
    assert layers[0]["sqnr_db"] < 10 < layers[0]["input_sqnr_db"]
    # measured on the model's output: the bad layer alone in float removes most of its error,
    # the others next to nothing, and the record says what the named layers remove together
    assert layers[0]["float_gain"] > 0.8 > 0.2 > max(r["float_gain"] for r in layers[1:])
    assert r.metrics["costliest_float_share"] >= layers[0]["float_gain"]
    assert any(bad in ln for ln in lines)
    assert any("remove" in ln and "% of the output error" in ln for ln in lines)
    assert r.artifact.history[-1]["metrics"]["costliest_layers"][0] == bad  # in the manifest
    # the function on its own, and a refusal for a model that is not QDQ
    assert debug_layers(fp32, r.path, xs)[0]["node"] == bad
    with pytest.raises(InputError, match="not a QDQ model"):
        debug_layers(fp32, fp32, xs)


@pytest.mark.parametrize("net", [BadMiddle, Unbalanced])
def test_layers_edited_back_to_float_compute_what_the_float_model_computes(net, tmp_path):
    """``in_float``: nodes read float inputs and weights again, with the ReLU / ReLU6 the
    quantizer folded into a quantized range put back (without it the float node would read
    negative pre-activations)."""
    import onnxruntime as ort

    xs = _samples(8)
    fp32, pre = _preprocessed(net(), xs[0], tmp_path)
    q = quantize(fp32, QuantizeConfig(per_channel=False, method="minmax", debug_layers=0), xs,
                 out=tmp_path / "q.onnx").path
    qmodel, fmodel = onnx.load(str(q)), onnx.load(str(pre))
    convs = {n.name for n in qmodel.graph.node if n.op_type == "Conv"}
    assert len(convs) == 3

    def run(model, x):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x})[0]

    for x in xs[:3]:
        want, quantized = run(fmodel, x), run(qmodel, x)
        np.testing.assert_array_equal(run(in_float(qmodel, fmodel, set()), x), quantized)
        got = run(in_float(qmodel, fmodel, convs), x)
        # only the graph output's own quantize-dequantize is left: within one of its steps
        step = float(np.ptp(want)) / 255
        assert np.abs(got - want).max() <= step * 1.01 < np.abs(quantized - want).max()
    assert float_share(pre, q, xs, sorted(convs)) > 0.9
    assert abs(float_share(pre, q, xs, [])) < 1e-9


def test_a_layer_kept_in_float_reads_float_activations(tmp_path):
    """``nodes_to_exclude``: the node runs in float end to end (onnxruntime alone would keep its
    weights in float but still feed it the dequantized activation); the Q/DQ pair nothing else
    reads is gone, and keeping the debugger's costliest layer in float removes its error."""
    import onnxruntime as ort

    xs = _samples(16)
    fp32, pre = _preprocessed(BadMiddle(), xs[0], tmp_path)
    bad = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"][1]
    plain = quantize(fp32, QuantizeConfig(per_channel=False, method="minmax", debug_layers=0), xs,
                     out=tmp_path / "plain.onnx").path
    kept = quantize(fp32, QuantizeConfig(per_channel=False, method="minmax", nodes_to_exclude=(bad,),
                                         debug_layers=0), xs, out=tmp_path / "kept.onnx")
    g = onnx.load(str(kept.path)).graph
    produced = {o: n.op_type for n in g.node for o in n.output}
    node = next(n for n in g.node if n.name == bad)
    assert [produced.get(i) for i in node.input[:2]] == ["Relu", None]  # float activation, float weight
    assert kept.metrics["compute_nodes_quantized"] == 2 and kept.metrics["nodes_in_float"] == [bad]
    counts = [sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(p)).graph.node) for p in (plain, kept.path)]
    assert counts[1] < counts[0]

    def err(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        f = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return max(float(np.abs(s.run(None, {name: x})[0] - f.run(None, {name: x})[0]).max()) for x in xs[:4])

    assert err(kept.path) < err(plain) / 4
    # the layer feeding the float one lost its output QDQ: the debugger compares its output after
    # the ReLU put back, as before (not the pre-activation values)
    first = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"][0]
    before, after = ({r["node"]: r for r in debug_layers(pre, p, xs, float_gain=False)}[first]
                     for p in (plain, kept.path))
    assert after["sqnr_db"] is None or after["sqnr_db"] > before["sqnr_db"] - 3
    # a name that matches no node is refused, not silently ignored
    with pytest.raises(InputError, match="has no node named 'conv9'; its compute nodes are"):
        quantize(fp32, QuantizeConfig(nodes_to_exclude=("conv9",), debug_layers=0), xs, out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_a_name_fused_by_preprocessing_stands_for_the_fused_node(tmp_path):
    """onnxruntime's pre-processing fuses MatMul + Add into a Gemm named ``<matmul>/MatMulAddFusion``:
    the exported model's MatMul name still excludes it."""
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    # tokens (3-D): the exporter writes MatMul + Add (a 2-D input would give a Gemm already)
    xs = [np.random.default_rng(i).standard_normal((1, 4, 8)).astype(np.float32) for i in range(8)]
    fp32, pre = _preprocessed(net, xs[0], tmp_path)
    fused = [n.name for n in onnx.load(str(pre)).graph.node if n.name.endswith("/MatMulAddFusion")]
    assert len(fused) == 2, "pre-processing fuses each MatMul + Add"
    r = quantize(fp32, QuantizeConfig(nodes_to_exclude=(fused[0].split("/")[0],), debug_layers=0), xs,
                 out=tmp_path / "q.onnx")
    assert r.metrics["nodes_in_float"] == [fused[0]]
    assert r.metrics["compute_nodes_quantized"] == r.metrics["compute_nodes_total"] - 1


def test_budget_tries_transforms_before_the_fallback(tmp_path):
    xs = _samples(32)
    fp32, _ = _preprocessed(Unbalanced(), xs[0], tmp_path)
    held = np.concatenate(_samples(64, seed=3))
    r = quantize(fp32, QuantizeConfig(per_channel=False, method="minmax", min_agreement=0.999), xs,
                 out=tmp_path / "q.onnx", eval_data=held)
    attempts = r.metrics["attempts"]
    assert attempts[0]["transforms"] == [] and attempts[0]["method"] == "ptq"
    assert attempts[1]["transforms"] == ["equalize"]
    assert all("agreement" in a for a in attempts)
    final = attempts[-1]
    assert final["agreement"] >= 0.999 or final["method"] == "fallback"


def test_transform_config_errors():
    with pytest.raises(InputError, match="smooth_quant_alpha must be in"):
        QuantizeConfig(smooth_quant_alpha=1.5)
    with pytest.raises(InputError, match="use mode='static'"):
        QuantizeConfig(mode="dynamic", equalize=True)
    with pytest.raises(InputError, match="equalize must be true or false"):
        QuantizeConfig(equalize="yes")
