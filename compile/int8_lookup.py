"""Relax rewrite: the float chain between two int8 values, as one 256-entry lookup table.

A QDQ model leaves every activation that no int8 kernel absorbs between two quantization pairs,
and TVM imports it as float arithmetic on the dequantized values. A SiLU after an int8 conv
(YOLOv8) is ``dequantize -> sigmoid -> quantize -> dequantize -> multiply -> quantize``; Paddle's
HardSwish is four such pairs (``add 3``, the clip folded into a quantize, ``multiply``, ``divide
6``). Each is a function of one int8 (or uint8) tensor alone, element by element, so its whole
result is one of 256 values per input value: this pass evaluates the chain once on all 256
inputs (with TVM, so every rounding and clip of the chain is the one the compiled model would
compute) and replaces it by ``table[x]``, one pass over bytes instead of several float
passes and a ``expf`` or polynomial per element. onnxruntime does the same for its
QLinearSigmoid / QLinearLeakyRelu kernels.

A chain qualifies when it ends in a ``quantize`` to int8/uint8, every op in it is elementwise
(``LOOKUP_OPS``), every constant it reads is a single number (per-channel constants would make
it a function of the position too) and all its ``dequantize`` leaves read the same int8 tensor
with single-number scale and zero point; quantize/dequantize pairs inside it are followed
through. Results are exact: the table holds what the chain computes.

Example:
    >>> from tvm import relax  # doctest: +SKIP
    >>> mod, tables = int8_lookup_tables(mod)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

#: Relax ops computed element by element (with single-number constants broadcast).
LOOKUP_OPS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
    "relax.power", "relax.clip", "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu",
    "relax.nn.leakyrelu", "relax.nn.softplus", "relax.sigmoid", "relax.tanh", "relax.exp", "relax.log",
    "relax.sqrt", "relax.rsqrt", "relax.negative", "relax.abs", "relax.erf", "relax.floor", "relax.ceil",
    "relax.round", "relax.sign", "relax.astype", "relax.quantize", "relax.dequantize"})

_INT8 = ("int8", "uint8")


def int8_lookup_tables(mod):
    """``(new_mod, count)``: every qualifying int8 -> int8 elementwise chain of ``mod``'s Relax
    functions replaced by a lookup table (``count`` of them)."""
    from tvm import relax

    count = 0
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        chains = find_chains(func)
        if not chains:
            continue
        rewriter = _make_rewriter()(mod, chains, evaluate_chains(chains))
        rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        mod = rewriter.builder_.get()  # with the lookups' PrimFuncs
        count += len(chains)
    return relax.transform.DeadCodeElimination()(mod), count


def _op_name(value) -> str | None:
    import tvm

    if isinstance(value, tvm.ir.expr.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def _dtype(expr) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def _shape(expr) -> list | None:
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    return [int(d) if hasattr(d, "value") else d for d in shape.values]


def _single_number(expr) -> bool:
    """A constant of one element (the chain's scales, zero points, ``3.0``, ``6.0`` ...)."""
    import tvm

    if not isinstance(expr, tvm.ir.expr.Constant):
        return False
    value = getattr(expr, "value", None)  # a tensor constant holds a tvm Tensor, a scalar a number
    return not hasattr(value, "numpy") or value.numpy().size == 1


class Chain:
    """One chain (``find_chains`` keys it by its last ``quantize``): the int8 tensor it reads
    (``leaf``), the variables it computes (``members``, its end included) and the function's
    bindings (``values``: variable -> expression) to read them from."""

    def __init__(self, leaf, members, values):
        self.leaf, self.members, self.values = leaf, members, values


def find_chains(func) -> dict:
    """{end variable: Chain} of ``func``'s qualifying chains, those computed only to feed a
    longer chain left out."""
    from tvm import relax

    values, users = {}, {}
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                values[b.var] = b.value
                for arg in getattr(b.value, "args", []):
                    if isinstance(arg, relax.Var):
                        users.setdefault(arg, []).append(b.var)

    def leaves_of(expr, members) -> set | None:
        """The int8 tensors ``expr`` is an elementwise function of, or None (not one)."""
        if _single_number(expr):
            return set()
        if not isinstance(expr, relax.Var) or expr not in values:
            return None
        value, name = values[expr], _op_name(values[expr])
        if name == "relax.dequantize" and _dtype(value.args[0]) in _INT8 and \
                all(_single_number(a) for a in value.args[1:3]):
            members.add(expr)
            inner = value.args[0]
            q = values.get(inner)
            if _op_name(q) == "relax.quantize":  # follow a quantize/dequantize pair through
                deeper: set = set()
                found = leaves_of(inner, deeper)
                if found is not None and len(found) == 1:
                    members |= deeper
                    return found
            return {inner}
        if name not in LOOKUP_OPS or (name == "relax.quantize" and not
                                      all(_single_number(a) for a in value.args[1:3])):
            return None
        found: set = set()
        for arg in value.args:
            leaves = leaves_of(arg, members)
            if leaves is None:
                return None
            found |= leaves
        members.add(expr)
        return found

    chains = {}
    for var, value in values.items():
        if _op_name(value) != "relax.quantize" or str(value.attrs.out_dtype) not in _INT8:
            continue
        members: set = set()
        leaves = leaves_of(var, members)
        if leaves is None or len(leaves) != 1:
            continue
        leaf = next(iter(leaves))
        if _shape(leaf) is None or _shape(leaf) != _shape(var):
            continue
        chains[var] = Chain(leaf, members, values)
    # a chain whose every reader is inside a longer chain is computed by that one's table
    inner = set().union(*(chain.members - {end} for end, chain in chains.items()))
    inside = set().union(*(chain.members for chain in chains.values()))
    return {end: chain for end, chain in chains.items()
            if not (end in inner and all(u in inside for u in users.get(end, [])))}


def evaluate_chains(chains: dict) -> dict:
    """{end variable: the chain's output (numpy, 256 values) for every value of its int8
    input, in order (-128..127 for int8, 0..255 for uint8)}, computed by one TVM module."""
    import tvm
    from tvm import relax

    ends = list(chains)
    bb = relax.BlockBuilder()
    inputs = {dtype: relax.Var(dtype, relax.TensorType((256,), dtype)) for dtype in _INT8}
    with bb.function("main", [inputs["int8"], inputs["uint8"]]):
        with bb.dataflow():
            outs = []
            for end in ends:
                chain = chains[end]
                rank = len(_shape(chain.leaf))
                x = bb.emit(relax.op.reshape(inputs[_dtype(chain.leaf)], [1] * (rank - 1) + [256]))
                out = _copy(bb, end, chain, {chain.leaf: x})
                outs.append(bb.emit(relax.op.reshape(out, [256])))
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    executable = tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    tables = vm["main"](tvm.runtime.tensor(np.arange(-128, 128, dtype=np.int8)),
                        tvm.runtime.tensor(np.arange(256, dtype=np.uint8)))
    return {end: tables[i].numpy() for i, end in enumerate(ends)}


def _copy(bb, expr, chain, memo):
    """Emit ``expr`` of the chain again into ``bb``, reading ``memo``'s stand-ins."""
    from tvm import relax

    if not isinstance(expr, relax.Var):
        return expr  # a single-number constant
    if expr not in memo:
        value = chain.values[expr]
        args = [_copy(bb, a, chain, memo) for a in value.args]
        memo[expr] = bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args))
    return memo[expr]


def lookup(x, table, offset: int):
    """TE: ``table[x + offset]`` element by element (``offset`` 128 for int8 inputs)."""
    from tvm import te

    return te.compute(x.shape, lambda *i: table[x(*i).astype("int32") + offset], name="int8_lookup")


def _make_rewriter():
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class LookupTables(PyExprMutator):
        def __init__(self, mod, chains, tables):
            super().__init__(mod)
            self.chains, self.tables = chains, tables

        def visit_var_binding_(self, binding):
            chain = self.chains.get(binding.var)
            if chain is None:
                return super().visit_var_binding_(binding)
            table = self.tables[binding.var]
            # one loop that reads a byte and writes its table entry (relax's take after an
            # astype stays two kernels: an indexed load makes TVM's fusion treat take as opaque)
            call = self.builder_.call_te(lookup, self.visit_expr(chain.leaf), relax.const(table, str(table.dtype)),
                                         128 if _dtype(chain.leaf) == "int8" else 0, primfunc_name_hint="int8_lookup")
            new_var = (self.builder_.emit(call) if isinstance(binding.var, relax.DataflowVar)
                       else self.builder_.emit_output(call))
            self.set_var_remap(binding.var, new_var)

    return LookupTables
