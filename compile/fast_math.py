"""erf, tanh and sigmoid as TVM's vectorizable polynomials in a Relax module (``BuildConfig.fast_math``).

TVM lowers ``relax.erf`` to a call of the C library's ``erff`` per element, which LLVM cannot
vectorize: the four GELUs of a small int8 ViT (the erf between two QDQ pairs, which no oneDNN
call absorbs) took 0.25 of its 1.49 ms. ``topi.fast_erf`` and ``topi.fast_tanh`` are
polynomials (within 1e-6 of the exact functions over float32's range) that vectorize.
``relax.sigmoid`` lowers to ``1 / (1 + exp(-x))`` with a scalar ``expf`` call per element: the
58 sigmoids a YOLOv8-style int8 detector leaves to TVM (its SiLUs between QDQ pairs) took 111
of its 362 ms (one thread); here it is ``0.5 * fast_tanh(0.5 * x) + 0.5`` (within 1e-6).

Written here rather than with ``relax.transform.FastMathTransform``: that pass also replaces
``exp`` with ``topi.fast_exp``, which overflows to inf for inputs in (88.38, 88.72] where the
exact exp is finite (a hand-written softmax over such a value turns into NaN).

Example:
    >>> import tvm  # doctest: +SKIP
    >>> from tvm import relax  # doctest: +SKIP
    >>> bb = relax.BlockBuilder()  # doctest: +SKIP
    >>> x = relax.Var("x", relax.TensorType((4,), "float32"))  # doctest: +SKIP
    >>> with bb.function("main", [x]):  # doctest: +SKIP
    ...     bb.emit_func_output(bb.emit(relax.op.erf(x)))
    >>> "fast_erf" in str(fast_math_ops(bb.get()))  # doctest: +SKIP
    True
"""

from __future__ import annotations


def fast_math_ops(mod):
    """``mod`` with every float32 ``relax.erf`` / ``relax.tanh`` / ``relax.sigmoid`` call
    replaced by a ``call_tir`` of ``topi.fast_erf`` / ``topi.fast_tanh`` / a sigmoid made of
    ``topi.fast_tanh``."""
    import tvm
    from tvm import relax, topi

    def fast_sigmoid(x):
        return topi.add(topi.multiply(topi.fast_tanh(topi.multiply(x, 0.5)), 0.5), 0.5)

    fast = {tvm.ir.Op.get("relax.erf"): topi.fast_erf, tvm.ir.Op.get("relax.tanh"): topi.fast_tanh,
            tvm.ir.Op.get("relax.sigmoid"): fast_sigmoid}
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class FastErfTanh(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            te_func = fast.get(call.op) if isinstance(call.op, tvm.ir.Op) else None
            # (TVM 0.27 names an expression's type ``ty``)
            if te_func is None or str(getattr(getattr(call.args[0], "ty", None), "dtype", "")) != "float32":
                return call
            return self.builder_.call_te(te_func, call.args[0])

    mutator_ = FastErfTanh(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator_.builder_.update_func(gv, mutator_.visit_expr(func))
    return mutator_.builder_.get()
