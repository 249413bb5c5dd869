"""Pre-quantization transforms on the ONNX graph: equalization, bias correction, SmoothQuant.

They run on the model ``quantize`` reads (ONNX, after onnxruntime's pre-processing has folded
every BatchNorm into its Conv), so they apply to any exported model, whatever framework it came
from, and need no torch. onnxruntime's quantizer offers none of them for QDQ CNNs (its
SmoothQuant needs Intel Neural Compressor, an unpinned heavy dependency; its cross-layer
equalization does not exist), so they are written here, each after its paper:

- ``equalize``: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): for a
  Conv -> [Relu | Clip(0, 6)] -> Conv pair (plain or depthwise on either side), output channel
  ``i`` of the first conv is divided by ``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of the
  second multiplied by it, so both see the range ``sqrt(r1_i r2_i)``. Relu commutes with a
  positive scale; Clip(0, 6) does not (its ceiling would become ``6 / s_i`` per channel), so a
  ReLU6 is rewritten to Relu + Min(6 / s) with a per-channel ceiling: exact, at the cost of one
  elementwise op.
- ``bias_correct``: empirical bias correction (the same paper, section 4.2): int8 weights shift
  a layer's mean output by ``E[(W_q - W) x]``; that shift is measured on calibration data with
  the quantized model's own (dequantized) inputs and subtracted from the float bias, so the
  re-quantized model's mean output matches the float model's layer by layer.
- ``smooth_quant``: SmoothQuant (Xiao et al. 2023): a LayerNormalization whose output feeds only
  MatMuls with constant weights has per-channel activation outliers migrated into the weights:
  ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, LayerNorm scale and bias divided by ``s``,
  weight rows multiplied by it. Exact in float.

Example:
    >>> import numpy as np, onnx  # doctest: +SKIP
    >>> from edgeopt.compress.quant_transforms import equalize  # doctest: +SKIP
    >>> model, pairs = equalize(onnx.load("build/pre.onnx"))  # doctest: +SKIP
    >>> len(pairs) > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


def _graph_maps(g):
    from onnx import numpy_helper

    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}

    def array(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    return consumers, producer, inits, outputs, array


def _set_init(g, inits, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    new = numpy_helper.from_array(value.astype(numpy_helper.to_array(inits[name]).dtype), name)
    inits[name].CopyFrom(new)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else a.f
    return default


def _unique_weight(consumers, name: str) -> bool:
    """A weight shared by several nodes cannot be rescaled for one of them."""
    return len(consumers[name]) == 1


def _clip_bounds(node, array) -> tuple[float | None, float | None]:
    lo = float(array(node.input[1])) if len(node.input) > 1 and node.input[1] and array(node.input[1]) is not None else None
    hi = float(array(node.input[2])) if len(node.input) > 2 and node.input[2] and array(node.input[2]) is not None else None
    if lo is None:
        lo = _attr(node, "min", None)
    if hi is None:
        hi = _attr(node, "max", None)
    return lo, hi


def equalize(model, iterations: int = 4):
    """Cross-layer equalization of every eligible Conv pair of ``model`` (an ``onnx.ModelProto``,
    BatchNorm already folded). Returns ``(new_model, pairs)``: the model computes the same
    function in float; ``pairs`` names the equalized (first, second) conv nodes."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    consumers, producer, inits, outputs, array = _graph_maps(g)

    def depthwise(conv) -> bool:
        w = array(conv.input[1])
        return _attr(conv, "group", 1) == w.shape[0] and w.shape[1] == 1

    pairs = []
    for first in list(g.node):
        if first.op_type != "Conv" or len(first.input) < 2 or first.input[1] not in inits:
            continue
        if not (_attr(first, "group", 1) == 1 or depthwise(first)):
            continue
        y = first.output[0]
        if y in outputs or len(consumers[y]) != 1:
            continue
        act = consumers[y][0]
        kind, link = "linear", act
        if act.op_type == "Relu":
            kind = "relu"
        elif act.op_type == "Clip":
            lo, hi = _clip_bounds(act, array)
            if lo != 0.0 or hi is None:
                continue
            kind = "clip"
        if kind != "linear":
            z = act.output[0]
            if z in outputs or len(consumers[z]) != 1:
                continue
            link = consumers[z][0]
        second = link
        if second.op_type != "Conv" or len(second.input) < 2 or second.input[1] not in inits:
            continue
        if not (_attr(second, "group", 1) == 1 or depthwise(second)):
            continue
        if not (_unique_weight(consumers, first.input[1]) and _unique_weight(consumers, second.input[1])):
            continue
        if len(first.input) > 2 and first.input[2] and not _unique_weight(consumers, first.input[2]):
            continue
        pairs.append((first, act if kind != "linear" else None, second, kind))

    ceilings: dict[str, np.ndarray] = {}  # Clip node name -> per-channel ceiling after scaling
    for _ in range(iterations):
        for first, act, second, kind in pairs:
            w1, w2 = array(first.input[1]).astype(np.float64), array(second.input[1]).astype(np.float64)
            c = w1.shape[0]
            r1 = np.abs(w1.reshape(c, -1)).max(axis=1)
            if depthwise(second):
                r2 = np.abs(w2.reshape(c, -1)).max(axis=1)
            else:
                r2 = np.abs(np.moveaxis(w2, 1, 0).reshape(c, -1)).max(axis=1)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones(c)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            shape = (c,) + (1,) * (w1.ndim - 1)
            _set_init(g, inits, first.input[1], w1 / s.reshape(shape))
            if len(first.input) > 2 and first.input[2]:
                _set_init(g, inits, first.input[2], array(first.input[2]).astype(np.float64) / s)
            if depthwise(second):
                _set_init(g, inits, second.input[1], w2 * s.reshape(shape))
            else:
                _set_init(g, inits, second.input[1], w2 * s.reshape((1, c) + (1,) * (w2.ndim - 2)))
            if kind == "clip":
                _, hi = _clip_bounds(act, array)
                prev = ceilings.get(act.name, np.full(c, hi))
                ceilings[act.name] = prev / s
    # ReLU6 -> Relu + Min(per-channel ceiling): the only exact form once channels are rescaled.
    for first, act, second, kind in pairs:
        if kind != "clip" or act.name not in ceilings:
            continue
        name = act.name or act.output[0]
        relu_out = f"{act.output[0]}_equalized_relu"
        ceiling = f"{name}_equalized_ceiling"
        c = ceilings[act.name]
        g.initializer.append(numpy_helper.from_array(
            c.astype(np.float32).reshape((len(c),) + (1,) * 2), ceiling))
        index = list(g.node).index(act)
        relu = helper.make_node("Relu", [act.input[0]], [relu_out], name=f"{name}_relu")
        cap = helper.make_node("Min", [relu_out, ceiling], [act.output[0]], name=f"{name}_ceiling")
        g.node.remove(act)
        g.node.insert(index, cap)
        g.node.insert(index, relu)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)  # the Clip bounds replaced above
    return model, [(f.name, s.name) for f, _, s, _ in pairs]


def _mean_inputs(acts: Sequence[np.ndarray], op: str, channels: int) -> np.ndarray:
    """Per-channel mean of a layer's input over samples (and spatial positions)."""
    x = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in acts])
    if op == "Conv":
        per = [np.asarray(a, np.float64) for a in acts]
        return np.mean([p.reshape(p.shape[0], channels, -1).mean(axis=(0, 2)) for p in per], axis=0)
    return x.reshape(-1, channels).mean(axis=0)


def bias_correct(pre, qdq, q_acts: dict) -> tuple:
    """Empirical bias correction of the float model ``pre`` given its quantized model ``qdq``
    (both ``onnx.ModelProto``) and the quantized model's tensors on calibration data
    (``quant_debug.collect``). Returns ``(new_pre, corrected_node_names)``."""
    import onnx
    from onnx import numpy_helper

    from .quant_debug import DQ_SUFFIX, dequantized_weights

    pre = onnx.ModelProto.FromString(pre.SerializeToString())
    g = pre.graph
    consumers, producer, inits, outputs, array = _graph_maps(g)
    deq = dequantized_weights(qdq)
    qnodes = {n.name: n for n in qdq.graph.node}
    done = []
    for n in list(g.node):
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        q = qnodes.get(n.name)
        if q is None or not q.input[0].endswith(DQ_SUFFIX) or q.input[0] not in q_acts:
            continue  # kept in float, or its input is not quantized
        w, wq = array(n.input[1]).astype(np.float64), deq.get(n.input[1])
        if wq is None or wq.shape != w.shape:
            continue
        dw = wq - w
        if n.op_type == "Conv":
            groups = _attr(n, "group", 1)
            cin_g = w.shape[1]
            mean_x = _mean_inputs(q_acts[q.input[0]], "Conv", cin_g * groups)
            cout = w.shape[0]
            per_group = cout // groups
            shift = np.empty(cout)
            for o in range(cout):
                grp = o // per_group
                shift[o] = np.sum(dw[o].reshape(cin_g, -1).sum(axis=1) * mean_x[grp * cin_g:(grp + 1) * cin_g])
        else:
            if n.op_type == "Gemm" and _attr(n, "transB", 0):
                dw = dw.T
            if dw.ndim != 2:
                continue
            mean_x = _mean_inputs(q_acts[q.input[0]], "MatMul", dw.shape[0])
            shift = mean_x @ dw
        bias = _bias_of(g, n, consumers, inits, outputs, array, len(shift))
        if bias is None:
            continue
        _set_init(g, inits, bias, array(bias).astype(np.float64) - shift)
        done.append(n.name)
    return pre, done


def _bias_of(g, n, consumers, inits, outputs, array, channels: int) -> str | None:
    """The initializer holding ``n``'s bias (created for a Conv without one), or None."""
    from onnx import numpy_helper

    if n.op_type in ("Conv", "Gemm"):
        if len(n.input) > 2 and n.input[2] in inits and _unique_weight(consumers, n.input[2]):
            return n.input[2] if array(n.input[2]).size == channels else None
        if n.op_type == "Conv" and len(n.input) == 2:
            name = f"{n.name or n.output[0]}_corrected_bias"
            g.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
            inits[name] = g.initializer[-1]
            n.input.append(name)
            return name
        return None
    # MatMul: the bias is the constant of the Add it feeds (Linear exports as MatMul + Add)
    y = n.output[0]
    if y in outputs or len(consumers[y]) != 1 or consumers[y][0].op_type != "Add":
        return None
    add = consumers[y][0]
    other = [i for i in add.input if i != y]
    if len(other) == 1 and other[0] in inits and _unique_weight(consumers, other[0]) \
            and array(other[0]).size == channels:
        return other[0]
    return None


def _matmul_users(y: str, consumers, outputs) -> list | None:
    """The MatMul/Gemm nodes that read ``y`` as their first input, directly or through
    Reshape/Flatten (onnxruntime's pre-processing turns a 3-D Linear into Reshape-Gemm-Reshape);
    ``None`` if anything else reads it."""
    users = []
    for u in consumers[y]:
        if u.op_type in ("MatMul", "Gemm") and u.input[0] == y:
            users.append(u)
        elif u.op_type in ("Reshape", "Flatten") and u.input[0] == y and u.output[0] not in outputs:
            inner = _matmul_users(u.output[0], consumers, outputs)
            if not inner:
                return None
            users += inner
        else:
            return None
    return users


def smooth_quant(model, f_acts: dict, alpha: float = 0.5):
    """SmoothQuant migration for every LayerNormalization that feeds only constant-weight
    MatMuls. ``f_acts``: the float model's tensors on calibration data (``quant_debug.collect``).
    Returns ``(new_model, smoothed_layernorm_names)``; the float function is unchanged."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    consumers, producer, inits, outputs, array = _graph_maps(g)
    done = []
    for ln in list(g.node):
        if ln.op_type != "LayerNormalization" or len(ln.input) < 3 or ln.input[1] not in inits \
                or ln.input[2] not in inits:
            continue
        y = ln.output[0]
        if y in outputs or y not in f_acts:
            continue
        users = _matmul_users(y, consumers, outputs)
        if not users or not all(u.input[1] in inits and array(u.input[1]).ndim == 2
                                and _unique_weight(consumers, u.input[1]) for u in users):
            continue
        if not (_unique_weight(consumers, ln.input[1]) and _unique_weight(consumers, ln.input[2])):
            continue
        k = array(ln.input[1]).size

        def rows(u):  # the weight as (K, N): K is the LayerNorm's channel axis
            w = array(u.input[1]).astype(np.float64)
            return w.T if u.op_type == "Gemm" and _attr(u, "transB", 0) else w

        if any(rows(u).shape[0] != k for u in users):
            continue
        x_max = np.max([np.abs(np.asarray(a)).reshape(-1, k).max(axis=0) for a in f_acts[y]], axis=0)
        w_max = np.max([np.abs(rows(u)).max(axis=1) for u in users], axis=0)
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-5, None)
        _set_init(g, inits, ln.input[1], array(ln.input[1]).astype(np.float64) / s)
        _set_init(g, inits, ln.input[2], array(ln.input[2]).astype(np.float64) / s)
        for u in users:
            scaled = rows(u) * s[:, None]
            _set_init(g, inits, u.input[1], scaled.T if u.op_type == "Gemm" and _attr(u, "transB", 0) else scaled)
        done.append(ln.name)
    return model, done
