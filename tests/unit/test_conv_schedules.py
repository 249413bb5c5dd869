"""The hand-written MetaSchedule design space for blocked uint8 x int8 convs
(``edgeopt.compile.conv_schedules``): every tile it can sample builds and gives the exact integer
results with the requantize folded into the write-back, and convs it is not written for go to
MetaSchedule's generic rules."""

import numpy as np

from edgeopt.compile.conv_schedules import register_conv_rules, tile_choices
from edgeopt.compile.intrinsics import load_tensor_intrinsics

CANDIDATES = "sample_categorical"


def _conv(channels=32, out_channels=32, size=28, kernel=3, stride=1, pad=1, epilogue="requant"):
    """A topi ``conv2d_NCHWc_int8`` PrimFunc (uint8 NCHW16c data, int8 OIHW4i16o4i weights) with
    a requantize after it, or a consumer that reads two output pixels (which cannot be folded)."""
    from tvm import te, topi

    data = te.placeholder((1, channels // 16, size, size, 16), "uint8", name="data")
    weight = te.placeholder((out_channels // 16, channels // 16, kernel, kernel, 4, 16, 4), "int8", name="weight")
    acc = topi.nn.conv2d_NCHWc_int8(data, weight, (stride, stride), (pad, pad), (1, 1), "NCHW16c", "NCHW16c",
                                    "int32", n_elems=4)
    if epilogue == "requant":
        out = te.compute(acc.shape, lambda *i: te.max(te.min(
            te.round(acc(*i).astype("float32") * 0.004) + 7.0, 255.0), 0.0).astype("uint8"), name="requant")
    else:
        width = int(acc.shape[3])
        out = te.compute(acc.shape, lambda n, c, h, w, b: acc[n, c, h, w, b] + acc[n, c, h, (w + 1) % width, b],
                         name="neighbours")
    return te.create_prim_func([data, weight, out]), [data, weight, out]


def _spaces(func, vnni=True):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from edgeopt.compile.targets import host_cpu_target

    load_tensor_intrinsics("llvm")
    register_conv_rules(vnni=vnni)
    # a VNNI CPU's target, whatever this host is: the schedules are checked, not run, there
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    mod = tvm.IRModule({"main": func})
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             search_strategy="evolutionary")
    host = tvm.target.Target(host_cpu_target())
    return mod, context, context.generate_design_space(), host


def _run(mod, tensors, target, seed=0):
    import tvm

    rng = np.random.default_rng(seed)
    args = []
    for t, dtype in zip(tensors, ("uint8", "int8", None)):
        shape = [int(d) for d in t.shape]
        if dtype == "uint8":
            a = rng.integers(0, 256, shape).astype(np.uint8)
        elif dtype == "int8":
            a = rng.integers(-128, 128, shape).astype(np.int8)
        else:
            a = np.zeros(shape, str(t.dtype))
        args.append(tvm.runtime.tensor(a))
    with target:
        lib = tvm.compile(mod, target=target)
    lib["main"](*args)
    return args[-1].numpy()


def test_tile_choices_divide_the_output_width_and_fit_the_registers():
    assert tile_choices(56, 4) == ([4, 7, 8], [1, 2])
    assert tile_choices(28, 3) == ([4, 7, 14], [1])
    assert tile_choices(3, 3) == ([3], [1])  # narrower than any register row: the whole row
    for width in (5, 13, 29, 31, 112):
        for chunks in (1, 2, 3):
            reg_n, oc_reg = tile_choices(width, chunks)
            assert all(width % r == 0 and r * max(oc_reg) <= 24 for r in reg_n)


def test_every_tile_of_the_space_gives_the_exact_integers_with_the_epilogue_folded():
    from tvm.s_tir import Schedule

    from edgeopt.compile.blocked_layout import has_vnni
    from edgeopt.compile.targets import host_cpu_target

    func, tensors = _conv()
    mod, context, spaces, host = _spaces(func)
    assert len(spaces) == 1
    trace = spaces[0].trace
    text = str(trace)
    assert "dot_16x4_vnni" in text and CANDIDATES in text
    samples = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"]
    tiles = [[int(c) for c in inst.attrs[0]] for inst in samples[:2]]
    assert tiles == [[4, 7], [1, 2]]  # a 28-pixel row, 2 chunks of 16 output channels
    run = has_vnni(host_cpu_target())
    reference = _run(mod, tensors, host) if run else None
    for reg_n in range(len(tiles[0])):
        for oc_reg in range(len(tiles[1])):
            t = trace.with_decision(samples[0], reg_n, remove_postproc=True)
            t = t.with_decision(samples[1], oc_reg, remove_postproc=True)
            sch = Schedule(mod)
            t.apply_to_schedule(sch, remove_postproc=True)
            for postproc in context.space_generator.postprocs:
                assert postproc.apply(sch), type(postproc).__name__
            script = sch.mod["main"].script()
            assert 'sblock("requant")' not in script  # folded into the tile's write-back
            assert "vpdpbusd" in script
            if run:
                np.testing.assert_array_equal(_run(sch.mod, tensors, host), reference)


def test_without_vnni_the_generic_rules_schedule_the_conv():
    func, _ = _conv()
    _, _, spaces, _ = _spaces(func, vnni=False)
    try:
        for space in spaces:
            text = str(space.trace)
            assert 'ann_val="None"' not in text and f"{CANDIDATES}(candidates=[4, 7]" not in text
    finally:
        register_conv_rules(vnni=True)


def test_a_consumer_that_cannot_be_folded_runs_as_its_own_parallel_pass():
    from tvm.s_tir import Schedule

    from edgeopt.compile.blocked_layout import has_vnni
    from edgeopt.compile.targets import host_cpu_target

    func, tensors = _conv(epilogue="neighbours")
    mod, context, spaces, host = _spaces(func)
    assert len(spaces) == 1 and "dot_16x4_vnni" in str(spaces[0].trace)
    sch = Schedule(mod)
    spaces[0].trace.apply_to_schedule(sch, remove_postproc=True)
    for postproc in context.space_generator.postprocs:
        assert postproc.apply(sch), type(postproc).__name__
    script = sch.mod["main"].script()
    assert 'sblock("neighbours")' in script and "T.parallel" in script
    if has_vnni(host_cpu_target()):
        np.testing.assert_array_equal(_run(sch.mod, tensors, host), _run(mod, tensors, host))


def test_fp32_blocked_conv_matches_topi_and_its_space_keeps_the_results():
    import tvm
    from tvm import te, topi
    from tvm.s_tir import Schedule

    from edgeopt.compile.conv_schedules import conv2d_nchwc_fp32

    data = te.placeholder((1, 2, 15, 15, 16), "float32", name="data")
    weight = te.placeholder((3, 2, 3, 3, 16, 16), "float32", name="weight")
    ours = conv2d_nchwc_fp32(data, weight, (2, 2), (1, 1, 1, 1), (1, 1))
    out = te.compute(ours.shape, lambda *i: te.max(ours(*i), 0.0), name="relu")
    func = te.create_prim_func([data, weight, out])
    mod, context, spaces, host = _spaces(func)
    with host:  # topi's x86 conv asks for a target
        theirs = topi.nn.conv2d_NCHWc(data, weight, (2, 2), (1, 1), (1, 1), "NCHW16c", "NCHW16c", "float32")
    assert len(spaces) == 1 and CANDIDATES in str(spaces[0].trace)
    sch = Schedule(mod)
    spaces[0].trace.apply_to_schedule(sch, remove_postproc=True)
    for postproc in context.space_generator.postprocs:
        assert postproc.apply(sch), type(postproc).__name__
    assert 'sblock("relu")' not in sch.mod["main"].script()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 15, 15, 16)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3, 16, 16)).astype(np.float32)
    with host:
        reference = tvm.compile(tvm.IRModule({"main": te.create_prim_func([data, weight, theirs])}), target=host)
        tuned = tvm.compile(sch.mod, target=host)
    expected = tvm.runtime.tensor(np.zeros((1, 3, 8, 8, 16), np.float32))
    got = tvm.runtime.tensor(np.zeros((1, 3, 8, 8, 16), np.float32))
    reference["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), expected)
    tuned["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), got)
    np.testing.assert_allclose(got.numpy(), np.maximum(expected.numpy(), 0), rtol=1e-5, atol=1e-4)


def test_the_size_of_a_hand_written_space_is_counted_and_generic_kernels_have_none():
    import tvm
    from tvm import te

    from edgeopt.compile.conv_schedules import hand_space_size

    load_tensor_intrinsics("llvm")
    register_conv_rules(vnni=True)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    func, _ = _conv()
    assert hand_space_size(tvm.IRModule({"main": func}), target) == 4  # tiles [4, 7] x [1, 2]
    a = te.placeholder((64, 64), "float32", name="a")
    k = te.reduce_axis((0, 64), "k")
    mm = te.compute((64, 64), lambda i, j: te.sum(a[i, k] * a[k, j], axis=k), name="mm")
    assert hand_space_size(tvm.IRModule({"main": te.create_prim_func([a, mm])}), target) is None
