"""Per-layer quantization debugger: which quantized layers cost the most accuracy.

For every quantized compute node (Conv, MatMul, Gemm, ConvTranspose) of a QDQ model, the
node's output in the quantized model is compared with the same tensor of the float model on
calibration data (onnxruntime's ``qdq_loss_debug`` saves and matches the tensors; tensor names
survive quantization). Three numbers per layer:

- ``sqnr_db``: SQNR of the layer's output against the float model's (the error accumulated up
  to and including this layer);
- ``input_sqnr_db``: the same for the layer's (dequantized) input, i.e. the error it inherits;
- ``weight_sqnr_db``: SQNR of its int8 weights against the float weights.

Noise-to-signal ratios of successive layers add up roughly, so the noise a layer *adds* is
``10^(-sqnr/10) - 10^(-input_sqnr/10)`` (``added_noise``). Ranking by the output SQNR alone
would blame every layer after the bad one.

What a layer costs the *model* is measured directly as well (AIMET's per-layer analysis, "one
layer in float at a time"): the quantized graph is edited so that this one node reads float
inputs and float weights, and the share of the model's output error (noise power of the graph
outputs against the float model) that disappears is its ``float_gain``. Layers are ranked by it
(``added_noise`` breaks ties): the first are the ones to keep in float. ``float_share`` measures
a set of layers together: when the top layers' share is small, the loss is spread over the model
(typically activation ranges clipped everywhere: a calibration method, not a layer, is the fix).

Example:
    >>> import numpy as np, torch  # doctest: +SKIP
    >>> import edgeopt.compile as eoc, edgeopt.compress as ec  # doctest: +SKIP
    >>> from edgeopt.compress.quant_debug import debug_layers  # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()  # doctest: +SKIP
    >>> x = [np.random.rand(1, 1, 8, 8).astype("float32") for _ in range(8)]  # doctest: +SKIP
    >>> fp32 = eoc.export(net, None, x[0], out="build/fp32.onnx").path  # doctest: +SKIP
    >>> int8 = ec.quantize(fp32, None, x, out="build/int8.onnx").path  # doctest: +SKIP
    >>> debug_layers(fp32, int8, x)[0]["node"]  # doctest: +SKIP
    'node_Conv_0'
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.core.errors import InputError

from .calibration import calibration_feeds

_COMPUTE = ("Conv", "MatMul", "Gemm", "ConvTranspose")
#: The suffix onnxruntime's QDQ quantizer gives a dequantized activation (also read by
#: ``quant_transforms``' bias correction).
DQ_SUFFIX = "_DequantizeLinear_Output"
_Q_SUFFIX = "_quantized"
_QIN_SUFFIX = "_QuantizeLinear_Input"


def sqnr_db(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float:
    """``20 log10(|ref| / |ref - test|)`` over all samples; ``inf`` when identical."""
    ref = np.concatenate([np.ravel(a) for a in reference]).astype(np.float64)
    got = np.concatenate([np.ravel(a) for a in test]).astype(np.float64)
    noise = float(np.linalg.norm(ref - got))
    if noise == 0:
        return math.inf
    return 20.0 * math.log10(max(float(np.linalg.norm(ref)), 1e-30) / noise)


def _nsr(db: float) -> float:
    return 0.0 if math.isinf(db) else 10.0 ** (-db / 10.0)


def collect(model: str | Path, feeds: list[dict], tmp: Path) -> dict[str, list[np.ndarray]]:
    """Every float tensor of ``model`` on each feed (``{name: [one array per feed]}``).

    Written here rather than with ``qdq_loss_debug.modify_model_output_intermediate_tensors``:
    that one flattens every saved tensor, and bias correction and SmoothQuant need the channel
    axis. (Every tensor of every feed is held: the debugger streams ``sample_tensors`` instead.)
    """
    out: dict[str, list[np.ndarray]] = {}
    for values in sample_tensors(model, feeds, tmp):
        for name, value in values.items():
            out.setdefault(name, []).append(value)
    return out


def sample_tensors(model: str | Path, feeds: list[dict], tmp: Path):
    """Every float tensor of ``model`` (and the graph inputs) on one feed at a time: a
    ``{name: array}`` per feed, so a caller that reduces them holds one sample's tensors."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(model))
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - types of graph inputs/outputs and stored value_info suffice
        pass
    g = m.graph
    typed = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    existing = {o.name for o in g.output}
    inits = {i.name for i in g.initializer}
    for n in g.node:
        for name in n.output:
            if name and name not in existing and name not in inits and typed.get(name) == onnx.TensorProto.FLOAT:
                g.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                existing.add(name)
    augmented = tmp / f"debug-{Path(model).stem}-{len(list(tmp.iterdir()))}.onnx"
    onnx.save(m, str(augmented))
    del m
    options = ort.SessionOptions()
    # optimizations would fuse away the very tensors asked for
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feed in feeds:
        values = dict(zip(names, session.run(names, feed)))
        for name, value in feed.items():  # graph inputs: what the first layers read
            values.setdefault(name, np.asarray(value))
        yield values


class _ErrorSum:
    """SQNR and mean absolute error of a tensor pair summed over samples (nothing held)."""

    def __init__(self):
        self.ref, self.noise, self.abs_mean, self.n = 0.0, 0.0, 0.0, 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        ref = np.asarray(ref, np.float64)
        diff = ref - np.asarray(got, np.float64)
        self.ref += float(np.vdot(ref, ref).real)
        self.noise += float(np.vdot(diff, diff).real)
        self.abs_mean += float(np.mean(np.abs(diff))) if diff.size else 0.0
        self.n += 1

    @property
    def sqnr_db(self) -> float:
        """``sqnr_db`` over every sample added (the same figure on the concatenation)."""
        if self.noise == 0:
            return math.inf
        return 10.0 * math.log10(max(self.ref, 1e-60) / self.noise)


def debug_summary(fp32: str | Path, qdq: str | Path, data: Any, top: int = 5, **options) -> dict:
    """The debugger's record: ``layers`` (``debug_layers``), ``costliest_layers`` (the ``top``
    first names) and ``costliest_float_share`` (the share of the output error those layers
    remove when they run in float together; None when the gains were not measured)."""
    layers, probe = _measure(fp32, qdq, data, **options)
    names = [r["node"] for r in layers[:top]]
    share = round(probe.share(names), 4) if probe is not None and names else None
    return {"layers": layers, "costliest_layers": names, "costliest_float_share": share}


def debug_layers(fp32: str | Path, qdq: str | Path, data: Any, *, max_samples: int = 16,
                 float_acts: dict | None = None, float_gain: bool = True,
                 gain_samples: int = 64) -> list[dict]:
    """Per-layer errors of the QDQ model ``qdq`` against ``fp32``, costliest layer first.

    Args:
        fp32: the float model the QDQ model was quantized from (tensor names must match: pass
            the model ``quantize`` pre-processed, or the exported model it started from).
        qdq: the quantized model (QDQ format).
        data: calibration inputs (anything ``quantize`` accepts as calibration data).
        max_samples: use at most this many samples (every tensor of every sample is held).
        float_acts: the float model's tensors if already collected (``collect``).
        float_gain: measure each layer's ``float_gain`` (one extra onnxruntime session per
            layer) and rank by it; False ranks by ``added_noise`` alone.
        gain_samples: samples the float gains are measured on (only the graph outputs are
            held, so more than ``max_samples``: 16 left the ranking of a ResNet's layers noisy).

    Returns:
        one dict per quantized compute node: ``node``, ``op``, ``output``, ``sqnr_db``,
        ``input_sqnr_db``, ``weight_sqnr_db``, ``added_noise``, ``mean_abs_error`` and
        ``float_gain`` (None when not measured).
    """
    return _measure(fp32, qdq, data, max_samples=max_samples, float_acts=float_acts,
                    float_gain=float_gain, gain_samples=gain_samples)[0]


def _measure(fp32, qdq, data, *, max_samples: int = 16, float_acts: dict | None = None,
             float_gain: bool = True, gain_samples: int = 64):
    """``debug_layers``' work: (layers, the probe that measured the gains or None)."""
    import onnx
    from onnx import numpy_helper

    from edgeopt.runtimes.onnx_file import onnx_io


    qmodel = onnx.load(str(qdq), load_external_data=False)
    if not any(n.op_type == "DequantizeLinear" for n in qmodel.graph.node):
        raise InputError(f"{str(qdq)!r} is not a QDQ model (no DequantizeLinear); the debugger "
                         "compares QDQ models only (format='qdq')")
    inputs, _ = onnx_io(qmodel)
    feeds = calibration_feeds(data, inputs, max_samples)
    g = qmodel.graph
    produced = {o: n for n in g.node for o in n.output}
    fmodel = onnx.load(str(fp32), load_external_data=False)
    finits = {i.name: i for i in fmodel.graph.initializer}

    weights = dequantized_weights(qmodel)

    def dequantized_weight(name: str):
        dq = produced.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None, None
        original = dq.input[0][:-len(_Q_SUFFIX)] if dq.input[0].endswith(_Q_SUFFIX) else dq.input[0]
        return weights.get(original), original

    def plan(float_names: set, q_names: set) -> list[dict]:
        """The quantized compute nodes and the tensor pairs that measure them."""
        rows = []
        for n in g.node:
            if n.op_type not in _COMPUTE:
                continue
            src = produced.get(n.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                continue  # kept in float
            out = n.output[0]
            # what the next layers read: the output after its own QDQ (the quantizer drops a Relu
            # that follows, so the raw output is pre-activation while the float tensor is not)
            # (where a consumer kept in float dropped that QDQ, the activation the quantizer had
            # folded into it was put back as ``<out>_act_in_float``: compare that)
            q_out = next((name for name in (out + DQ_SUFFIX, out + "_act_in_float") if name in q_names), out)
            if out.endswith(_QIN_SUFFIX):  # a graph output: its QDQ ends in the original name
                out = q_out = out[:-len(_QIN_SUFFIX)]
            if q_out not in q_names or out not in float_names:
                continue
            x_float = n.input[0][:-len(DQ_SUFFIX)] if n.input[0].endswith(DQ_SUFFIX) else src.input[0]
            rows.append({"node": n, "out": out, "q_out": q_out, "x_float": x_float,
                         "x_q": n.input[0] if x_float in float_names and n.input[0] in q_names else None,
                         "output": _ErrorSum(), "input": _ErrorSum()})
        return rows

    # One sample's tensors of both models at a time: holding every tensor of every sample took
    # 2 GB for a 10 MB OCR model at 48x320 with 16 samples.
    rows = None
    with tempfile.TemporaryDirectory(prefix="edgeopt-qdebug-") as tmp:
        tmp = Path(tmp)
        float_samples = (sample_tensors(fp32, feeds, tmp) if float_acts is None else
                         ({k: v[i] for k, v in float_acts.items()} for i in range(len(feeds))))
        for f_acts, q_acts in zip(float_samples, sample_tensors(qdq, feeds, tmp)):
            if rows is None:
                rows = plan(set(f_acts), set(q_acts))
            for r in rows:
                r["output"].add(f_acts[r["out"]], q_acts[r["q_out"]])
                if r["x_q"] is not None:
                    r["input"].add(f_acts[r["x_float"]], q_acts[r["x_q"]])
    layers = []
    for r in rows or []:
        n = r["node"]
        s_out = r["output"].sqnr_db
        s_in = r["input"].sqnr_db if r["x_q"] is not None else math.inf
        w_q, w_name = dequantized_weight(n.input[1]) if len(n.input) > 1 else (None, None)
        s_w = math.inf
        if w_q is not None and w_name in finits:
            s_w = sqnr_db([numpy_helper.to_array(finits[w_name])], [w_q])
        err = r["output"].abs_mean / max(r["output"].n, 1)
        layers.append({"node": n.name, "op": n.op_type, "output": r["out"],
                       "sqnr_db": _finite(s_out), "input_sqnr_db": _finite(s_in),
                       "weight_sqnr_db": _finite(s_w),
                       "added_noise": max(_nsr(s_out) - _nsr(s_in), 0.0),
                       "mean_abs_error": float(err), "float_gain": None})
    probe = None
    if float_gain and layers:
        probe = _FloatProbe(fp32, qmodel, calibration_feeds(data, inputs, max(gain_samples, 1)))
        for r in layers:
            r["float_gain"] = round(probe.share([r["node"]]), 4)
    layers.sort(key=lambda r: (-(r["float_gain"] or 0.0), -r["added_noise"]))
    return layers, probe


def float_share(fp32: str | Path, qdq: str | Path, data: Any, nodes: Sequence[str], *,
                max_samples: int = 64) -> float:
    """Share of the QDQ model's output error removed when ``nodes`` run in float together.

    1.0: those layers are the whole loss; near 0: the loss is elsewhere or spread. Measured on
    ``data`` (calibration inputs) against ``fp32`` (the model ``qdq`` was quantized from).
    """
    import onnx

    from edgeopt.runtimes.onnx_file import onnx_io


    qmodel = onnx.load(str(qdq), load_external_data=False)
    feeds = calibration_feeds(data, onnx_io(qmodel)[0], max_samples)
    return _FloatProbe(fp32, qmodel, feeds).share(nodes)


class _FloatProbe:
    """Output error of a QDQ model with chosen compute nodes edited back to float."""

    def __init__(self, fp32, qmodel, feeds: list[dict]):
        import onnx

        self.fmodel = onnx.load(str(fp32), load_external_data=False)
        self.qmodel, self.feeds = qmodel, feeds
        self.outputs = [o.name for o in qmodel.graph.output]
        self.ref = _run(self.fmodel, feeds, self.outputs)
        self.base = self._noise(_run(qmodel, feeds, self.outputs))

    def _noise(self, got: list[list[np.ndarray]]) -> float:
        """Noise-to-signal power of the graph outputs, summed over outputs."""
        return sum(_nsr(sqnr_db(r, g)) for r, g in zip(self.ref, got))

    def share(self, nodes: Sequence[str]) -> float:
        if self.base == 0:
            return 0.0
        edited = in_float(self.qmodel, self.fmodel, set(nodes))
        return (self.base - self._noise(_run(edited, self.feeds, self.outputs))) / self.base


def _run(model, feeds: list[dict], names: list[str]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out: list[list[np.ndarray]] = [[] for _ in names]
    for feed in feeds:
        for i, value in enumerate(session.run(names, feed)):
            out[i].append(value)
    return out


def in_float(qmodel, fmodel, nodes: set):
    """A copy of the QDQ ``qmodel`` in which the compute ``nodes`` read float inputs and weights.

    Weights and biases come from ``fmodel`` (the float model ``qmodel`` was quantized from);
    activations are read before their QuantizeLinear. Where the quantizer absorbed a Relu or
    Clip into the quantized range (the float tensor then holds pre-activation values), the
    activation is put back in front of the float node. ``quantize`` applies it to its
    ``nodes_to_exclude`` (onnxruntime's exclusion keeps float weights but still feeds the node
    a quantized input); the debugger applies it to measure a layer without quantizing again.
    """
    import copy

    import onnx

    m = copy.deepcopy(qmodel)
    g = m.graph
    produced = {o: n for n in g.node for o in n.output}
    f_produced = {o: n for n in fmodel.graph.node for o in n.output}
    f_inits = {i.name: i for i in fmodel.graph.initializer}
    have = {i.name for i in g.initializer}
    nodes_out, added = [], {}

    def float_init(name: str) -> str | None:
        if name not in f_inits:
            return None
        new = name + "_in_float"
        if new not in added and new not in have:
            t = copy.deepcopy(f_inits[name])
            t.name = new
            added[new] = t
        return new

    for n in g.node:
        if n.name in nodes:
            for i, name in enumerate(n.input):
                dq = produced.get(name)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                src = dq.input[0]
                if src in have:  # a quantized weight or bias
                    original = src[:-len(_Q_SUFFIX)] if src.endswith(_Q_SUFFIX) else src
                    new = float_init(original) or float_init(name)
                    if new is not None:
                        n.input[i] = new
                    continue
                q = produced.get(src)
                if q is None or q.op_type != "QuantizeLinear":
                    continue
                x = q.input[0]
                f_op, q_op = f_produced.get(x), produced.get(x)
                if (f_op is not None and f_op.op_type in ("Relu", "Clip")
                        and (q_op is None or q_op.op_type != f_op.op_type)):
                    act = x + "_act_in_float"
                    if act not in produced:
                        extra = [float_init(a) or a for a in f_op.input[1:]]
                        nodes_out.append(onnx.helper.make_node(f_op.op_type, [x, *extra], [act],
                                                               name=act + "_node"))
                        produced[act] = nodes_out[-1]
                    x = act
                n.input[i] = x
        nodes_out.append(n)
    del g.node[:]
    g.node.extend(nodes_out)
    g.initializer.extend(added.values())
    return drop_unused(m)


def drop_unused(m):
    """Remove, in place, the nodes and initializers nothing reads any more (a QuantizeLinear /
    DequantizeLinear pair whose only reader went back to float); returns ``m``."""
    g = m.graph
    while True:
        read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in read for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for t in [t for t in g.initializer if t.name not in read]:
        g.initializer.remove(t)
    return m


def dequantized_weights(qmodel) -> dict[str, np.ndarray]:
    """``{float weight name: its dequantized int8 values}`` of a QDQ ``onnx.ModelProto``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    out = {}
    for dq in qmodel.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        zp = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64)
              if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
        if scale.size > 1:
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        name = dq.input[0][:-len(_Q_SUFFIX)] if dq.input[0].endswith(_Q_SUFFIX) else dq.input[0]
        out[name] = (w - zp) * scale
    return out


def _finite(db: float) -> float | None:
    """JSON has no infinity: an exact match is recorded as ``None``."""
    return None if math.isinf(db) else round(db, 3)


def format_layers(layers: list[dict], top: int = 5) -> list[str]:
    """Lines naming the ``top`` costliest layers (for the CLI and progress)."""
    def db(v):
        return "exact" if v is None else f"{v:.1f} dB"

    def gain(v):
        return "" if v is None else f"in float it removes {v * 100:.0f}% of the output error; "

    return [f"  {r['node']} ({r['op']}): {gain(r.get('float_gain'))}output SQNR {db(r['sqnr_db'])} "
            f"(input {db(r['input_sqnr_db'])}, weights {db(r['weight_sqnr_db'])})"
            for r in layers[:top]]


def share_line(share: float | None, count: int) -> str | None:
    """What keeping the named layers in float would buy, and what to do when it is little."""
    if share is None or count == 0:
        return None
    line = f"the {count} named layers in float together remove {share * 100:.0f}% of the output error"
    if share < 0.5:
        line += ("; the error is spread over the model (activation ranges rather than a few "
                 "layers): try another calibration method, per-channel weights or QAT")
    return line
