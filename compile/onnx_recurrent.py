"""Recurrent and control-flow ONNX nodes rewritten into plain ops, for backends without loops.

TVM's Relax ONNX importer has no converter for ``LSTM``, ``GRU``, ``RNN`` or ``If``, so models
with them (CNN + LSTM OCR, speaker encoders, GRU classifiers) got no compiled artifact. Here:

- ``unroll_recurrent``: every LSTM / GRU / RNN node (forward, reverse, bidirectional; layout 0
  and 1, i.e. torch's ``batch_first``; initial states given or absent; peepholes, ``clip``,
  GRU's ``linear_before_reset`` both ways) becomes MatMul / Add / Sigmoid / Tanh / Mul / Split /
  Squeeze / Unsqueeze / Concat nodes unrolled over the model's fixed sequence length, following
  the ONNX operator spec's equations (gate orders: LSTM ``iofc``, GRU ``zrh``). The input
  projection of all steps is one MatMul; each step adds one MatMul with the recurrent weights.
  torch.onnx exports one node per layer, so stacked layers unroll node by node.
- ``inline_constant_ifs``: an ``If`` whose condition is a constant (after constant folding)
  is replaced by the nodes of the branch it takes.
- ``check_static_control_flow``: an ``If`` left (its condition depends on the inputs) is an
  ``InputError`` naming the node: an unrolled graph cannot choose at run time.

Weights (W, R, B, P) must be constants (initializers), which is what exporters write; the
sequence length must be static (a dynamic one is an ``InputError`` naming the graph input to
give a concrete shape); the batch may be dynamic.

Example:
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from edgeopt.compile.onnx_recurrent import unroll_recurrent
    >>> rng = np.random.default_rng(0)
    >>> w = numpy_helper.from_array(rng.standard_normal((1, 12, 2)).astype(np.float32), "W")
    >>> r = numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "R")
    >>> gru = helper.make_node("GRU", ["x", "W", "R"], ["y", "y_h"], hidden_size=4)
    >>> g = helper.make_graph([gru], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 2])],
    ...                       [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, 1, 4])], [w, r])
    >>> m = unroll_recurrent(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    >>> sorted({n.op_type for n in m.graph.node})
    ['Add', 'Concat', 'Identity', 'MatMul', 'Mul', 'Sigmoid', 'Split', 'Squeeze', 'Sub', 'Tanh', 'Unsqueeze']
"""

from __future__ import annotations

import numpy as np

from edgeopt.core.errors import InputError

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
DEFAULT_DOMAINS = ("", "ai.onnx")
# Gates per op: the rows of W and R are these blocks of hidden_size, in this order.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# Activations with a parameter-free ONNX op of the same name.
PLAIN_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


def unroll_recurrent(model):
    """A copy of ``model`` (an ``onnx.ModelProto`` with inferred shapes) in which every
    LSTM / GRU / RNN node is unrolled into plain ops; other nodes are kept as they are.

    Raises:
        InputError: a dynamic sequence length (naming the graph inputs to give a concrete shape), non-constant weights, ``sequence_lens`` that differ from the
            sequence length, or an attribute with no plain-op equivalent (naming the node).
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if not any(n.op_type in RECURRENT_OPS and n.domain in DEFAULT_DOMAINS for n in graph.node):
        return out
    consts = {t.name: t for t in graph.initializer}
    shapes = _value_shapes(graph)
    taken = _all_names(graph)
    nodes = []
    for i, node in enumerate(graph.node):
        if node.op_type in RECURRENT_OPS and node.domain in DEFAULT_DOMAINS:
            builder = _Builder(node.name or f"{node.op_type.lower()}{i}", taken)
            _unroll(node, builder, consts, shapes, _dynamic_inputs(graph))
            nodes.extend(builder.nodes)
            graph.initializer.extend(builder.initializers)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph, used_names(graph))
    return out


def inline_constant_ifs(model) -> bool:
    """Replace (in place) every ``If`` whose condition is an initializer by the nodes of the
    branch it takes; True when any was inlined."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    nodes, changed = [], False
    for node in graph.node:
        if node.op_type != "If" or node.domain not in DEFAULT_DOMAINS or node.input[0] not in consts:
            nodes.append(node)
            continue
        taken = bool(np.asarray(numpy_helper.to_array(consts[node.input[0]])).reshape(-1)[0])
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
        graph.initializer.extend(branch.initializer)
        nodes.extend(branch.node)
        # The branch's outputs are the If's outputs, in order (branch names are SSA-unique in
        # the model, so its nodes keep their names).
        for inner, outer in zip(branch.output, node.output):
            if outer:
                nodes.append(helper.make_node("Identity", [inner.name], [outer],
                                              name=f"{node.name or 'if'}/{outer}/out"))
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def check_static_control_flow(model, backend: str = "TVM's ONNX importer") -> None:
    """``InputError`` naming the first ``If`` / ``Loop`` / ``Scan`` node left in ``model``: an
    ``If`` left here reads a condition computed from the inputs, and loops are not unrolled
    (only LSTM / GRU / RNN are), so no static graph computes them."""
    for i, node in enumerate(model.graph.node):
        if node.domain not in DEFAULT_DOMAINS:
            continue
        name = node.name or f"#{i}"
        if node.op_type == "If":
            raise InputError(f"If node {name!r} is data-dependent control flow (its condition "
                             f"{node.input[0]!r} depends on the model's inputs); {backend} needs a static "
                             "graph: export the model with the branch fixed (a constant condition)")
        if node.op_type in ("Loop", "Scan"):
            raise InputError(f"{node.op_type} node {name!r}: {backend} has no loops and edgeopt unrolls only "
                             "LSTM / GRU / RNN nodes; export the model with the loop unrolled (a fixed "
                             "trip count, e.g. a Python loop traced by torch.onnx)")


class _Builder:
    """Collects the nodes and initializers that replace one recurrent node, with fresh names."""

    def __init__(self, prefix: str, taken: set):
        self.prefix, self.taken = prefix, taken
        self.nodes, self.initializers = [], []

    def name(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list, hint: str, outputs: int = 1, output_names=None, **attrs):
        from onnx import helper

        names = output_names or [self.name(f"{hint}_{k}" if outputs > 1 else hint) for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"{hint}/{op_type}"),
                                           **attrs))
        return names if outputs > 1 or output_names else names[0]


def _unroll(node, b: _Builder, consts: dict, shapes: dict, dynamic_inputs: list) -> None:
    from onnx import helper, numpy_helper

    op = node.op_type
    where = f"{op} node {b.prefix!r}"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    hidden = int(attrs["hidden_size"])
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    layout = int(attrs.get("layout", 0))
    if attrs.get("input_forget", 0):
        raise InputError(f"{where}: input_forget=1 (coupled input and forget gates) cannot be unrolled; "
                         "expected input_forget=0")
    acts = _activations(attrs, op, direction, where)
    clip = attrs.get("clip")
    inputs = list(node.input) + [""] * (8 - len(node.input))
    x, w_name, r_name, b_name, seq_lens, h0, c0, peep = inputs[:8]
    shape = shapes.get(x)
    seq_axis = 0 if layout == 0 else 1
    if shape is None or len(shape) != 3 or not isinstance(shape[seq_axis], int) or shape[seq_axis] <= 0:
        given = ", ".join(repr(n) for n in dynamic_inputs) or "the model's inputs"
        raise InputError(f"{where}: the sequence length of its input {x!r} is not static "
                         f"(shape {shape}); give {given} a concrete shape (--input-shape, or export with "
                         "static shapes) so the recurrence can be unrolled")
    steps, batch = (shape[0], shape[1]) if layout == 0 else (shape[1], shape[0])
    if not isinstance(batch, int) or batch <= 0:
        batch = None  # a dynamic batch: zero initial states take the batch from X at run time

    def weight(name: str, what: str):
        if not name:
            return None
        if name not in consts:
            raise InputError(f"{where}: its {what} {name!r} is computed at run time; unrolling needs "
                             "constant weights (initializers)")
        return numpy_helper.to_array(consts[name]).astype(np.float32)

    w, r, bias, p = weight(w_name, "W"), weight(r_name, "R"), weight(b_name, "B"), weight(peep, "P")
    if seq_lens:
        lens = weight(seq_lens, "sequence_lens")
        if lens is None or not np.all(lens == steps):
            raise InputError(f"{where}: sequence_lens must be absent or all equal to the sequence length "
                             f"{steps}; sequences of different lengths cannot be unrolled into one graph")
    gates, dirs = GATES[op], w.shape[0]
    if bias is None:
        bias = np.zeros((dirs, 2 * gates * hidden), np.float32)

    if layout == 1:  # [batch, seq, in] -> [seq, batch, in]
        x = b.op("Transpose", [x], "x_seq_first", perm=[1, 0, 2])
    h_init = _initial_state(b, h0, dirs, layout, batch, hidden, "h0", x)
    c_init = _initial_state(b, c0, dirs, layout, batch, hidden, "c0", x) if op == "LSTM" else None
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        run = _STEP[op]
        y_d, h_d, c_d = run(b, x, steps, hidden, w[d], r[d], bias[d], None if p is None else p[d],
                            h_init[d], None if c_init is None else c_init[d], acts[d], clip,
                            reverse, f"d{d}", linear_before_reset=int(attrs.get("linear_before_reset", 0)))
        ys.append(y_d)
        hs.append(h_d)
        cs.append(c_d)
    outs = list(node.output) + [""] * (3 - len(node.output))
    y_out, yh_out, yc_out = outs[:3]
    if y_out:  # [seq, dirs, batch, hidden] (layout 0) or [batch, seq, dirs, hidden] (layout 1)
        y = ys[0] if dirs == 1 else b.op("Concat", ys, "y_dirs", axis=1)
        if layout == 1:
            b.op("Transpose", [y], "y", output_names=[y_out], perm=[2, 0, 1, 3])
        else:
            b.op("Identity", [y], "y", output_names=[y_out])
    for states, name in ((hs, yh_out), (cs, yc_out)):
        if not name:
            continue
        axes = b.const("axis0", np.array([0], np.int64))
        stacked = [b.op("Unsqueeze", [s, axes], "state") for s in states]
        state = stacked[0] if dirs == 1 else b.op("Concat", stacked, "states", axis=0)
        if layout == 1:  # [dirs, batch, hidden] -> [batch, dirs, hidden]
            b.op("Transpose", [state], "state_out", output_names=[name], perm=[1, 0, 2])
        else:
            b.op("Identity", [state], "state_out", output_names=[name])


def _activations(attrs: dict, op: str, direction: str, where: str) -> list[list[str]]:
    """Per direction, the activation op names (f, g[, h]) of ``op``."""
    dirs = 2 if direction == "bidirectional" else 1
    per = len(DEFAULT_ACTIVATIONS[op])
    given = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if not given:
        given = DEFAULT_ACTIVATIONS[op] * dirs
    if len(given) != per * dirs:
        raise InputError(f"{where}: expected {per * dirs} activations, got {given}")
    plain = []
    for a in given:
        if a.lower() not in PLAIN_ACTIVATIONS:
            raise InputError(f"{where}: activation {a!r} cannot be unrolled; expected one of "
                             f"{', '.join(sorted(PLAIN_ACTIVATIONS.values()))}")
        plain.append(PLAIN_ACTIVATIONS[a.lower()])
    return [plain[d * per:(d + 1) * per] for d in range(dirs)]


def _initial_state(b: _Builder, name: str, dirs: int, layout: int, batch: int | None, hidden: int,
                   hint: str, x_seq_first: str):
    """Per direction, the name of a [batch, hidden] initial state (zeros when absent; a dynamic
    batch (None) is read from ``x_seq_first``'s shape)."""
    from onnx import helper

    if not name:
        if batch is not None:
            zeros = b.const(f"{hint}_zeros", np.zeros((batch, hidden), np.float32))
        else:
            dims = b.op("Shape", [x_seq_first], f"{hint}_x_shape", start=1, end=2)
            dims = b.op("Concat", [dims, b.const(f"{hint}_hidden", np.array([hidden], np.int64))],
                        f"{hint}_shape", axis=0)
            zeros = b.op("ConstantOfShape", [dims], f"{hint}_zeros",
                         value=helper.make_tensor("zero", 1, [1], [0.0]))
        return [zeros] * dirs
    axis = 0 if layout == 0 else 1
    axes = b.const(f"{hint}_axis", np.array([axis], np.int64))
    parts = [name] if dirs == 1 else _split(b, name, [1] * dirs, axis, hint)
    return [b.op("Squeeze", [part, axes], f"{hint}_d{d}") for d, part in enumerate(parts)]


def _steps(b: _Builder, x: str, steps: int, w: np.ndarray, x_bias: np.ndarray, tag: str) -> list[str]:
    """The input projection ``X W^T + bias`` of all steps in one MatMul, split into one
    [batch, gates*hidden] tensor per step."""
    proj = b.op("MatMul", [x, b.const(f"{tag}_W_t", w.T)], f"{tag}_x_proj")
    proj = b.op("Add", [proj, b.const(f"{tag}_x_bias", x_bias)], f"{tag}_x_proj_bias")
    if steps == 1:
        parts = [proj]
    else:
        parts = _split(b, proj, [1] * steps, 0, f"{tag}_x_step")
    axes = b.const(f"{tag}_axis0", np.array([0], np.int64))
    return [b.op("Squeeze", [p, axes], f"{tag}_x_t{t}") for t, p in enumerate(parts)]


def _split(b: _Builder, value: str, sizes: list[int], axis: int, hint: str) -> list[str]:
    # Sizes as an input (opset 13+), not num_outputs (opset 18+): prepared models are opset >= 17.
    sizes_name = b.const(f"{hint}_sizes", np.array(sizes, np.int64))
    return b.op("Split", [value, sizes_name], hint, outputs=len(sizes), axis=axis)


def _gates(b: _Builder, value: str, count: int, hidden: int, hint: str) -> list[str]:
    return [value] if count == 1 else _split(b, value, [hidden] * count, 1, hint)


def _act(b: _Builder, op_type: str, value: str, clip, hint: str) -> str:
    if clip is not None:  # the spec clips the activation's input to [-clip, clip]
        value = b.op("Clip", [value, b.const(f"{hint}_lo", np.array(-clip, np.float32)),
                              b.const(f"{hint}_hi", np.array(clip, np.float32))], f"{hint}_clip")
    return b.op(op_type, [value], hint)


def _stack(b: _Builder, outputs: list[str], reverse: bool, tag: str) -> str:
    """[seq, 1, batch, hidden] from per-step [batch, hidden] outputs, in time order."""
    ordered = outputs[::-1] if reverse else outputs
    axes = b.const(f"{tag}_axes01", np.array([0, 1], np.int64))
    expanded = [b.op("Unsqueeze", [h, axes], f"{tag}_y_t{t}") for t, h in enumerate(ordered)]
    return expanded[0] if len(expanded) == 1 else b.op("Concat", expanded, f"{tag}_y", axis=0)


def _lstm(b, x, steps, hidden, w, r, bias, p, h, c, acts, clip, reverse, tag, **_):
    f_act, g_act, h_act = acts
    x_t = _steps(b, x, steps, w, bias[:4 * hidden] + bias[4 * hidden:], tag)
    r_t = b.const(f"{tag}_R_t", r.T)
    peep = None if p is None else [b.const(f"{tag}_P{k}", p[k * hidden:(k + 1) * hidden]) for k in range(3)]
    ys = []
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        pre = b.op("Add", [x_t[t], b.op("MatMul", [h, r_t], f"{tag}_h_proj{t}")], f"{tag}_gates{t}")
        gi, go, gf, gc = _gates(b, pre, 4, hidden, f"{tag}_iofc{t}")
        if peep is not None:  # Pi, Po, Pf: i and f see C(t-1), o sees C(t)
            gi = b.op("Add", [gi, b.op("Mul", [peep[0], c], f"{tag}_pi{t}")], f"{tag}_gi{t}")
            gf = b.op("Add", [gf, b.op("Mul", [peep[2], c], f"{tag}_pf{t}")], f"{tag}_gf{t}")
        i = _act(b, f_act, gi, clip, f"{tag}_i{t}")
        f = _act(b, f_act, gf, clip, f"{tag}_f{t}")
        cand = _act(b, g_act, gc, clip, f"{tag}_c~{t}")
        c = b.op("Add", [b.op("Mul", [f, c], f"{tag}_fc{t}"), b.op("Mul", [i, cand], f"{tag}_ic{t}")],
                 f"{tag}_c{t}")
        if peep is not None:
            go = b.op("Add", [go, b.op("Mul", [peep[1], c], f"{tag}_po{t}")], f"{tag}_go{t}")
        o = _act(b, f_act, go, clip, f"{tag}_o{t}")
        h = b.op("Mul", [o, b.op(h_act, [c], f"{tag}_hc{t}")], f"{tag}_h{t}")
        ys.append(h)
    return _stack(b, ys, reverse, tag), h, c


def _gru(b, x, steps, hidden, w, r, bias, p, h, c, acts, clip, reverse, tag, linear_before_reset=0):
    f_act, g_act = acts
    wb, rb = bias[:3 * hidden], bias[3 * hidden:]
    if linear_before_reset:  # h~ = g(x Wh + Wbh + r * (H Rh + Rbh)): Rbh stays inside
        x_t = _steps(b, x, steps, w, wb + np.concatenate([rb[:2 * hidden], np.zeros(hidden, np.float32)]), tag)
        r_all = b.const(f"{tag}_R_t", r.T)
        rbh = b.const(f"{tag}_Rbh", np.concatenate([np.zeros(2 * hidden, np.float32), rb[2 * hidden:]]))
    else:  # h~ = g(x Wh + (r * H) Rh + Rbh + Wbh): every bias folds into the input projection
        x_t = _steps(b, x, steps, w, wb + rb, tag)
        r_zr = b.const(f"{tag}_Rzr_t", r[:2 * hidden].T)
        r_h = b.const(f"{tag}_Rh_t", r[2 * hidden:].T)
    ys = []
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        xz, xr, xh = _gates(b, x_t[t], 3, hidden, f"{tag}_x_zrh{t}")
        if linear_before_reset:
            h_proj = b.op("Add", [b.op("MatMul", [h, r_all], f"{tag}_h_proj{t}"), rbh], f"{tag}_h_proj_b{t}")
            hz, hr, hh = _gates(b, h_proj, 3, hidden, f"{tag}_h_zrh{t}")
        else:
            hz, hr = _gates(b, b.op("MatMul", [h, r_zr], f"{tag}_h_proj{t}"), 2, hidden, f"{tag}_h_zr{t}")
        z = _act(b, f_act, b.op("Add", [xz, hz], f"{tag}_gz{t}"), clip, f"{tag}_z{t}")
        rr = _act(b, f_act, b.op("Add", [xr, hr], f"{tag}_gr{t}"), clip, f"{tag}_r{t}")
        if linear_before_reset:
            reset = b.op("Mul", [rr, hh], f"{tag}_rh{t}")
        else:
            reset = b.op("MatMul", [b.op("Mul", [rr, h], f"{tag}_rH{t}"), r_h], f"{tag}_rh{t}")
        cand = _act(b, g_act, b.op("Add", [xh, reset], f"{tag}_gh{t}"), clip, f"{tag}_h~{t}")
        # H = (1 - z) * h~ + z * H  ==  h~ + z * (H - h~)
        h = b.op("Add", [cand, b.op("Mul", [z, b.op("Sub", [h, cand], f"{tag}_dh{t}")], f"{tag}_zdh{t}")],
                 f"{tag}_h{t}")
        ys.append(h)
    return _stack(b, ys, reverse, tag), h, None


def _rnn(b, x, steps, hidden, w, r, bias, p, h, c, acts, clip, reverse, tag, **_):
    x_t = _steps(b, x, steps, w, bias[:hidden] + bias[hidden:], tag)
    r_t = b.const(f"{tag}_R_t", r.T)
    ys = []
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        pre = b.op("Add", [x_t[t], b.op("MatMul", [h, r_t], f"{tag}_h_proj{t}")], f"{tag}_pre{t}")
        h = _act(b, acts[0], pre, clip, f"{tag}_h{t}")
        ys.append(h)
    return _stack(b, ys, reverse, tag), h, None


_STEP = {"LSTM": _lstm, "GRU": _gru, "RNN": _rnn}


def _value_shapes(graph) -> dict:
    """Value name -> list of dims (int, or the symbolic name / None of a dynamic one)."""
    shapes = {}
    for v in (*graph.input, *graph.value_info, *graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                              for d in v.type.tensor_type.shape.dim]
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def _dynamic_inputs(graph) -> list[str]:
    init = {t.name for t in graph.initializer}
    return [v.name for v in graph.input if v.name not in init and any(
        not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)]


def _all_names(graph) -> set:
    names = {t.name for t in graph.initializer} | {v.name for v in (*graph.input, *graph.output)}
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    return names


def used_names(graph) -> set:
    """Every value name read by ``graph``'s nodes, sub-graphs (If branches) included."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= used_names(g)
    return used


def _drop_unused(graph, used: set) -> None:
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
