"""Tuning keeps its word: every conv the hand-written spaces accept tunes or falls back to the
generic rules cleanly (``conv_schedules``), and ``TuneConfig.timeout_s`` bounds the whole build."""

import numpy as np
import pytest

from edgeopt.compile.conv_schedules import conv2d_nchwc_fp32, register_conv_rules
from edgeopt.compile.intrinsics import load_tensor_intrinsics


def _fp32_conv(epilogue: str, channels=32, size=8):
    """edgeopt's blocked fp32 conv (no bias) with an epilogue that reads the conv output twice."""
    from tvm import te, topi

    data = te.placeholder((1, channels // 16, size, size, 16), "float32", name="data")
    weight = te.placeholder((channels // 16, channels // 16, 3, 3, 16, 16), "float32", name="weight")
    acc = conv2d_nchwc_fp32(data, weight, (1, 1), (1, 1, 1, 1), (1, 1))
    if epilogue == "silu":  # x * sigmoid(x): the sigmoid and the multiply both read the conv
        out = topi.multiply(acc, topi.sigmoid(acc))
    elif epilogue == "hardswish":  # x * relu6(x + 3) / 6
        out = topi.multiply(acc, topi.divide(topi.clip(topi.add(acc, 3.0), 0.0, 6.0), 6.0))
    else:  # x * x + x: three readers
        out = topi.add(topi.multiply(acc, acc), acc)
    return te.create_prim_func([data, weight, out]), [data, weight, out]


def _int8_conv(channels=32, size=8):
    """topi's blocked int8 conv whose int32 output is read twice before the requantize."""
    from tvm import te, topi

    data = te.placeholder((1, channels // 16, size, size, 16), "uint8", name="data")
    weight = te.placeholder((channels // 16, channels // 16, 3, 3, 4, 16, 4), "int8", name="weight")
    acc = topi.nn.conv2d_NCHWc_int8(data, weight, (1, 1), (1, 1), (1, 1), "NCHW16c", "NCHW16c", "int32", n_elems=4)
    real = te.compute(acc.shape, lambda *i: acc(*i).astype("float32") * 0.001, name="dequant")
    silu = topi.multiply(real, topi.sigmoid(real))
    out = te.compute(acc.shape, lambda *i: te.max(te.min(te.round(silu(*i) * 50.0) + 3.0, 255.0), 0.0)
                     .astype("uint8"), name="requant")
    return te.create_prim_func([data, weight, out]), [data, weight, out]


def _space(func):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    load_tensor_intrinsics("llvm")
    register_conv_rules(vnni=True)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    mod = tvm.IRModule({"main": func})
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             search_strategy="evolutionary")
    return mod, context, context.generate_design_space()


def _run(mod, tensors, seed=0):
    import tvm

    from edgeopt.compile.targets import host_cpu_target

    rng = np.random.default_rng(seed)
    args = []
    for t in tensors[:-1]:
        shape = [int(d) for d in t.shape]
        if str(t.dtype) == "uint8":
            args.append(rng.integers(0, 256, shape).astype(np.uint8))
        elif str(t.dtype) == "int8":
            args.append(rng.integers(-128, 128, shape).astype(np.int8))
        else:
            args.append(rng.standard_normal(shape).astype(np.float32))
    args.append(np.zeros([int(d) for d in tensors[-1].shape], str(tensors[-1].dtype)))
    args = [tvm.runtime.tensor(a) for a in args]
    target = tvm.target.Target(host_cpu_target())
    with target:
        lib = tvm.compile(mod, target=target)
    lib["main"](*args)
    return args[-1].numpy()


def _every_tile(mod, context, space):
    """Each schedule the hand-written space holds, applied with its postprocessors."""
    from tvm.s_tir import Schedule

    trace = space.trace
    samples = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical"]
    choices = [len(inst.attrs[0]) for inst in samples]
    import itertools

    for picks in itertools.product(*(range(n) for n in choices)):
        t = trace
        for inst, pick in zip(samples, picks):
            t = t.with_decision(inst, pick, remove_postproc=True)
        sch = Schedule(mod)
        t.apply_to_schedule(sch, remove_postproc=True)
        for postproc in context.space_generator.postprocs:
            assert postproc.apply(sch), type(postproc).__name__
        yield sch.mod


@pytest.mark.parametrize("epilogue", ["silu", "hardswish", "square"])
def test_an_epilogue_reading_the_conv_twice_is_folded_and_exact(epilogue):
    """The crash of issue 26: a conv output read by two blocks (x * sigmoid(x)) left the rule
    holding a block the first fold had removed ("The block no longer exists", "Cannot dispatch a
    null expression"), and the error took the tuning down."""
    func, tensors = _fp32_conv(epilogue)
    mod, context, spaces = _space(func)
    assert len(spaces) == 1
    assert 'ann_val="None"' in str(spaces[0].trace)  # the hand-written space, not the generic one
    reference = _run(mod, tensors)
    for scheduled in _every_tile(mod, context, spaces[0]):
        script = scheduled["main"].script()
        assert 'sblock("T_sigmoid")' not in script and 'sblock("T_multiply")' not in script  # folded
        np.testing.assert_allclose(_run(scheduled, tensors), reference, rtol=1e-5, atol=1e-4)


def test_an_int8_conv_read_twice_is_folded_and_exact():
    from edgeopt.compile.blocked_layout import has_vnni
    from edgeopt.compile.targets import host_cpu_target

    func, tensors = _int8_conv()
    mod, context, spaces = _space(func)
    assert len(spaces) == 1 and "dot_16x4_vnni" in str(spaces[0].trace)
    if not has_vnni(host_cpu_target()):
        pytest.skip("this CPU has no VNNI to run the tensorized schedule")
    reference = _run(mod, tensors)
    for scheduled in _every_tile(mod, context, spaces[0]):
        got = _run(scheduled, tensors).astype(int)
        # the fold may reassociate the float epilogue: a rounding tie may land one step apart
        assert np.abs(got - reference.astype(int)).max() <= 1


def test_a_rule_failure_outside_tvms_checks_falls_back_to_the_generic_rules(monkeypatch):
    """Whatever a schedule primitive raises, the conv is tuned by the generic rules instead."""
    import edgeopt.compile.conv_schedules as cs

    def broken(sch, block, int8=True):
        raise ValueError("Cannot dispatch a null expression")

    monkeypatch.setattr(cs, "_schedule_direct_conv", broken)
    func, _ = _fp32_conv("silu")
    _, _, spaces = _space(func)
    assert spaces and all('ann_val="None"' not in str(s.trace) for s in spaces)


def test_round_budget_never_plans_past_what_is_left():
    from edgeopt.compile.tune import RoundBudget

    now = {"t": 0.0}
    budget = RoundBudget(timeout_s=60.0, started=0.0, clock=lambda: now["t"])
    first = budget.iterations_affordable(16)  # untimed: into half of the 60 s, at 24 s each
    assert first == 1
    budget.record(iterations=1, trials=16, seconds=12.0)  # faster than predicted: 12 s each
    now["t"] = 12.0
    assert budget.iterations_affordable(16) == 4  # 48 s left
    now["t"] = 55.0
    assert budget.iterations_affordable(16) == 0
    assert RoundBudget(timeout_s=None, started=0.0).iterations_affordable(16) > 10 ** 6


class _ThreeConvs:
    """Convs the hand-written spaces take (32 channels, one read twice: x * sigmoid(x)) and one
    they do not (24 channels): the build has both kinds of round."""

    @staticmethod
    def create():
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.a = nn.Conv2d(3, 32, 3, padding=1)
                self.b = nn.Conv2d(32, 32, 3, padding=1, bias=False)
                self.c = nn.Conv2d(32, 24, 3, stride=2, padding=1)

            def forward(self, x):
                y = torch.relu(self.a(x))
                y = nn.functional.silu(self.b(y))
                return self.c(y)

        return Net().eval()


@pytest.mark.integration
@pytest.mark.slow
def test_tune_timeout_bounds_the_tuning_of_a_build(tmp_path):
    """``timeout_s`` bounds the build up to its final compile (which comes after the budget):
    tuning returns within 10% of it however many trials were asked for."""
    import torch

    from edgeopt.compile import BuildConfig, TuneConfig, build, export

    x = torch.zeros(1, 3, 16, 16)
    fp32 = export(_ThreeConvs.create(), None, x, out=tmp_path / "m.onnx").path
    timeout = 60.0
    tune = TuneConfig(trials=100000, timeout_s=timeout, db=str(tmp_path / "db"))
    b = build(fp32, BuildConfig(target="cpu", kernels="tvm", tune=tune), out=tmp_path / "tvm")
    tuning = b.record["metrics"]["tuning"]
    assert tuning["trials_after"] > 0 and tuning["hand_scheduled"] >= 2
    assert tuning["seconds"] <= timeout * 1.1, tuning
    load_output = __import__("edgeopt.runtimes", fromlist=["load"]).load(b.artifact).run([x.numpy()])
    assert load_output[0].shape == (1, 24, 8, 8)
