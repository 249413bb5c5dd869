"""Relax rewrite: data movement between two quantization pairs runs on the int8 tensor itself.

onnxruntime's QDQ quantizer wraps the ops that only move values (Reshape, Transpose, Gather,
Squeeze, Unsqueeze, Flatten, Slice) in a ``DequantizeLinear`` / ``QuantizeLinear`` pair with one
scale and zero point on both sides, so that its own kernels can run them on int8 data. TVM
imports each pair as two float kernels around the move: ``quantize(reshape(dequantize(x)))``. A
ViT's attention reshapes, transposes and gathers its tokens dozens of times per block (the zoo's
tiny ViT: 71 such pairs, 40% of its calls). Where the quantize's scale and zero point are the
dequantize's and its dtype is the int8 tensor's, the pair is the identity on the int8 values
(``|x - zero_point| <= 255`` times the scale and back rounds to ``x`` exactly), so this pass
moves the int8 tensor itself: ``reshape(x)``. Results are bit-identical.

Example:
    >>> from edgeopt.compile.int8_passthrough import int8_passthrough  # doctest: +SKIP
    >>> mod, moved = int8_passthrough(mod)  # doctest: +SKIP
"""

from __future__ import annotations

#: Relax ops that only move or select values: the same on int8 data as on its dequantized floats.
MOVEMENT_OPS = frozenset({
    "relax.reshape", "relax.permute_dims", "relax.take", "relax.squeeze", "relax.expand_dims",
    "relax.flatten", "relax.strided_slice"})

_INT8 = ("int8", "uint8")
_MAX_MOVES = 8  # moves followed back from one quantize


def int8_passthrough(mod):
    """``(new_mod, count)``: every ``quantize(move(...move(dequantize(x))))`` of ``mod``'s Relax
    functions whose two pairs share one scale and zero point replaced by the moves on ``x``
    (``count`` of them)."""
    from tvm import relax

    rewriter = _make_rewriter()(mod)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get()), rewriter.count


def same_number(a, b) -> bool:
    """Two constants of one element each, equal in value (a scale, or zero points of two dtypes)."""
    import tvm

    if not (isinstance(a, tvm.ir.expr.Constant) and isinstance(b, tvm.ir.expr.Constant)):
        return False
    x, y = a.value.numpy(), b.value.numpy()
    return x.size == 1 and y.size == 1 and float(x.reshape(())) == float(y.reshape(()))


def _make_rewriter():
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def op_name(expr) -> str | None:
        if isinstance(expr, tvm.ir.expr.Call) and isinstance(expr.op, tvm.ir.Op):
            return expr.op.name
        return None

    @mutator
    class Passthrough(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.count = 0

        def bound(self, expr):
            if isinstance(expr, relax.Var):
                value = self.lookup_binding(expr)
                return value if value is not None else expr
            return expr

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if op_name(call) != "relax.quantize":
                return call
            moves, value = [], self.bound(call.args[0])
            while op_name(value) in MOVEMENT_OPS and len(moves) < _MAX_MOVES:
                moves.append(value)
                value = self.bound(value.args[0])
            if not moves or op_name(value) != "relax.dequantize":
                return call
            x, scale, zero_point = value.args
            dtype = str(getattr(getattr(x, "ty", None), "dtype", ""))
            if dtype not in _INT8 or dtype != str(call.attrs.out_dtype):
                return call
            if not (same_number(scale, call.args[1]) and same_number(zero_point, call.args[2])):
                return call
            moved = x
            for i, move in enumerate(reversed(moves)):
                step = relax.Call(move.op, [moved, *move.args[1:]], move.attrs, move.ty_args)
                # the last move is this binding's value; the ones before it get bindings of their own
                moved = step if i == len(moves) - 1 else self.builder_.emit(step)
            self.count += 1
            return moved

    return Passthrough

