"""A reshape, transpose or gather between two quantization pairs of one scale and zero point runs
on the int8 tensor itself: bit for bit what the float round trip computes, and a pair whose two
sides differ (scale, zero point or dtype) is left as it is."""

import numpy as np

from edgeopt.compile.int8_passthrough import int8_passthrough


def _moves_module():
    """One function over x (uint8, (1, 4, 8, 8)) and y (int8, same shape), returning
    - x reshaped and transposed between two pairs of one scale (two moves, one rewrite),
    - y gathered on axis 1 between two pairs of one scale (one rewrite),
    - x reshaped into a quantize of another scale (kept: a requantization),
    - x reshaped into an int8 quantize of the same numbers (kept: another dtype)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "uint8"))
    y = relax.Var("y", relax.TensorType((1, 4, 8, 8), "int8"))
    f32 = lambda v: relax.const(v, "float32")  # noqa: E731
    with bb.function("main", [x, y]):
        with bb.dataflow():
            dx = bb.emit(relax.op.dequantize(x, f32(0.05), relax.const(128, "uint8"), axis=1))
            flat = bb.emit(relax.op.reshape(dx, (1, 4, 64)))
            turned = bb.emit(relax.op.permute_dims(flat, [0, 2, 1]))
            out1 = bb.emit(relax.op.quantize(turned, f32(0.05), relax.const(128, "uint8"), axis=1, out_dtype="uint8"))
            dy = bb.emit(relax.op.dequantize(y, f32(0.04), relax.const(-3, "int8"), axis=1))
            picked = bb.emit(relax.op.take(dy, relax.const(np.array([2, 0], dtype=np.int64)), axis=1))
            out2 = bb.emit(relax.op.quantize(picked, f32(0.04), relax.const(-3, "int8"), axis=1, out_dtype="int8"))
            out3 = bb.emit(relax.op.quantize(flat, f32(0.1), relax.const(128, "uint8"), axis=1, out_dtype="uint8"))
            shifted = bb.emit(relax.op.quantize(flat, f32(0.05), relax.const(0, "int8"), axis=1, out_dtype="int8"))
            result = bb.emit_output(relax.Tuple([out1, out2, out3, shifted]))
        bb.emit_func_output(result)
    return bb.get()


def _run(mod, x, y):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return [o.numpy() for o in vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(y))]


def test_moves_run_on_int8_data_with_identical_results():
    mod = _moves_module()
    new, count = int8_passthrough(mod)
    text = new["main"].script(show_meta=False)
    assert count == 2
    # left: the dequantize feeding the two kept quantizes, and those two quantizes
    assert text.count("R.dequantize") == 1 and text.count("R.quantize") == 2
    assert "R.reshape(x, " in text and "R.take(y, " in text  # the moves read the int8 inputs
    rng = np.random.default_rng(0)
    x = rng.permutation(np.arange(256, dtype=np.uint8)).reshape(1, 4, 8, 8)  # every value
    y = rng.permutation(np.arange(-128, 128, dtype=np.int8)).reshape(1, 4, 8, 8)
    expected, got = _run(mod, x, y), _run(new, x, y)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        np.testing.assert_array_equal(g, e)
