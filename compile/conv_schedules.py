"""Hand-written MetaSchedule design spaces for TVM's blocked x86 convs (uint8 x int8 with VNNI, fp32).

topi's ``conv2d_NCHWc_int8`` marks its block with ``schedule_rule = "conv2d_NCHWc_int8"`` and no
function answers that name in TVM 0.27, so MetaSchedule falls back to generic multi-level tiling.
Tuned for 25-40 trials each, ResNet-18's convs reached 386-420 GOP/s that way (as MetaSchedule
measured them while tuning; the VNNI peak of two Zen 4 cores is about 950). This rule is the
classic direct-conv schedule for ``vpdpbusd``: a row of ``reg_n`` output pixels times ``oc_reg``
blocks of 16 output channels accumulates in registers (a small buffer per tile, fully unrolled,
which LLVM keeps in zmm registers) while the reduction over kernel rows, columns and input-channel
blocks runs outside it, and the requantize epilogue is folded into the write-back of each tile. The
search only picks ``reg_n`` and ``oc_reg``; every tile kept measures 776-896 GOP/s on ResNet-18's
3x3 convs alone. fp32 convs get the same tile with one 16-lane FMA as the update
(``conv2d_nchwc_fp32`` is their compute: topi's fp32 block names no rule).

    >>> from edgeopt.compile.conv_schedules import register_conv_rules
    >>> register_conv_rules(vnni=True)  # before MetaSchedule generates design spaces
"""

from __future__ import annotations

#: the name topi gives the int8 block; MetaSchedule looks up ``s_tir.meta_schedule.<key>.<name>``
RULE = "conv2d_NCHWc_int8"
#: the name ``conv2d_nchwc_fp32`` gives its block (topi's fp32 ``conv2d_NCHWc`` names no rule)
FP32_RULE = "edgeopt_conv2d_NCHWc"
#: accumulators per tile (pixels x channel blocks), of AVX-512's 32 zmm registers: the rest hold
#: the weights and the broadcast input (ResNet-18's 3x3 convs: 14 x 2 spilled, 215 GOP/s)
MAX_ACCUMULATORS = 24
#: the intrinsic the update is tensorized with (registered by ``register_vnni_intrinsic``)
VNNI_INTRIN = "dot_16x4_vnni"


#: whether the CPU being tuned for has VNNI; without it the generic rules schedule these convs
_FOR_VNNI = {"on": False}


def register_conv_rules(vnni: bool = True) -> None:
    """Make MetaSchedule's ``ApplyCustomRule`` use ``conv2d_nchwc_int8_space`` for x86 int8 convs
    (only when ``vnni``: the tile is tensorized with ``vpdpbusd``) and ``conv2d_nchwc_fp32_space``
    for fp32 ones."""
    import tvm

    _FOR_VNNI["on"] = vnni
    tvm.register_global_func(f"s_tir.meta_schedule.cpu.{RULE}", conv2d_nchwc_int8_space, override=True)
    tvm.register_global_func(f"s_tir.meta_schedule.cpu.{FP32_RULE}", conv2d_nchwc_fp32_space, override=True)


def conv2d_nchwc_fp32(data, weight, strides, padding, dilation):
    """fp32 conv of NCHW{b}c data with OIHW{i}i16o weights: topi's ``conv2d_NCHWc`` with the input
    channels as two reduction axes (block, lane), so the rule can order them, and its block
    tagged for ``conv2d_nchwc_fp32_space``."""
    from tvm import te, topi

    n, _, height, width, _ = (int(d) for d in data.shape)
    oc_chunks, ic_chunks, kh, kw, ic_block, oc_block = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="data_pad") \
        if any(padding) else data
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    ico, ry, rx = te.reduce_axis((0, ic_chunks), "ic_outer"), te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
    ici = te.reduce_axis((0, ic_block), "ic_inner")
    return te.compute(
        (n, oc_chunks, out_h, out_w, oc_block),
        lambda b, c, y, x, o: te.sum(
            padded[b, ico, y * sh + ry * dh, x * sw + rx * dw, ici] * weight[c, ico, ry, rx, ici, o],
            axis=[ico, ry, rx, ici]),
        name="conv2d_NCHWc", attrs={"schedule_rule": FP32_RULE})


def conv2d_nchwc_fp32_space(sch, block):
    """The design space for one ``conv2d_nchwc_fp32`` block (see ``conv2d_nchwc_int8_space``)."""
    return _space(sch, block, int8=False)


def tile_choices(out_width: int, oc_chunks: int) -> tuple[list[int], list[int]]:
    """Register tiles worth trying: output pixels per row tile (divisors of the width, so the
    tensorized update never sits under a predicate) and 16-channel blocks per tile.

    >>> tile_choices(56, 4)
    ([4, 7, 8], [1, 2])
    >>> tile_choices(7, 32)
    ([7], [1, 2])
    >>> tile_choices(28, 3)
    ([4, 7, 14], [1])
    """
    oc_reg = [r for r in (1, 2) if oc_chunks % r == 0]
    most = MAX_ACCUMULATORS // max(oc_reg)
    reg_n = [d for d in range(4, most + 1) if out_width % d == 0]
    if not reg_n:  # narrow outputs: the whole row, or its largest divisor
        reg_n = [max(d for d in range(1, min(out_width, most) + 1) if out_width % d == 0)]
    return reg_n, oc_reg


def conv2d_nchwc_int8_space(sch, block):
    """The design space for one ``conv2d_NCHWc_int8`` block: a list with one traced schedule
    whose tile sizes are sampled. When the block is not the 10-loop direct conv this rule is
    written for, or its kernel holds another reduction, the block's annotation is dropped and
    ``[sch]`` is returned untouched, so MetaSchedule's generic rules schedule it."""
    if not _FOR_VNNI["on"]:
        sch.unannotate(block, "schedule_rule")
        return [sch]
    return _space(sch, block, int8=True)


def _space(sch, block, int8: bool):
    from tvm.s_tir.schedule import ScheduleError

    attempt = sch.copy()
    try:
        if _schedule_direct_conv(attempt, block, int8):
            return [attempt]
    except ScheduleError:
        pass
    except Exception:  # noqa: BLE001 - a primitive TVM failed on outside its checks (a stale block,
        # an expression it cannot analyse): this kernel is not one the rule can schedule, and the
        # untouched copy goes to the generic rules instead of taking the whole tuning down
        pass
    sch.unannotate(block, "schedule_rule")
    return [sch]


def _schedule_direct_conv(sch, block, int8: bool = True) -> bool:
    """Register-tile one direct conv block (the int8 one tensorized with ``vpdpbusd``, the fp32
    one vectorized over its 16 output channels); False when its kernel does not fit."""
    from tvm.s_tir.schedule import ScheduleError

    loops = sch.get_loops(block)
    if len(loops) != (10 if int8 else 9):
        return False
    extents = [int(sch.get(loop).extent) for loop in loops]
    if extents[4] != 16 or (int8 and extents[9] != 4):
        return False
    reg_ns, oc_regs = tile_choices(extents[3], extents[1])
    if int8:
        n, occ, oh, ow, ocb, kh, kw, ico, icf, ics = loops
    else:
        n, occ, oh, ow, ocb, ico, kh, kw, icf = loops
        ics = None
    reg_n = sch.sample_categorical(reg_ns, [1.0 / len(reg_ns)] * len(reg_ns))
    oc_reg = sch.sample_categorical(oc_regs, [1.0 / len(oc_regs)] * len(oc_regs))
    ow_o, ow_i = sch.split(ow, [None, reg_n])
    oc_o, oc_i = sch.split(occ, [None, oc_reg])
    sch.reorder(n, oc_o, oh, ow_o, ico, kh, kw, icf, oc_i, ow_i, ocb, *([ics] if int8 else []))
    # the accumulators: one tile, written back (with the epilogue) after its reduction
    write_back = sch.cache_write(block, 0, "global")
    _inline_epilogue(sch, write_back)
    # unit loops kept: the loop count must not depend on the sampled tile (traces are replayed)
    sch.reverse_compute_at(write_back, ow_o, preserve_unit_loops=True)
    sch.parallel(sch.fuse(n, oc_o, oh))
    if not int8:  # one fp32 FMA on a zmm register per (pixel, channel block)
        sch.vectorize(ocb)  # before the init is split off: after, the update is no reduction
    init = sch.decompose_reduction(block, ico)
    if int8:
        update = sch.blockize(ocb)
        sch.tensorize(update, VNNI_INTRIN)
    else:
        update = block
    sch.unroll(ow_i)
    sch.unroll(oc_i)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    for loop in init_loops[-3:-1]:
        sch.unroll(loop)
    sch.vectorize(sch.get_loops(write_back)[-1])
    mine = [init, update, write_back]
    # every other block of the kernel: elementwise work before the padding (a requantize of the
    # input) is folded into it; the padding and what cannot be folded (a consumer that reads
    # two pixels) get a parallel pass of their own, the innermost loop left to LLVM's vectorizer
    root = sch.get_sblock("root", func_name=sch.mod.get_global_vars()[0].name_hint)
    names = {sch.get(b).name_hint for b in mine}
    for other in sch.get_child_blocks(root):
        if sch.get(other).name_hint in names:
            continue
        if any(int(v.iter_type) != 0 for v in sch.get(other).iter_vars):
            return False  # a reduction: not this rule's to schedule
        try:
            sch.compute_inline(other)
            continue
        except ScheduleError:
            pass
        other_loops = sch.get_loops(other)
        if len(other_loops) > 1:
            sch.parallel(sch.fuse(*other_loops[:-1]))
        elif other_loops:
            sch.parallel(other_loops[0])
        mine.append(other)
    # the blocks are scheduled: later rules (and the root's parallel / vectorize annotations,
    # whose rewrite would redo these loops) must leave them alone
    for b in mine + [root]:
        sch.annotate(b, "schedule_rule", "None")
    return True


def _inline_epilogue(sch, write_back) -> None:
    """Fold the elementwise work after the conv (zero-point correction, requantize, bias, residual
    add, clip, sigmoid, cast) into the tile's write-back, one block after another, as far as it goes.

    A block is folded only while it is the write-back's one reader: folding one of two readers
    leaves the other reading a buffer nothing writes any more (TVM does not check). Two readers
    (``x * sigmoid(x)``, hardswish, a conv without bias) are first merged by inlining one into
    what reads it. The readers are asked for again after every change: a handle taken before it
    may name a block that is gone (the crash of ``x * sigmoid(x)``: "Cannot dispatch a null
    expression"). What cannot be folded stays a block of its own (see ``_schedule_direct_conv``)."""
    from tvm.s_tir.schedule import ScheduleError

    while True:
        readers = sch.get_consumers(write_back)
        if len(readers) == 1:
            try:
                sch.reverse_compute_inline(readers[0])
            except ScheduleError:
                return
            continue
        for reader in readers:
            try:
                sch.compute_inline(reader)
                break
            except ScheduleError:
                continue
        else:
            return  # no reader, or none that merges: the rest is left as it is


def hand_space_size(kernel, target) -> int | None:
    """How many schedules the hand-written space of a tuning task's kernel holds (every sampled
    tile combination), or None when MetaSchedule's generic rules schedule the kernel.

    The evolutionary search cannot tell that a space this small is exhausted: it keeps asking
    for new candidates, finds none, and spins. ``tune`` measures such spaces whole instead, with
    the trials per task capped at this number.
    """
    import math

    from tvm.s_tir import meta_schedule as ms

    spaces = ms.TuneContext(mod=kernel, target=target, space_generator="post-order-apply").generate_design_space()
    if len(spaces) != 1 or 'ann_key="schedule_rule", ann_val="None"' not in str(spaces[0].trace):
        return None
    sizes = [len(inst.attrs[0]) for inst in spaces[0].trace.insts if inst.kind.name == "SampleCategorical"]
    return math.prod(sizes) if sizes else None
