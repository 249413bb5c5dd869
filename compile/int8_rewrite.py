"""Relax rewrite: QDQ float chains -> int8 x int8 -> int32 arithmetic with int8 weights.

TVM's ONNX frontend imports a QDQ model as ``dequantize -> conv2d/matmul (float) -> quantize``,
so the compiled model keeps fp32 weights (constant-folded dequantize) and float arithmetic. This
pass finds

    quantize( [add(] conv2d|matmul( dequantize(xq, sx, zx), dequantize(Wq, sw, 0) ) [, bias)] )

and rewrites the core to

    acc = conv2d|matmul(x_s8, Wq_s8, out_dtype="int32") - zx' * sum(Wq)     # exact integer math
    y   = float(acc) * (sx * sw) [+ bias]                                   # requantize ...
    quantize(y, sy, zy)                                                     # ... to the output

uint8 activations are shifted to int8 (x - 128, zero point zx - 128) so both operands are int8;
the zero point is taken out with a per-channel correction term, and convolution padding is made
explicit with the zero point as pad value (padding with 0 in the shifted domain would be
wrong at the borders). Weights are stored as the int8 constants ORT produced, so the artifact
holds int8 weights; the dequantized fp32 copies become dead and are removed.

Example:
    >>> import edgeopt.compile.int8_rewrite as ir  # doctest: +SKIP
    >>> mod, count = ir.rewrite_qdq_to_int8(mod)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np


def rewrite_qdq_to_int8(mod, keep_uint8: bool = False):
    """Return ``(new_mod, number_of_ops_rewritten)`` for a Relax module from ``from_onnx``.

    ``keep_uint8`` keeps uint8 activations as they are (uint8 x int8 products, the zero point
    corrected the same way): the operand types of x86's VNNI instruction, which the blocked
    int8 kernels of ``edgeopt.compile.blocked_layout`` use.
    """
    from tvm import relax

    rewriter = _make_rewriter()(mod, keep_uint8)
    updated = mod
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            updated[gv] = rewriter.visit_expr(func)
    updated = relax.transform.DeadCodeElimination()(updated)
    return updated, rewriter.count


def _const_np(expr):
    import tvm

    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _make_rewriter():
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    Call = tvm.ir.expr.Call

    def is_call(expr, name: str) -> bool:
        return isinstance(expr, Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name

    @mutator
    class QDQToInt8(PyExprMutator):
        def __init__(self, mod, keep_uint8):
            super().__init__(mod)
            self.count = 0
            self.keep_uint8 = keep_uint8

        def bound(self, expr):
            if isinstance(expr, relax.Var):
                value = self.lookup_binding(expr)
                return value if value is not None else expr
            return expr

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not is_call(call, "relax.quantize"):
                return call
            new_input = self.rewrite_core(call.args[0])
            if new_input is None:
                return call
            self.count += 1
            a = call.attrs
            return relax.op.quantize(new_input, call.args[1], call.args[2], axis=int(a.axis),
                                     out_dtype=str(a.out_dtype))

        # -- matching ------------------------------------------------------------------
        def rewrite_core(self, y):
            value = self.bound(y)
            bias = None
            if is_call(value, "relax.add"):
                a, b = value.args
                if is_call(self.bound(a), "relax.nn.conv2d") or is_call(self.bound(a), "relax.matmul"):
                    value, bias = self.bound(a), b
                elif is_call(self.bound(b), "relax.nn.conv2d") or is_call(self.bound(b), "relax.matmul"):
                    value, bias = self.bound(b), a
                else:
                    return None
            if is_call(value, "relax.nn.conv2d"):
                out = self.int_conv2d(value)
            elif is_call(value, "relax.matmul"):
                out = self.int_matmul(value)
            else:
                return None
            if out is None:
                return None
            if bias is not None:
                out = self.builder_.emit(relax.op.add(out, bias))
            return out

        def activation(self, expr):
            """(integer tensor, its zero point, scale) for dequantize(xq, sx, zx), per-tensor: int8,
            or uint8 (kept, or shifted to int8)."""
            dq = self.bound(expr)
            if not is_call(dq, "relax.dequantize"):
                return None
            xq, scale, zp = dq.args
            s, z = _const_np(scale), _const_np(zp)
            if s is None or z is None or s.size != 1 or z.size != 1:
                return None
            dtype = getattr(xq, "ty", None) and xq.ty.dtype
            if dtype == "uint8" and self.keep_uint8:
                return xq, int(z.reshape(())), float(s.reshape(()))
            if dtype == "uint8":
                shifted = relax.op.subtract(relax.op.astype(xq, "int16"), relax.const(128, "int16"))
                x8 = self.builder_.emit(relax.op.astype(shifted, "int8"))
                return x8, int(z.reshape(())) - 128, float(s.reshape(()))
            if dtype == "int8":
                return xq, int(z.reshape(())), float(s.reshape(()))
            return None

        def weight(self, expr, channel_axis: int):
            """(int8 numpy weights, per-output-channel scales) for dequantize(const Wq, sw, 0)."""
            dq = self.bound(expr)
            if not is_call(dq, "relax.dequantize"):
                return None
            w, scale, zp = (_const_np(a) for a in dq.args)
            if w is None or scale is None or zp is None or w.dtype != np.int8 or np.any(zp != 0):
                return None
            n = w.shape[channel_axis]
            if scale.size == 1:
                scale = np.full(n, float(scale.reshape(())), np.float32)
            elif scale.size != n or dq.attrs.axis not in (channel_axis, channel_axis - w.ndim):
                return None
            return w, scale.astype(np.float32).reshape(n)

        # -- rewriting ---------------------------------------------------------------------
        def int_conv2d(self, conv):
            a = conv.attrs
            if a.data_layout != "NCHW" or a.kernel_layout != "OIHW":
                return None
            act = self.activation(conv.args[0])
            wt = self.weight(conv.args[1], 0)
            if act is None or wt is None:
                return None
            x8, zx, sx = act
            w, sw = wt
            pad = [int(p) for p in a.padding]
            # uint8 x int8 kernels take input channels in groups of 4 (vpdpbusd): a stem's 3
            # channels get a fourth whose weights are 0 (its values do not matter)
            extra = (-w.shape[1]) % 4 if self.keep_uint8 and int(a.groups) == 1 else 0
            if extra:
                w = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
            if (any(pad) and zx != 0) or extra:
                top, left, bottom, right = pad if zx != 0 else (0, 0, 0, 0)
                x8 = self.builder_.emit(relax.op.nn.pad(
                    x8, [0, 0, 0, extra, top, bottom, left, right], pad_value=float(zx)))
                pad = [0, 0, 0, 0] if zx != 0 else pad
            acc = self.builder_.emit(relax.op.nn.conv2d(
                x8, relax.const(w, "int8"), strides=a.strides, padding=pad, dilation=a.dilation,
                groups=int(a.groups), out_dtype="int32"))
            c = w.shape[0]
            if zx != 0:
                wsum = w.astype(np.int64).reshape(c, -1).sum(axis=1)
                acc = self.builder_.emit(relax.op.subtract(
                    acc, relax.const((zx * wsum).astype(np.int32).reshape(1, c, 1, 1), "int32")))
            return self.builder_.emit(relax.op.multiply(
                relax.op.astype(acc, "float32"), relax.const((sx * sw).reshape(1, c, 1, 1), "float32")))

        def int_matmul(self, mm):
            act = self.activation(mm.args[0])
            rhs = self.bound(mm.args[1])
            if act is None:
                return None
            if is_call(rhs, "relax.permute_dims") and [int(i) for i in rhs.attrs.axes] == [1, 0]:
                wt = self.weight(rhs.args[0], 0)  # Gemm with transB: W is (N, K)
                if wt is None:
                    return None
                w, sw = wt[0].T, wt[1]
            else:
                wt = self.weight(mm.args[1], 1)  # MatMul: W is (K, N)
                if wt is None:
                    return None
                w, sw = wt
            if w.ndim != 2:
                return None
            x8, zx, sx = act
            w = np.ascontiguousarray(w)
            acc = self.builder_.emit(relax.op.matmul(x8, relax.const(w, "int8"), out_dtype="int32"))
            if zx != 0:
                wsum = w.astype(np.int64).sum(axis=0)
                acc = self.builder_.emit(relax.op.subtract(
                    acc, relax.const((zx * wsum).astype(np.int32), "int32")))
            return self.builder_.emit(relax.op.multiply(
                relax.op.astype(acc, "float32"), relax.const((sx * sw).astype(np.float32), "float32")))

    return QDQToInt8


def output_step(onnx_path) -> float:
    """The quantization step (scale) of a QDQ model's first output: the unit in which parity
    between two int8 backends is judged (the output is DequantizeLinear of a uint8/int8)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.output[0] == g.output[0].name:
            scale = numpy_helper.to_array(inits[n.input[1]])
            return float(np.max(scale))
    raise ValueError(f"{onnx_path}: the first output is not produced by DequantizeLinear")
