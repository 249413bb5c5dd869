"""Relax rewrite: convolutions and matmuls with constant weights -> oneDNN kernels.

``BuildConfig(kernels="onednn")`` compiles a model whose convolutions and dense matmuls run on
oneDNN (the kernel library under OpenVINO and PyTorch's CPU backend) through edgeopt's plugin
(``runtimes/onednn``), while TVM keeps everything else: elementwise ops, pooling, layout
transforms and memory planning. Untuned TVM has no fast CPU schedule for a conv (ResNet-18:
1.5 s), and tuning takes half an hour per model; the library is fast at once.

The pass

1. turns the importer's ``Clip`` (two ``call_tir`` kernels TVM cannot see through) back into
   Relax ``maximum`` / ``minimum`` ops (``clip_as_relax_ops``), so layouts propagate through it;
2. converts every conv to NHWC (oneDNN's native activation layout for fp32 and int8 on AVX-512;
   the transposes sit at the model's edges and fold into constant weights); an op the layout
   reaches that TVM cannot lower in NHWC (a transposed conv) keeps NCHW (``conv_layouts``);
3. replaces each chain

       conv2d|matmul(x, W const) [+ bias const] [+ residual] [-> relu | clip(lo, hi) | gelu | swish | hardswish]

   by one ``call_dps_packed("edgeopt.onednn.conv2d" | "edgeopt.onednn.matmul", ...)`` with the
   bias, the residual sum and the activation fused as oneDNN post-ops; an intermediate value
   used anywhere else ends the chain there. Per-channel constant ``subtract`` / ``multiply`` /
   ``divide`` / ``add`` before the residual (a batch norm) fold into the weights and bias;
4. replaces each NCHW ``conv2d_transpose`` with constant weights by
   ``edgeopt.onednn.conv2d_transpose`` (oneDNN's deconvolution).

Example:
    >>> from edgeopt.compile.onednn_offload import offload_to_onednn  # doctest: +SKIP
    >>> mod, counts = offload_to_onednn(mod)  # doctest: +SKIP
    >>> counts  # doctest: +SKIP
    {'conv2d': 20, 'matmul': 1}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CONV = "edgeopt.onednn.conv2d"
MATMUL = "edgeopt.onednn.matmul"
DECONV = "edgeopt.onednn.conv2d_transpose"
_NONE, _RELU, _CLIP, _GELU, _SWISH, _HARDSWISH = 0, 1, 2, 3, 4, 5
_INT8_CORES = ("relax.nn.conv2d", "relax.nn.conv1d", "relax.matmul")  # ops an int8 call computes
_FLOAT_OUT = ("float32", "", "None", "void")  # an unset out_dtype means the input dtype


def offload_to_onednn(mod, int8: bool = True, target=None, fallbacks: list | None = None,
                      min_flops: int = 0, kept_small: list | None = None, bf16: bool = False):
    """Return ``(new_mod, counts)`` for a Relax module from ``from_onnx``: counts of the ops
    offloaded, ``conv2d`` / ``matmul`` / ``batch_matmul`` (float32) and ``conv2d_q`` /
    ``matmul_q`` (int8). ``int8=False`` keeps a QDQ model's float semantics (its convs run
    on oneDNN in float32 with the dequantized weights). ``fallbacks``, when given, receives one
    line per op kind kept out of NHWC because TVM cannot lower it there (``to_nhwc``);
    ``target`` is the scope of that check. Float convs and matmuls of fewer than ``min_flops``
    FLOPs (``kernels: auto`` passes ``MIN_FLOPS``) stay with TVM, one line per kind in
    ``kept_small``; int8 ones always go to oneDNN. ``bf16=True`` stores the weights of the float
    convs and matmuls offloaded in bfloat16: the plugin runs them as bf16 kernels (activations
    converted on the way in, fp32 accumulation, fp32 bias, post-ops and outputs)."""
    from tvm import relax

    mod = scalar_operands(clip_as_relax_ops(mod))
    mod, kept = to_nhwc(mod, target)
    if fallbacks is not None:
        fallbacks.extend(kept)
    counts = {"conv2d": 0, "conv2d_transpose": 0, "matmul": 0, "batch_matmul": 0, "layer_norm": 0, "softmax": 0,
              "max_pool2d": 0, "conv2d_q": 0, "matmul_q": 0, "max_pool2d_q": 0}
    # int8 first: the QDQ chains still hold the int8 weights (constant folding would turn
    # dequantize(Wq) into float weights)
    small: dict[str, int] = {}
    if int8:
        # int8 ops go to oneDNN whatever their size: left to TVM in this build they would run
        # as float convs on dequantized values (its int8 rewrite belongs to kernels: tvm), and
        # an int8 model that computes in float is the silent kind of wrong
        mod = _rewrite(mod, _plan_int8, counts)
    # weights and biases become plain constants; the transposes ConvertLayout duplicated merge
    mod = relax.transform.FoldConstant()(mod)
    mod = relax.transform.EliminateCommonSubexpr()(mod)
    # an inference batch norm leaves ``(y, mean, var)[0]``: reading y directly lets the
    # activation after it join the conv's chain
    mod = relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(mod))

    mod = _rewrite(mod, _plan, counts, min_flops, small, finish=as_bf16 if bf16 else None)
    if kept_small is not None:
        kept_small.extend(f"{n} {kind} under {min_flops:,} FLOPs" for kind, n in sorted(small.items()))
    return relax.transform.DeadCodeElimination()(mod), counts


#: Convs and matmuls below this many FLOPs stay with TVM under ``kernels: auto``. A oneDNN call
#: has a fixed cost (primitive lookup, a parallel region whose threads are woken and
#: joined; ~4 us on 2 cores) that a tiny op does not repay, and a co-located load stretches the
#: join: a GRU classifier whose per-step matmuls went to oneDNN ran 27 ms median on a loaded
#: machine (0.069 ms at best), against 0.044 ms with TVM's own kernels. Measured per fp32 op
#: (benchmarks/RESULTS.md, "small ops"): TVM's untuned kernel is 2x faster at 512 and 2,048
#: FLOPs, 1.3x slower at 8,192 (1 us), 1.5x at 32,768 and 7.5x at 131,072; convs cross over
#: sooner (1.2x slower at 73,728). Below 16,384 an op costs TVM at most about a microsecond more
#: when the machine is quiet and never waits on a descheduled worker thread when it is not.
MIN_FLOPS = 16_384


def plan_flops(plan) -> int | None:
    """Multiply-adds x 2 of a conv / matmul plan (None: not one, or a dynamic output shape)."""
    if plan.weight is None or plan.kind not in ("conv2d", "matmul", "conv2d_q", "matmul_q", "conv2d_transpose"):
        return None
    if not all(isinstance(d, int) for d in plan.out_shape):
        return None
    per_output = plan.weight.shape[0] if plan.kind.startswith("matmul") else int(np.prod(plan.weight.shape[1:]))
    return 2 * int(np.prod(plan.out_shape)) * int(per_output)


def _rewrite(mod, planner, counts, min_flops: int = 0, small: dict | None = None, finish=None):
    """Replace every chain ``planner(func)`` plans by its oneDNN call (those under ``min_flops``
    dropped first); ``finish(func, plans)`` sees the plans that stay before the rewrite."""
    from tvm import relax

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            plans = planner(func)
            for end, plan in list(plans.items()):
                flops = plan_flops(plan)
                if flops is not None and flops < min_flops:
                    del plans[end]  # its ops stay as they are: TVM compiles them
                    if small is not None:
                        small[plan.kind] = small.get(plan.kind, 0) + 1
            if finish is not None:
                finish(func, plans)
            if plans:
                mod[gv] = _make_rewriter()(mod, plans).visit_expr(func)
                for plan in plans.values():
                    counts[plan.kind] += 1
    return relax.transform.DeadCodeElimination()(mod)


def to_nhwc(mod, target=None):
    """``(module, fallbacks)``: every conv in NHWC (weights stay OIHW: the plugin reorders them
    once), an op the layout reaches that TVM cannot lower in it (a transposed conv: topi has it
    in NCHW only) kept in the model's layout, one line per such op kind in ``fallbacks``
    (``conv_layouts.convert_layouts``).

    TVM has no layout rule for ``quantize`` / ``dequantize``, so ConvertLayout would put a
    transpose around each of them in a QDQ model. When every quantization of an activation is
    per-tensor (a scalar scale: any layout is right), the conversion runs with the elementwise
    rule for them (borrowed from ReLU for the call and restored afterwards)."""
    import tvm

    from .conv_layouts import convert_layouts, nhwc_convs

    def convert(m):
        return convert_layouts(m, nhwc_convs(kernel="OIHW"), target)

    if not _activations_quantized_per_tensor(mod):
        return convert(mod)
    rule = tvm.ir.Op.get("relax.nn.relu").get_attr("FRelaxInferLayout")
    ops = [tvm.ir.Op.get(name) for name in ("relax.quantize", "relax.dequantize")]
    if any(op.get_attr("FRelaxInferLayout") is not None for op in ops):  # a TVM with its own rule
        return convert(mod)
    try:
        for op in ops:
            op.set_attr("FRelaxInferLayout", rule)
        return convert(mod)
    finally:
        for op in ops:
            op.reset_attr("FRelaxInferLayout")


def _activations_quantized_per_tensor(mod) -> bool:
    from tvm import relax

    found = False
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        values = _values(func)
        for value in values.values():
            if _op_name(value) in ("relax.quantize", "relax.dequantize"):
                if _eval_const(value.args[0], values) is not None:
                    continue  # a weight: its layout never changes
                scale = _eval_const(value.args[1], values)
                if scale is None or scale.size != 1:
                    return False
                found = True
    return found


def _values(func) -> dict:
    from tvm import relax

    return {b.var: b.value for block in func.body.blocks for b in block.bindings
            if isinstance(b, relax.VarBinding)}


def _eval_const(expr, values, depth: int = 0):
    """numpy value of a constant expression the importer leaves unfolded (a constant, or
    dequantize / reshape / permute_dims / astype / NaN-guard ``where`` of one), else None."""
    from tvm import relax

    if depth > 8:
        return None
    if isinstance(expr, relax.Var):
        if expr not in values:
            return None
        expr = values[expr]
    if isinstance(expr, _Constant()):
        value = expr.value
        # a tensor constant holds a tvm Tensor; some imported scalars hold a plain number
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    name = _op_name(expr)
    if name is None:
        return None
    args = [_eval_const(a, values, depth + 1) if not isinstance(a, relax.ShapeExpr) else a for a in expr.args]
    if name == "relax.dequantize" and all(a is not None for a in args[:3]):
        x, scale, zp = args[:3]
        axis = int(expr.attrs.axis) % max(x.ndim, 1)
        shape = [1] * x.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        return ((x.astype(np.float64) - zp.reshape(shape if zp.size > 1 else ()).astype(np.float64))
                * scale.reshape(shape if scale.size > 1 else ()).astype(np.float64)).astype(np.float32)
    if name == "relax.reshape" and args[0] is not None:
        return args[0].reshape([int(d) for d in expr.args[1].values])
    if name == "relax.permute_dims" and args[0] is not None:
        axes = expr.attrs.axes
        return np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    if name == "relax.astype" and args[0] is not None:
        return args[0].astype(str(expr.attrs.dtype))
    if name == "relax.where" and args[2] is not None:
        return args[2]  # where(isnan(c), inf, c): the importer's NaN guard on Clip bounds
    return None


def as_bf16(func, plans: dict) -> None:
    """Make ``plans``' float convs and matmuls bf16 kernels; one whose output only feeds another
    one's src (no residual of its own to add in fp32) writes that output in bf16: the consumer
    would convert it to bf16 on the way in anyway, so the values are the same, and the reorder
    and half the memory traffic are saved (ResNet's first conv of a block, MobileNet's expand
    and depthwise convs)."""
    _, _, only_user = _uses(func)
    bf16 = [p for p in plans.values() if p.kind in ("conv2d", "matmul")]
    for p in bf16:
        p.weight_dtype = "bfloat16"
    # the binding of each bf16 plan's first op (its conv / matmul) -> the plan, when its src is a
    # plain variable (a reshaped or transposed src is computed by TVM, in fp32)
    consumers = {p.members[0]: p for p in bf16 if p.members and not isinstance(p.src, tuple) and p.call_shape is None}
    for end, p in plans.items():
        if p.weight_dtype != "bfloat16" or p.residual is not None or p.call_shape is not None:
            continue
        q = consumers.get(only_user(end))
        if q is not None and q.src.same_as(end) and (q.residual is None or not q.residual.same_as(end)):
            p.out_dtype = "bfloat16"


# -- Clip --------------------------------------------------------------------------------------
def clip_as_relax_ops(mod):
    """Rewrite ``call_tir(maximum|minimum, (x, scalar constant))`` (how TVM's ONNX importer
    lowers ``Clip``) into ``relax.op.maximum`` / ``minimum``: layout conversion, mixed precision
    and fusion see Relax ops, while a ``call_tir`` pins its NCHW layout and dtype."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def elementwise_kind(gv) -> str | None:
        try:
            prim = mod[gv]
        except Exception:
            return None
        text = prim.script() if hasattr(prim, "script") else ""
        for kind in ("maximum", "minimum"):
            if f'T.sblock("T_{kind}")' in text and text.count("T.sblock(") <= 2:
                return kind
        return None

    @mutator
    class ClipOps(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip":
                # (HardSigmoid imports as clip(alpha * x + beta, 0, 1)): a clip ConvertLayout
                # does not know pins NCHW with a transpose on each side
                bounds = [_prim_number(b) for b in call.args[1:]]
                dtype = _dtype(call.args[0])
                if None in bounds or dtype is None:
                    return call
                low = relax.op.maximum(call.args[0], relax.const(float(bounds[0]), dtype))
                return relax.op.minimum(low, relax.const(float(bounds[1]), dtype))
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
                return call
            kind = elementwise_kind(call.args[0])
            args = call.args[1]
            if kind is None or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
                return call
            x, bound = args.fields
            value = _eval_const(bound, self.values)  # arrives as where(isnan(c), inf, c)
            if value is None or value.size != 1:
                return call
            op = relax.op.maximum if kind == "maximum" else relax.op.minimum
            return op(x, relax.const(value.reshape(()), str(value.dtype)))

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mutator_ = ClipOps(mod)
            mutator_.values = _values(func)
            mod[gv] = mutator_.visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
           "relax.power")


def scalar_operands(mod):
    """Rewrite the one-element constant operand of a binary elementwise op (Paddle exports write
    ``x * c`` with ``c`` of shape ``(1,)``; a QDQ model ``x * dequantize(cq)``) as a scalar: ConvertLayout cannot carry a layout
    through a broadcast between tensors of different ranks, so such an op kept NCHW with a
    transpose on each side; a scalar broadcasts in any layout. The result's shape is unchanged
    (only operands of no more axes than the other are rewritten)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class ScalarOperands(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _BINARY and len(call.args) == 2):
                return call
            args = list(call.args)
            for i in (0, 1):
                other = _shape(args[1 - i])
                # a constant, or a QDQ model's dequantize of one (an int8 ``(1,)`` weight)
                constant = isinstance(args[i], _Constant()) or (
                    isinstance(args[i], relax.Var) and _op_name(self.values.get(args[i])) == "relax.dequantize")
                if not constant or other is None:
                    continue
                value = _eval_const(args[i], self.values)
                if value is not None and value.size == 1 and 0 < value.ndim <= len(other):
                    args[i] = relax.const(value.reshape(()), str(value.dtype))
            if all(a.same_as(b) for a, b in zip(args, call.args)):
                return call
            return relax.Call(call.op, args, call.attrs)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mutator_ = ScalarOperands(mod)
            mutator_.values = _values(func)
            mod[gv] = mutator_.visit_expr(func)
    return relax.transform.DeadCodeElimination()(mod)


def _prim_number(expr) -> float | None:
    """The number of an ``IntImm`` / ``FloatImm`` or of a ``PrimValue`` holding one; else None."""
    value = getattr(expr, "value", None)
    if isinstance(value, (int, float)):
        return float(value)
    value = getattr(value, "value", None)
    return float(value) if isinstance(value, (int, float)) else None


# -- planning ------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """One fused oneDNN call that replaces the chain ending at its binding's variable."""

    kind: str  # conv2d | matmul | conv2d_q | matmul_q
    src: object
    weight: np.ndarray
    params: list
    out_shape: list
    bias: np.ndarray | None = None
    residual: object = None
    activation: int = _NONE
    lo: float = 0.0
    hi: float = 0.0
    members: list = field(default_factory=list)
    scales: np.ndarray | None = None  # int8: per output channel, src * weight / out scale
    zero_points: tuple = (0, 0)  # int8: src, out (and the residual's, when there is one)
    residual_scale: float = 0.0  # int8: the residual's scale / the out scale
    out_dtype: str = "float32"
    other: object = None  # batch_matmul: the second operand
    call_shape: list | None = None  # conv1d: the 4-D shape the plugin writes (height 1)
    weight_dtype: str = "float32"  # conv2d / matmul: bfloat16 makes the call a bf16 kernel


def _op_name(value) -> str | None:
    import tvm

    if isinstance(value, tvm.ir.expr.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


class _Sym:
    """A symbolic dimension (a dynamic batch): compared structurally, never as a number."""

    def __init__(self, expr):
        self.expr = expr

    def __eq__(self, other):
        import tvm_ffi

        return isinstance(other, _Sym) and tvm_ffi.structural_equal(self.expr, other.expr)

    def __hash__(self):
        return 0


def _shape(expr) -> list | None:
    """The dimensions of a tensor: ints, and ``_Sym`` for symbolic ones (a dynamic batch)."""
    import tvm

    try:
        return [int(d) if isinstance(d, tvm.tirx.IntImm) else _Sym(d) for d in expr.ty.shape]
    except Exception:
        return None


def _exprs(shape: list) -> list:
    """Back to what Relax takes: ints and the symbolic expressions."""
    return [d.expr if isinstance(d, _Sym) else d for d in shape]


def _static_channels(shape) -> bool:
    return shape is not None and len(shape) > 0 and isinstance(shape[-1], int)


def _dtype(expr) -> str | None:
    return getattr(getattr(expr, "ty", None), "dtype", None)


def _uses(func):
    """(bindings, values, only_user) of ``func``: ``only_user(var)`` is the one variable whose
    binding uses ``var``, or None when it has several users or is the function's result."""
    from tvm import relax
    from tvm.relax.analysis import free_vars

    bindings = [b for block in func.body.blocks for b in block.bindings
                if isinstance(b, relax.VarBinding)]
    values = {b.var: b.value for b in bindings}
    users: dict = {}
    for b in bindings:
        for v in free_vars(b.value):
            users.setdefault(v, []).append(b.var)
    for v in free_vars(func.body.body):  # the function's result counts as a use
        users.setdefault(v, []).append(None)

    def only_user(var):
        found = users.get(var, [])
        return found[0] if len(found) == 1 and found[0] is not None else None

    only_user.users = users  # every user of a variable (None: the function's result)
    return bindings, values, only_user


def _erf_gelu(end, values, only_user):
    """The variables of ``end * (0.5 * (erf(end / sqrt(2)) + 1))`` (how ONNX exporters write
    GELU) when ``end`` feeds nothing else: (intermediates, result) or None."""
    users = only_user.users.get(end, [])
    if len(users) != 2 or None in users:
        return None

    def is_scalar(expr, target):
        v = _eval_const(expr, values)
        return v is not None and v.size == 1 and abs(float(v.reshape(())) - target) < 1e-4

    for div in users:
        value = values[div]
        scaled = ((_op_name(value) == "relax.divide" and value.args[0].same_as(end)
                   and is_scalar(value.args[1], 2 ** 0.5))
                  or (_op_name(value) == "relax.multiply" and value.args[0].same_as(end)
                      and is_scalar(value.args[1], 2 ** -0.5)))
        if not scaled:
            continue
        erf = only_user(div)
        if erf is None or _op_name(values[erf]) != "relax.erf":
            return None
        add = only_user(erf)
        if add is None or _op_name(values[add]) != "relax.add" or not any(
                is_scalar(a, 1.0) for a in values[add].args):
            return None
        half = only_user(add)
        if half is None or _op_name(values[half]) != "relax.multiply" or not any(
                is_scalar(a, 0.5) for a in values[half].args):
            return None
        result = only_user(half)
        other = [u for u in users if not u.same_as(div)][0]
        if result is None or not result.same_as(other) or _op_name(values[result]) != "relax.multiply":
            return None
        return [div, erf, add, half], result
    return None


def _swish(end, values, only_user):
    """The variables of ``end * sigmoid(end)`` (SiLU, as YOLO-style exports write it) when
    ``end`` feeds nothing else: (intermediates, result) or None."""
    users = only_user.users.get(end, [])
    if len(users) != 2 or None in users:
        return None
    for sig in users:
        if _op_name(values[sig]) != "relax.sigmoid":
            continue
        mul = only_user(sig)
        other = [u for u in users if not u.same_as(sig)][0]
        if mul is not None and mul.same_as(other) and _op_name(values[mul]) == "relax.multiply":
            return [sig], mul
    return None


def _hardswish(end, values, only_user):
    """The variables of ``end * min(max(end + 3, 0), 6) / 6`` (HardSwish as Paddle exports write
    it; the division may be a multiplication by 1/6) when ``end`` feeds nothing else:
    (intermediates, result) or None."""
    users = only_user.users.get(end, [])
    if len(users) != 2 or None in users:
        return None

    def const(expr, target):
        v = _eval_const(expr, values)
        return v is not None and v.size == 1 and abs(float(v.reshape(())) - target) < 1e-5

    def step(var, op, target):  # the one user of var: ``op(var, target)`` (either order for + and *)
        user = only_user(var)
        if user is None or _op_name(values[user]) != op:
            return None
        a, b = values[user].args
        ok = (a.same_as(var) and const(b, target)) or (op in ("relax.add", "relax.multiply")
                                                         and b.same_as(var) and const(a, target))
        return user if ok else None

    for add in users:
        if _op_name(values[add]) != "relax.add":
            continue
        relu = step(add, "relax.maximum", 0.0)
        six = step(relu, "relax.minimum", 6.0) if relu is not None else None
        mul = only_user(six) if six is not None else None
        other = [u for u in users if not u.same_as(add)][0]
        if mul is None or not mul.same_as(other) or _op_name(values[mul]) != "relax.multiply":
            return None
        a, b = values[add].args
        if not ((a.same_as(end) and const(b, 3.0)) or (b.same_as(end) and const(a, 3.0))):
            return None
        out = step(mul, "relax.divide", 6.0)
        if out is None:
            out = step(mul, "relax.multiply", 1.0 / 6.0)
        return ([add, relu, six, mul], out) if out is not None else None
    return None


def _plan_int8(func) -> dict:
    """{quantize variable: _Plan} for every QDQ chain
    ``quantize(act(conv2d|matmul(dequantize(xq), dequantize(Wq const)) + bias), sy, zy)``
    with per-tensor activation scales and int8 weights (per channel or per tensor)."""
    bindings, values, only_user = _uses(func)

    def scalar(expr):
        v = _eval_const(expr, values)
        return None if v is None or v.size != 1 else float(v.reshape(()))

    def through(var, expected_user):  # an intermediate value used by the next op only
        return only_user(var) is not None and only_user(var).same_as(expected_user)

    plans = {}
    for b in bindings:
        q = b.value
        if _op_name(q) != "relax.quantize" or str(q.attrs.out_dtype) not in ("uint8", "int8"):
            continue
        sy, zy = scalar(q.args[1]), scalar(q.args[2])
        if sy is None or zy is None:
            continue
        joined = _int8_residual(b.var, q, values, plans, through, scalar)
        if joined is not None:
            conv_end, plan = joined
            del plans[conv_end]
            plans[b.var] = plan
            continue
        members, node, user = [b.var], q.args[0], b.var
        activation, lo, hi = _NONE, 0.0, 0.0
        value = values.get(node)
        name = _op_name(value)
        if name == "relax.nn.max_pool2d" and through(node, user):
            # max commutes with a dequantize of positive scale: with the same scale and zero
            # point on both sides the chain is the pooling of the integers themselves
            dq = values.get(value.args[0])
            if (_op_name(dq) == "relax.dequantize" and _dtype(dq.args[0]) == str(q.attrs.out_dtype)
                    and scalar(dq.args[1]) == sy and sy > 0 and scalar(dq.args[2]) == zy):
                plan = _max_pool_plan(b.var, value, dq.args[0], str(q.attrs.out_dtype))
                if plan is not None:
                    # a dequantize shared with other readers (YOLO's SPPF concat) stays for them
                    plan.kind = "max_pool2d_q"
                    plan.members = [b.var, node] + ([value.args[0]] if through(value.args[0], node) else [])
                    plans[b.var] = plan
            continue
        if name in ("relax.nn.relu", "relax.minimum", "relax.maximum") and through(node, user):
            if name == "relax.minimum":
                inner = value.args[0]
                top = scalar(value.args[1])
                inner_value = values.get(inner)
                if (top is None or _op_name(inner_value) != "relax.maximum" or not through(inner, node)
                        or scalar(inner_value.args[1]) != 0.0):
                    continue
                activation, lo, hi = _CLIP, 0.0, top / sy
                members += [node, inner]
                user, node = inner, inner_value.args[0]
            elif name == "relax.maximum":
                if scalar(value.args[1]) != 0.0:
                    continue
                activation = _RELU
                members.append(node)
                user, node = node, value.args[0]
            else:
                activation = _RELU
                members.append(node)
                user, node = node, value.args[0]
            value, name = values.get(node), _op_name(values.get(node))
        bias = None
        if name == "relax.add" and through(node, user):
            a, c = value.args
            for core, other in ((a, c), (c, a)):
                bias = _eval_const(other, values)
                if bias is not None and _op_name(values.get(core)) in _INT8_CORES:
                    members.append(node)
                    user, node = node, core
                    break
                bias = None
            if bias is None:
                continue
            value, name = values.get(node), _op_name(values.get(node))
        if name not in _INT8_CORES or not through(node, user):
            continue
        members.append(node)
        plan = _int8_core(node, value, name, values, scalar)
        if plan is None:
            continue
        sx, zx, w, sw = plan.pop("sx"), plan.pop("zx"), plan.pop("w"), plan.pop("sw")
        channels = w.shape[0] if name != "relax.matmul" else w.shape[1]
        if bias is not None:
            if bias.size != channels:
                continue
            bias = np.round(bias.reshape(channels).astype(np.float64) / (sx * sw)).astype(np.int32)
        out_shape = _shape(b.var)
        if not _static_channels(out_shape):
            continue
        kind = "matmul_q" if name == "relax.matmul" else "conv2d_q"
        plans[b.var] = _Plan(kind, plan["src"], w, plan["params"], out_shape,
                             bias=bias if bias is not None else np.zeros(channels, np.int32),
                             activation=activation, lo=lo, hi=hi, members=members,
                             scales=(sx * sw / sy).astype(np.float32), zero_points=(int(zx), int(zy)),
                             out_dtype=str(q.attrs.out_dtype))
        if name == "relax.nn.conv1d":  # as a conv2d of height 1 (the float path does the same)
            plans[b.var].call_shape = [out_shape[0], 1, out_shape[1], out_shape[2]]
    return plans


def _int8_residual(var, q, values, plans, through, scalar):
    """A residual join of an int8 conv already planned, ``quantize([relu](add(dequantize(conv_q),
    dequantize(r))), sy, zy)``, as that conv with the residual added in its epilogue (oneDNN's sum
    post-op: the call writes r into its output buffer first): (the conv's old end, the joined
    plan) or None. ResNet's blocks end so; left to TVM each join is a float pass over two int8
    tensors. The conv's own rounding to its output scale before the add is skipped."""
    sy, zy = scalar(q.args[1]), scalar(q.args[2])
    node, user, members, activation = q.args[0], var, [var], _NONE
    value = values.get(node)
    if _op_name(value) == "relax.nn.relu" and through(node, user):
        activation, user, node = _RELU, node, value.args[0]
        members.append(user)
        value = values.get(node)
    if _op_name(value) != "relax.add" or not through(node, user):
        return None
    members.append(node)
    for main, other in ((value.args[0], value.args[1]), (value.args[1], value.args[0])):
        dq_main, dq_other = values.get(main), values.get(other)
        if _op_name(dq_main) != "relax.dequantize" or _op_name(dq_other) != "relax.dequantize":
            continue
        conv_end = dq_main.args[0]
        plan = plans.get(conv_end)
        if (plan is None or plan.kind != "conv2d_q" or plan.residual is not None or plan.activation != _NONE
                or plan.call_shape is not None or not through(conv_end, main) or not through(main, node)):
            continue
        conv_q = values[conv_end]  # the conv's own quantize: its parameters must be the dequantize's
        s_c, z_c = scalar(dq_main.args[1]), scalar(dq_main.args[2])
        s_r, z_r = scalar(dq_other.args[1]), scalar(dq_other.args[2])
        residual = dq_other.args[0]
        if (None in (s_c, z_c, s_r, z_r) or scalar(conv_q.args[1]) != s_c or scalar(conv_q.args[2]) != z_c
                or _dtype(residual) not in ("uint8", "int8") or _shape(residual) != plan.out_shape):
            continue
        joined = _Plan(plan.kind, plan.src, plan.weight, plan.params, plan.out_shape, bias=plan.bias,
                       residual=residual, activation=activation, members=[*plan.members, main, *members],
                       scales=(plan.scales.astype(np.float64) * s_c / sy).astype(np.float32),
                       zero_points=(plan.zero_points[0], int(zy), int(z_r)), residual_scale=s_r / sy,
                       out_dtype=str(q.attrs.out_dtype))
        return conv_end, joined
    return None


#: Max poolings over fewer input elements (per sample) stay in TVM: a oneDNN call costs a few
#: microseconds, more than TVM's own loop over a small map (Fashion-MNIST CNN, 28x28x32 and
#: smaller: 0.079 ms with TVM's pools, 0.089 ms with oneDNN's); ResNet-18's stem pool
#: (112x112x64) took 0.42 ms in TVM with its dequantize, a small part of that in oneDNN.
MIN_POOL_ELEMENTS = 100_000


def _max_pool_plan(var, value, src, dtype: str) -> _Plan | None:
    """A max pooling oneDNN takes: NHWC, no dilation, ``dtype`` in and out, a large enough map."""
    a = value.attrs
    shape, in_shape = _shape(var), _shape(value.args[0])
    if (a.layout != "NHWC" or a.out_layout != "NHWC" or any(int(d) != 1 for d in a.dilation)
            or _dtype(value.args[0]) != "float32" or shape is None or in_shape is None
            or not all(isinstance(d, int) for d in [*shape[1:], *in_shape[1:]])
            or int(np.prod(in_shape[1:])) < MIN_POOL_ELEMENTS):
        return None
    params = [*(int(k) for k in a.pool_size), *(int(st) for st in a.strides),
              int(a.padding[0]), int(a.padding[1])]
    return _Plan("max_pool2d", src, None, params, shape, out_dtype=dtype)


def _int8_core(var, value, name, values, scalar) -> dict | None:
    """The int8 operands of ``conv2d|matmul(dequantize(xq, sx, zx), dequantize(Wq, sw, 0))``:
    {src, sx, zx, w (int8; OIHW or (K, N)), sw (per output channel), params} or None."""
    x, weight = value.args
    dq = values.get(x)
    axes = None
    if _op_name(dq) == "relax.permute_dims" and isinstance(dq.args[0], _Var()):
        # the model's input edge: dequantize (NCHW) -> transpose -> conv; transpose the int8
        axes = [int(a) for a in dq.attrs.axes]
        dq = values.get(dq.args[0])
    if _op_name(dq) != "relax.dequantize" or _dtype(dq.args[0]) not in ("uint8", "int8"):
        return None
    sx, zx = scalar(dq.args[1]), scalar(dq.args[2])
    if sx is None or zx is None or _shape(dq.args[0]) is None:
        return None
    transposed = False
    wdq = values.get(weight)
    if name == "relax.matmul" and _op_name(wdq) == "relax.permute_dims" and \
            [int(a) for a in wdq.attrs.axes] == [1, 0]:
        transposed, wdq = True, values.get(wdq.args[0])  # Gemm with transB: W is (N, K)
    if _op_name(wdq) != "relax.dequantize":
        return None
    w = _eval_const(wdq.args[0], values)
    scale, zp = _eval_const(wdq.args[1], values), _eval_const(wdq.args[2], values)
    if w is None or scale is None or zp is None or w.dtype != np.int8 or np.any(zp != 0):
        return None
    if name == "relax.nn.conv2d":
        a = value.attrs
        if a.data_layout != "NHWC" or a.kernel_layout != "OIHW" or a.out_layout != "NHWC" or w.ndim != 4:
            return None
        channels, axis = w.shape[0], 0
        params = [*(int(s) for s in a.strides), *(int(p) for p in a.padding),
                  *(int(d) for d in a.dilation), int(a.groups), _NONE]
    elif name == "relax.nn.conv1d":
        a = value.attrs
        if a.data_layout != "NWC" or a.kernel_layout != "OIW" or a.out_layout != "NWC" or w.ndim != 3:
            return None
        channels, axis = w.shape[0], 0
        left, right = (int(p) for p in a.padding)
        params = [1, int(a.strides[0]), 0, left, 0, right, 1, int(a.dilation[0]), int(a.groups), _NONE]
    else:
        if w.ndim != 2 or len(_shape(dq.args[0])) < 2:
            return None
        axis = 0 if transposed else 1
        channels = w.shape[axis]
        params = [_NONE]
    if scale.size == 1:
        sw = np.full(channels, float(scale.reshape(())), np.float64)
    elif scale.size == channels and int(wdq.attrs.axis) % w.ndim == axis:
        sw = scale.reshape(channels).astype(np.float64)
    else:
        return None
    if name == "relax.matmul" and transposed:
        w = np.ascontiguousarray(w.T)
    src = dq.args[0] if axes is None else ("permute_dims", dq.args[0], axes)
    if name == "relax.nn.conv1d":  # (N, W, C) -> (N, 1, W, C), weights OIW -> OI1W
        xs = _shape(x)  # after the input edge's transpose, if any
        src, w = ("reshape", src, [xs[0], 1, xs[1], xs[2]]), np.ascontiguousarray(w[:, :, None, :])
    return {"src": src, "sx": sx, "zx": zx, "w": w, "sw": sw, "params": params}


def _plan(func) -> dict:
    """{chain-end variable: _Plan} for every offloadable conv / matmul of ``func``."""
    bindings, values, only_user = _uses(func)

    plans = {}
    claimed = set()  # every op belongs to one chain (two convs may meet in one residual add)
    for b in bindings:
        plan = _start(b.var, b.value, values)
        if plan is None:
            continue
        end = b.var
        plan.members.append(end)
        # nothing is fused into a batch matmul, a layer norm, a softmax or a transposed conv
        stage = 0 if plan.kind in ("conv2d", "matmul") else 3  # 0: after the op, 1: after the bias, 2: after the residual, 3: activated
        while stage < 3:
            # activations that read ``end`` twice: matched as a whole, not op by op
            matchers = [(_swish, _SWISH), (_hardswish, _HARDSWISH)]
            if stage < 2 and plan.kind == "matmul":
                matchers.insert(0, (_erf_gelu, _GELU))
            found = next(((m, code) for match, code in matchers
                          if (m := match(end, values, only_user)) is not None), None)
            if found is not None and not any(v in claimed for v in [*found[0][0], found[0][1]]):
                (inner, result), plan.activation = found
                plan.members += inner
                end, stage = result, 3
                plan.members.append(end)
                break
            user = only_user(end)
            if user is None or user in claimed:
                break
            step = _extend(plan, end, user, stage, values, only_user)
            if step is None:
                break
            stage, end = step[0], step[1] if len(step) > 1 and step[1] is not None else user
            plan.members.append(end)
        claimed.update(plan.members)
        plans[end] = plan
    return plans


def _start(var, value, values) -> _Plan | None:
    name = _op_name(value)
    if name == "relax.nn.conv2d":
        a = value.attrs
        x, w = value.args
        weight = _eval_const(w, values)
        if (a.data_layout != "NHWC" or a.kernel_layout != "OIHW" or a.out_layout != "NHWC"
                or weight is None or weight.dtype != np.float32 or _dtype(x) != "float32"
                or str(a.out_dtype) not in _FLOAT_OUT):
            return None
        shape = _shape(var)
        if not _static_channels(shape) or _shape(x) is None:
            return None
        dil = [int(d) for d in a.dilation]
        params = [*(int(s) for s in a.strides), *(int(p) for p in a.padding), *dil, int(a.groups), _NONE]
        return _Plan("conv2d", x, weight, params, shape)
    if name == "relax.nn.conv2d_transpose":
        # NCHW as it stays (TVM lowers no NHWC transposed conv, so the layout pass leaves it);
        # oneDNN's deconvolution reads the plain layout. Output padding is the extra bottom and
        # right rows oneDNN's end padding leaves: pad_end - output_padding.
        a = value.attrs
        x, w = value.args
        weight, shape, xs = _eval_const(w, values), _shape(var), _shape(x)
        if (a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or a.out_layout != "NCHW"
                or weight is None or weight.dtype != np.float32 or _dtype(x) != "float32"
                or str(a.out_dtype) not in _FLOAT_OUT or shape is None or xs is None
                or not all(isinstance(d, int) for d in [*shape, *xs])):
            return None
        groups = int(a.groups)
        cin, cout_g, kh, kw = weight.shape
        # IOHW (C_in, C_out / G, KH, KW) -> oneDNN's (C_out, C_in / G, KH, KW), group-major
        oihw = (weight.reshape(groups, cin // groups, cout_g, kh, kw).transpose(0, 2, 1, 3, 4)
                .reshape(groups * cout_g, cin // groups, kh, kw))
        top, left, bottom, right = (int(v) for v in a.padding)
        oph, opw = (int(v) for v in a.output_padding)
        params = [*(int(v) for v in a.strides), top, left, bottom - oph, right - opw,
                  *(int(v) for v in a.dilation), groups, _NONE]
        return _Plan("conv2d_transpose", x, np.ascontiguousarray(oihw), params, shape)
    if name == "relax.nn.conv1d":  # as a conv2d of height 1
        a = value.attrs
        x, w = value.args
        weight, shape, xs = _eval_const(w, values), _shape(var), _shape(x)
        if (a.data_layout != "NWC" or a.kernel_layout != "OIW" or a.out_layout != "NWC"
                or weight is None or weight.dtype != np.float32 or _dtype(x) != "float32"
                or str(a.out_dtype) not in _FLOAT_OUT or not _static_channels(shape) or xs is None):
            return None
        left, right = (int(p) for p in a.padding)
        params = [1, int(a.strides[0]), 0, left, 0, right, 1, int(a.dilation[0]), int(a.groups), _NONE]
        plan = _Plan("conv2d", ("reshape", x, [xs[0], 1, xs[1], xs[2]]), weight[:, :, None, :], params, shape)
        plan.call_shape = [shape[0], 1, shape[1], shape[2]]
        return plan
    if name == "relax.nn.layer_norm":
        x, gamma, beta = value.args
        a = value.attrs
        shape, g, bt = _shape(x), _eval_const(gamma, values), _eval_const(beta, values)
        if (not _static_channels(shape) or _dtype(x) != "float32" or g is None or bt is None
                or [int(i) % len(shape) for i in a.axes] != [len(shape) - 1]
                or g.size != shape[-1] or bt.size != shape[-1] or not (a.center and a.scale)):
            return None
        plan = _Plan("layer_norm", x, None, [], _shape(var))
        plan.lo, plan.other = float(a.epsilon), (g.astype(np.float32).reshape(-1), bt.astype(np.float32).reshape(-1))
        return plan
    if name == "relax.nn.max_pool2d":
        return _max_pool_plan(var, value, value.args[0], "float32")
    if name == "relax.nn.softmax":
        shape = _shape(value.args[0])
        if shape is None or _dtype(value.args[0]) != "float32" or int(value.attrs.axis) % len(shape) != len(shape) - 1:
            return None
        return _Plan("softmax", value.args[0], None, [], _shape(var))
    if name == "relax.matmul":
        x, w = value.args
        weight = _eval_const(w, values)
        shapes = [_shape(x), _shape(w), _shape(var)]
        if (weight is None and None not in shapes and len(set(map(len, shapes))) == 1
                and len(shapes[0]) >= 3 and shapes[0][:-2] == shapes[1][:-2]
                and _dtype(x) == _dtype(w) == "float32" and str(value.attrs.out_dtype) in _FLOAT_OUT):
            plan = _Plan("batch_matmul", x, None, [], shapes[2])
            plan.other = w
            return plan
        if (weight is None or weight.ndim != 2 or weight.dtype != np.float32 or _dtype(x) != "float32"
                or str(value.attrs.out_dtype) not in _FLOAT_OUT):
            return None
        shape = _shape(var)
        if not _static_channels(shape) or _shape(x) is None or len(_shape(x)) < 2:
            return None
        return _Plan("matmul", x, weight, [_NONE], shape)
    return None


def _extend(plan: _Plan, end, user, stage, values, only_user):
    """Fuse ``user`` (the one op using ``end``) into ``plan``: (new stage, new end or None: the
    chain ends at ``user``) or None to stop before it."""
    value = values[user]
    name = _op_name(value)
    channels = plan.out_shape[-1]
    if name in ("relax.subtract", "relax.multiply", "relax.divide") and stage < 2 and plan.kind in ("conv2d", "matmul"):
        # a per-channel affine op on the output (an inference batch norm decomposes into
        # subtract, divide, multiply, add) folds into the weights and the bias
        a, b = value.args
        if not a.same_as(end) and name != "relax.multiply":
            return None
        const = _per_channel(_eval_const(b if a.same_as(end) else a, values), channels)
        if const is None or (name == "relax.divide" and not np.all(const)):
            return None
        bias = plan.bias if plan.bias is not None else np.zeros(channels, np.float32)
        if name == "relax.subtract":
            plan.bias = bias - const
        else:
            scale = 1.0 / const if name == "relax.divide" else const
            plan.bias = bias * scale
            plan.weight = plan.weight * (scale.reshape(-1, *[1] * (plan.weight.ndim - 1)) if plan.kind == "conv2d"
                                         else scale.reshape(1, -1))
        return 1, None
    if name == "relax.add" and stage < 2:
        a, b = value.args
        other = b if a.same_as(end) else a
        const = _eval_const(other, values)
        if const is not None:
            const = _per_channel(const, channels)
            if const is None:
                return None
            plan.bias = (plan.bias if plan.bias is not None else 0.0) + const
            return 1, None
        if _shape(other) == plan.out_shape and _dtype(other) == "float32" and not other.same_as(end):
            plan.residual = other
            return 2, None
        return None
    if name == "relax.nn.relu":
        plan.activation = _RELU
        return 3, None
    if name == "relax.nn.gelu":
        plan.activation = _GELU
        return 3, None
    if name == "relax.maximum":
        a, b = value.args
        lo = _eval_const(b if a.same_as(end) else a, values)
        if lo is None or lo.size != 1 or float(lo.reshape(())) != 0.0:
            return None
        plan.activation = _RELU
        # max(x, 0) then min(., hi) is ReLU6-style clip
        top = only_user(user)
        if top is not None and _op_name(values[top]) == "relax.minimum":
            c, d = values[top].args
            hi = _eval_const(d if c.same_as(user) else c, values)
            if hi is not None and hi.size == 1:
                plan.activation, plan.lo, plan.hi = _CLIP, 0.0, float(hi.reshape(()))
                plan.members.append(user)
                return 3, top
        return 3, None
    return None


def _per_channel(const: np.ndarray | None, channels: int) -> np.ndarray | None:
    """``const`` as ``channels`` float32 values when it broadcasts over the last axis only (one
    value, or one per channel, leading axes of size 1); else None."""
    if const is None or const.size not in (1, channels) or (const.size == channels and const.shape[-1:] != (channels,)):
        return None
    return np.broadcast_to(const.astype(np.float32).reshape(-1), (channels,)).copy()


# -- rewriting -----------------------------------------------------------------------------------
def _make_rewriter():
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class OneDnnCalls(PyExprMutator):
        def __init__(self, mod, plans):
            super().__init__(mod)
            self.plans = plans
            # the ops a bf16 call replaces: re-emitted, one could read a src that is now bf16
            # (another call's output) and fail type inference; nothing else uses them
            self.replaced = {m for end, p in plans.items() if p.weight_dtype == "bfloat16"
                             for m in p.members if not m.same_as(end)}

        def visit_var_binding_(self, binding):
            plan = self.plans.get(binding.var)
            if plan is None:
                if binding.var in self.replaced:
                    return None
                return super().visit_var_binding_(binding)
            if plan.kind in ("max_pool2d", "max_pool2d_q"):
                call = relax.call_dps_packed(
                    "edgeopt.onednn.max_pool2d", [relax.ShapeExpr(plan.params), self.visit_expr(plan.src)],
                    out_ty=relax.TensorType(_exprs(plan.out_shape), plan.out_dtype))
                return self.emit_for(binding, call)
            if plan.kind.endswith("_q"):
                params = list(plan.params)
                params[-1] = plan.activation
                args = [relax.ShapeExpr([*params, *plan.zero_points]),
                        relax.prim_value(float(plan.lo), "float64"),
                        relax.prim_value(float(plan.hi), "float64"),
                        self.source(plan.src), relax.const(plan.weight, "int8"),
                        relax.const(plan.bias, "int32"), relax.const(plan.scales, "float32")]
                if plan.residual is not None:  # the plugin reads it as bytes, in its own scale
                    args += [self.visit_expr(plan.residual), relax.prim_value(float(plan.residual_scale), "float64")]
                call = relax.call_dps_packed(
                    f"edgeopt.onednn.{plan.kind}", args,
                    out_ty=relax.TensorType(_exprs(plan.call_shape or plan.out_shape), plan.out_dtype))
                if plan.call_shape is not None:
                    call = relax.op.reshape(self.builder_.emit(call), _exprs(plan.out_shape))
                return self.emit_for(binding, call)
            if plan.kind == "layer_norm":
                gamma, beta = plan.other
                call = relax.call_dps_packed(
                    "edgeopt.onednn.layer_norm",
                    [relax.prim_value(plan.lo, "float64"), self.visit_expr(plan.src),
                     relax.const(gamma, "float32"), relax.const(beta, "float32")],
                    out_ty=relax.TensorType(_exprs(plan.out_shape), "float32"))
                return self.emit_for(binding, call)
            if plan.kind == "softmax":
                call = relax.call_dps_packed("edgeopt.onednn.softmax", [self.visit_expr(plan.src)],
                                             out_ty=relax.TensorType(_exprs(plan.out_shape), "float32"))
                return self.emit_for(binding, call)
            if plan.kind == "batch_matmul":
                call = relax.call_dps_packed(
                    "edgeopt.onednn.batch_matmul", [self.visit_expr(plan.src), self.visit_expr(plan.other)],
                    out_ty=relax.TensorType(_exprs(plan.out_shape), "float32"))
                return self.emit_for(binding, call)
            if plan.kind == "conv2d_transpose":
                params, bias_len = list(plan.params), plan.out_shape[1]  # NCHW
            elif plan.kind == "conv2d":
                params = list(plan.params)
                params[-1] = plan.activation
                bias_len = plan.out_shape[-1]
            else:
                params = [plan.activation]
                bias_len = plan.out_shape[-1]
            bias = plan.bias if plan.bias is not None else np.zeros(bias_len, np.float32)
            args = [relax.ShapeExpr(params),
                    relax.prim_value(float(plan.lo), "float64"),
                    relax.prim_value(float(plan.hi), "float64"),
                    self.source(plan.src), weight_constant(plan.weight, plan.weight_dtype),
                    relax.const(bias, "float32")]
            if plan.residual is not None:
                args.append(self.visit_expr(plan.residual))  # the plugin reads it as bytes
            call = relax.call_dps_packed({"conv2d": CONV, "conv2d_transpose": DECONV}.get(plan.kind, MATMUL), args,
                                         out_ty=relax.TensorType(_exprs(plan.call_shape or plan.out_shape), plan.out_dtype))
            if plan.call_shape is not None:
                call = relax.op.reshape(self.builder_.emit(call), _exprs(plan.out_shape))
            return self.emit_for(binding, call)

        def source(self, src):
            if isinstance(src, tuple) and src[0] == "reshape":  # ("reshape", tensor, shape)
                return self.builder_.emit(relax.op.reshape(self.source(src[1]), _exprs(src[2])))
            if isinstance(src, tuple):  # ("permute_dims", tensor, axes)
                return self.builder_.emit(relax.op.permute_dims(self.source(src[1]), src[2]))
            return self.visit_expr(src)

        def emit_for(self, binding, call):
            # a chain may end in the dataflow block's output, which must stay visible after it
            if isinstance(binding.var, relax.DataflowVar):
                new_var = self.builder_.emit(call)
            else:
                new_var = self.builder_.emit_output(call)
            self.set_var_remap(binding.var, new_var)

    return OneDnnCalls


def weight_constant(weight: np.ndarray, dtype: str = "float32"):
    """A Relax constant of ``weight`` in ``dtype``: ``float32``, or ``bfloat16`` rounded to
    nearest even (numpy has no bfloat16: ml_dtypes, which TVM itself requires, converts).

    >>> weight_constant(np.array([1.0, 1 + 2 ** -9], np.float32), "bfloat16").ty
    R.Tensor((2,), dtype="bfloat16")
    """
    from tvm import relax

    if dtype == "float32":
        return relax.const(weight.astype(np.float32), "float32")
    if dtype != "bfloat16":
        raise ValueError(f"oneDNN weights are float32 or bfloat16, not {dtype}")
    import ml_dtypes
    import tvm

    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(weight, np.float32).astype(ml_dtypes.bfloat16)))


def _Var():
    from tvm import relax

    return relax.Var


def _Constant():
    import tvm

    return tvm.ir.expr.Constant
