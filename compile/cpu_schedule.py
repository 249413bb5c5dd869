"""A default CPU schedule for the TVM kernels an untuned x86 build keeps (elementwise ops,
quantize / dequantize, residual adds, pooling), when convs and matmuls run on a kernel library.

TVM 0.27 has no default CPU schedules (dlight's rules are GPU-only): an untuned kernel is a
serial loop nest of scalar code. This pass fuses every spatial (injective) block of an
unscheduled kernel into one loop with a vectorized inner loop; with ``min_parallel`` its outer
loop (and a reduction block's outer spatial loops) also run on TVM's thread pool. Beside oneDNN
that is off by default: TVM's pool and oneDNN's OpenMP threads then contend for the same two
cores (the ViT: 0.85 ms without parallel loops, 1.15 ms with, spinning off or on), while
vectorizing alone took its int8 build from 1.13-1.20x onnxruntime int8 to 0.89-0.94x. A kernel
the schedule cannot apply to keeps TVM's default (the pass never makes a build fail).

Example:
    >>> from edgeopt.compile.cpu_schedule import parallel_cpu_schedule  # doctest: +SKIP
    >>> mod = parallel_cpu_schedule()(mod)  # doctest: +SKIP
"""

from __future__ import annotations

VECTOR = 16  # float32 lanes of an AVX-512 register


def parallel_cpu_schedule(min_parallel: int | None = None):
    """A module pass scheduling every unscheduled PrimFunc of the module (see the module doc).
    ``min_parallel``: loops of at least this many iterations run in parallel (``None``: none do;
    a parallel launch costs a few microseconds, and beside oneDNN it contends for the cores)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EdgeoptParallelCpuSchedule")
    def schedule_pass(mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get("tir.is_scheduled")):
                continue
            scheduled = _schedule(func, min_parallel if min_parallel is not None else 1 << 62)
            if scheduled is not None:
                updates[gv] = scheduled
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return schedule_pass


def _schedule(func, min_parallel: int):
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        changed = False
        for block in sch.get_child_blocks(root):
            changed |= _schedule_block(sch, block, min_parallel)
        if not changed:
            return None
        return sch.mod["main"].with_attr("tir.is_scheduled", True)
    except Exception:  # a kernel shape the simple schedule does not fit: keep TVM's default
        return None


def _schedule_block(sch, block, min_parallel: int) -> bool:
    loops = sch.get_loops(block)
    if not loops:
        return False
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    extents = [int(sch.get(loop).extent) for loop in loops]
    if all(k == 0 for k in kinds) and len(loops) == len(kinds):  # spatial only (0: data parallel)
        if not _contiguous(sch.get(block)):
            return False  # a transpose: vectorized, its reads become gathers (12x slower)
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        total = 1
        for e in extents:
            total *= e
        if total % VECTOR == 0 and total >= VECTOR:
            outer, inner = sch.split(fused, factors=[None, VECTOR])
            sch.vectorize(inner)
        else:
            outer = fused
        if total >= min_parallel:
            sch.parallel(outer)
        return True
    # a reduction: parallel over the leading spatial loops, the reduction stays serial
    spatial = 0
    for loop, kind in zip(loops, kinds):
        if kind != 0:
            break
        spatial += 1
    if spatial == 0:
        return False
    total = 1
    for e in extents[:spatial]:
        total *= e
    if total * max(1, extents[spatial] if spatial < len(extents) else 1) < min_parallel or total < 2:
        return False
    outer = sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0]
    sch.parallel(outer)
    return True


def _contiguous(block) -> bool:
    """True when every read of ``block`` walks its innermost axis with the write's innermost index
    (or reads one element there: a broadcast): the inner loop then vectorizes into plain loads."""
    import tvm

    if len(block.writes) != 1 or not block.writes[0].region:
        return False
    inner = block.writes[0].region[-1].min
    for read in block.reads:
        if not read.region:
            continue  # a scalar
        last = read.region[-1]
        if isinstance(last.extent, tvm.tirx.IntImm) and int(last.extent) == 1 and \
                isinstance(last.min, tvm.tirx.IntImm):
            continue  # broadcast along the inner axis
        if not tvm.ir.structural_equal(last.min, inner):
            return False
    return True
