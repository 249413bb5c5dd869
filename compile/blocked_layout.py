"""Blocked (NCHW16c) layouts for TVM's own x86 convolution kernels, fp32 and uint8 x int8.

TVM's tuned CPU convolutions in NCHW / OIHW leave performance behind: the inner loops read
channels with a stride of H*W, and int8 convs in that layout get no VNNI-tensorized candidates at
all. This module converts a Relax module (after ``int8_rewrite``) so that every dense
convolution whose channels divide by 16 runs in the blocked layout the x86 schedules are written
for:

- fp32: data ``NCHW16c``, weights ``OIHW16i16o`` (topi ``conv2d_NCHWc``);
- int8: uint8 data ``NCHW16c``, int8 weights ``OIHW4i16o4i`` (topi ``conv2d_NCHWc_int8``),
  whose reduction over 4 input channels is the shape of the ``vpdpbusd`` instruction that the
  re-registered ``dot_16x4_vnni`` tensor intrinsic (``register_vnni_intrinsic``) emits.

Depthwise convolutions stay in the blocked layout as well (``depthwise_conv2d_nchwc``). The
layout travels through the elementwise ops between convolutions (requantize, residual add,
ReLU / ReLU6, pooling): per-tensor quantize / dequantize and clip are first written as
elementwise arithmetic that Relax's ``ConvertLayout`` can carry (it stops at ``relax.quantize``
and at the importer's ``call_tir`` Clip), so layout transforms are left at the model's edges
and around the ops that cannot take a blocked layout (convs with output channels not divisible
by 16, padding with a zero point, reshapes): ResNet-18 keeps 2, MobileNetV2 6. Weights are
constants, so their transforms fold away at build time.

Example:
    >>> import edgeopt.compile.blocked_layout as bl  # doctest: +SKIP
    >>> mod, n = bl.to_blocked_layout(mod)  # doctest: +SKIP
    >>> with target: mod = bl.legalize_blocked_convs()(mod)  # doctest: +SKIP
"""

from __future__ import annotations

from edgeopt.core.errors import last_line

#: Channels per block: one AVX-512 register of fp32, and 16 int32 accumulators of ``vpdpbusd``.
BLOCK = 16
#: uint8 values ``vpdpbusd`` multiplies into one int32 accumulator.
VNNI_LANES = 4


def has_vnni(spec: dict) -> bool:
    """True when an LLVM target's CPU has AVX-512 VNNI (uint8 x int8 dot products)."""
    if spec.get("kind") != "llvm":
        return False
    import tvm

    try:
        from tvm.target import codegen

        return bool(codegen.target_has_features("avx512vnni", tvm.target.Target(spec)))
    except Exception:  # an older or stripped LLVM: judge by the attributes given
        return "+avx512vnni" in (spec.get("mattr") or [])


def decompose_qdq(mod):
    """Per-tensor ``quantize`` / ``dequantize`` and ``clip`` as elementwise Relax ops with the
    same arithmetic as TVM's own lowering (bit-identical results), so layouts pass through them."""
    from tvm import relax

    rewriter = _qdq_decomposer()(mod)
    updated = mod
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            updated[gv] = rewriter.visit_expr(func)
    return updated


def _scalar(expr):
    import tvm

    if isinstance(expr, tvm.ir.expr.Constant) and expr.value.numpy().size == 1:
        return expr.value.numpy().reshape(())
    return None


def _qdq_decomposer():
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    def op_name(call):
        return call.op.name if isinstance(call.op, tvm.ir.Op) else ""

    @mutator
    class Decompose(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            name = op_name(call)
            if name == "relax.quantize":
                return self.quantize(call)
            if name == "relax.dequantize":
                return self.dequantize(call)
            if name == "relax.clip":
                lo, hi = (float(v.value) for v in call.args[1:3])
                dtype = call.args[0].ty.dtype
                x = relax.op.minimum(call.args[0], relax.const(hi, dtype))
                return relax.op.maximum(x, relax.const(lo, dtype))
            return call

        def quantize(self, call):
            scale, zp = _scalar(call.args[1]), _scalar(call.args[2])
            dtype = str(call.attrs.out_dtype)
            if scale is None or zp is None or dtype not in ("uint8", "int8") \
                    or call.args[0].ty.dtype != "float32":
                return call
            info = np.iinfo(dtype)
            # TVM's lowering: clip(round(x / scale) + zp, min, max), in float32, then the cast
            y = relax.op.add(relax.op.round(relax.op.divide(call.args[0], relax.const(scale, "float32"))),
                             relax.const(float(zp), "float32"))
            y = relax.op.maximum(relax.op.minimum(y, relax.const(float(info.max), "float32")),
                                 relax.const(float(info.min), "float32"))
            return relax.op.astype(y, dtype)

        def dequantize(self, call):
            scale, zp = _scalar(call.args[1]), _scalar(call.args[2])
            x = call.args[0]
            if scale is None or zp is None or str(call.attrs.out_dtype) != "float32" \
                    or x.ty.dtype not in ("uint8", "int8", "int32"):
                return call
            # TVM's lowering: (int32(x) - zp) * scale
            y = relax.op.subtract(relax.op.astype(x, "int32"), relax.const(int(zp), "int32"))
            return relax.op.multiply(relax.op.astype(y, "float32"), relax.const(scale, "float32"))

    return Decompose


def blocks(call) -> tuple[int, int] | None:
    """(input channel block, output channel block) for a conv2d the blocked kernels take, or
    None: 2-D, NCHW / OIHW, 16 | output channels, and either depthwise ((1, 16)), or ungrouped
    fp32 x fp32 with 16 | input channels (fewer than 16: one block), or ungrouped uint8 x int8
    (int32 accumulators) with 4 | input channels (a block of 4 when 16 does not divide them: the
    stem, whose 3 channels ``int8_rewrite`` pads to 4)."""
    a = call.attrs
    x, w = call.args[0].ty, call.args[1].ty
    if a.data_layout != "NCHW" or a.kernel_layout != "OIHW":
        return None
    if not all(hasattr(d, "value") for d in w.shape):
        return None
    out_c, in_c = int(w.shape[0]), int(w.shape[1])
    out = str(a.out_dtype)
    dtypes = (x.dtype, w.dtype, x.dtype if out in ("", "void", "None") else out)
    if out_c % BLOCK:
        return None
    if int(a.groups) != 1:  # depthwise (one filter per channel) stays in the blocked layout
        depthwise = int(a.groups) == out_c and in_c == 1
        ok = dtypes in (("float32", "float32", "float32"), ("uint8", "int8", "int32"))
        return (1, BLOCK) if depthwise and ok else None
    if dtypes == ("float32", "float32", "float32") and (in_c % BLOCK == 0 or in_c < BLOCK):
        return min(in_c, BLOCK), BLOCK  # a stem's few channels make one block
    if dtypes == ("uint8", "int8", "int32") and in_c % VNNI_LANES == 0:
        return (BLOCK if in_c % BLOCK == 0 else VNNI_LANES), BLOCK
    return None


def to_blocked_layout(mod):
    """``(module, blocked conv count)``: dense convs in NCHW16c, the layout carried through the
    elementwise ops after them; weights transformed (folded) once."""
    import tvm
    from tvm import relax

    count = [0]

    def layout_cb(call):  # called for every call; convs ask for a layout
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if name == "relax.nn.conv2d_transpose":
            # its layout inference cannot take a blocked input (a 4-D / 5-D mismatch inside
            # ConvertLayout): ask for NCHW, so the layout goes back to NCHW before it
            return {name: ["NCHW", "IOHW"]}
        if name != "relax.nn.conv2d":
            return {}
        sizes = blocks(call)
        if sizes:
            count[0] += 1
            i, o = sizes
            if i == 1:  # depthwise: data in the output's blocks, one input channel per filter
                return {"relax.nn.conv2d": [f"NCHW{o}c", f"OIHW1i{o}o", f"NCHW{o}c"]}
            return {"relax.nn.conv2d": [f"NCHW{i}c", f"OIHW{i}i{o}o", f"NCHW{o}c"]}
        return {"relax.nn.conv2d": ["NCHW", "OIHW"]}

    from .onednn_offload import clip_as_relax_ops

    # the importer lowers Clip (ReLU6) to call_tir kernels, which no layout passes through
    mod = decompose_qdq(clip_as_relax_ops(mod))
    try:
        mod = relax.transform.ConvertLayout({}, layout_cb)(mod)
    except Exception as e:  # an op whose layout inference fails on a blocked input
        raise BlockedLayoutUnsupported(last_line(e)) from None
    mod = tvm.transform.Sequential([
        # ConvertLayout transforms a tensor once per consumer: a residual's input twice
        relax.transform.EliminateCommonSubexpr(), relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination()])(mod)
    return mod, count[0]


class BlockedLayoutUnsupported(Exception):
    """Relax's layout conversion failed on an op of this model; the build keeps NCHW."""


def legalize_blocked_convs():
    """``LegalizeOps`` with blocked conv2d lowered to topi's NCHWc kernels (TVM's default
    legalizer refuses blocked layouts); run inside the target scope."""
    from tvm import relax, topi
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    from .conv_schedules import conv2d_nchwc_fp32

    def conv2d(bb, call):
        a = call.attrs
        if a.data_layout == "NCHW" or len(call.args[0].ty.shape) != 5:
            return _nn_conv2d(bb, call)
        if int(a.groups) != 1:
            out_dtype = "int32" if call.args[0].ty.dtype == "uint8" else "float32"
            return bb.call_te(depthwise_conv2d_nchwc, call.args[0], call.args[1], list(a.strides),
                              list(a.padding), list(a.dilation), out_dtype,
                              primfunc_name_hint="depthwise_conv2d_NCHWc")
        args = dict(stride=list(a.strides), padding=list(a.padding), dilation=list(a.dilation),
                    layout=a.data_layout, out_layout=a.out_layout or a.data_layout)
        if call.args[0].ty.dtype == "uint8":
            def packed(weight):
                # OIHW{i}i16o -> OIHW{i/4}i16o4i: 4 consecutive input channels per int32 lane
                o, i, kh, kw, ib, ob = (int(d) for d in weight.shape)
                w = topi.reshape(weight, (o, i, kh, kw, ib // VNNI_LANES, VNNI_LANES, ob))
                return topi.transpose(w, (0, 1, 2, 3, 4, 6, 5))

            def compute(data, weight):
                return topi.nn.conv2d_NCHWc_int8(data, weight, out_dtype="int32", n_elems=VNNI_LANES,
                                                 **args)
            # a kernel of its own, so that it folds into the constant weights
            weight = bb.emit_te(packed, call.args[1], primfunc_name_hint="pack_vnni_weight")
            return bb.call_te(compute, call.args[0], weight, primfunc_name_hint="conv2d_NCHWc_int8")
        # topi's conv2d_NCHWc with the input channels split in two and a schedule rule named
        return bb.call_te(conv2d_nchwc_fp32, call.args[0], call.args[1], list(a.strides), list(a.padding),
                          list(a.dilation), primfunc_name_hint="conv2d_NCHWc")

    return relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": conv2d})


def depthwise_conv2d_nchwc(data, weight, strides, padding, dilation, out_dtype):
    """Depthwise conv of NCHW{b}c data with OIHW1i{b}o weights (one filter per channel), in
    ``out_dtype`` (int32 for uint8 x int8). TVM 0.27's topi declares this op but registers no
    implementation; the compute is the textbook one, and MetaSchedule schedules it."""
    from tvm import te, topi

    n, chunks, height, width, block = (int(d) for d in data.shape)
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0]) if any(padding) else data
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, chunks, out_h, out_w, block),
        lambda b, c, y, x, i: te.sum(
            padded[b, c, y * sh + ry * dh, x * sw + rx * dw, i].astype(out_dtype)
            * weight[c, 0, ry, rx, 0, i].astype(out_dtype), axis=[ry, rx]),
        name="depthwise_conv2d_NCHWc")


def keep_int8_weight_layout(mod):
    """Take the int8 blocked convs' weights out of MetaSchedule's weight re-layout
    (``AttachAttrLayoutFreeBuffers``): they are already packed for ``vpdpbusd``, and the re-layout
    of their 7-D kernel fails inside MetaSchedule (``Check failed: ind.as<PrimVar>()``)."""
    import tvm

    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc) and "conv2d_NCHWc_int8" in gv.name_hint \
                and func.attrs is not None and "layout_free_buffers" in func.attrs:
            mod[gv] = func.without_attr("layout_free_buffers")
    return mod


def register_vnni_intrinsic() -> None:
    """Re-register TVM's ``dot_16x4_vnni`` so that it builds with LLVM 22.

    LLVM 22 changed ``llvm.x86.avx512.vpdpbusd.512`` to take ``<64 x i8>`` operands; TVM 0.27's
    implementation passes ``int32x16``, so every VNNI-tensorized candidate fails LLVM's verifier
    and MetaSchedule drops it without a word. The same description with the operands
    reinterpreted as 64 bytes builds and emits ``vpdpbusd``.
    """
    from tvm.s_tir.tensor_intrin import x86
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                  C: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a, 16), dtype="uint8x64"), B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    TensorIntrin.register("dot_16x4_vnni", x86.dot_product_16x4_u8i8i32_desc, vnni_impl, override=True)
