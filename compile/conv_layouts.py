"""Layout conversion of convolutions that falls back per op where TVM cannot lower the result.

oneDNN's kernels (``onednn_offload``) and TVM's CUDA schedules want convolutions in NHWC; Relax's
``ConvertLayout`` converts the convs asked for and carries the new layout into every op whose
layout rule accepts it. Some of those ops then have no lowering in that layout: TVM's topi has
``conv2d_transpose`` in NCHW / IOHW only, so a transposed conv after an NHWC conv became an NHWC
``conv2d_transpose`` that ``LegalizeOps`` leaves as it is, and the build failed in VM codegen
(``CodeGenVM cannot emit ... R.nn.conv2d_transpose(... NHWC)``).

``convert_layouts`` therefore checks what it produced: it legalizes the converted module (a
check only, the result is dropped) and looks for ops that still carry a layout; each such op kind
is pinned to the model's own layout (``ConvertLayout`` puts layout transforms around it) and the
conversion runs again. A conversion that raises falls back to converting each conv on its own
between two transposes (``convert_each_conv``); an op kind that cannot be pinned, or a local
conversion TVM cannot lower either, leaves the module in the model's layouts. Every fallback is returned as one line for the build record.

Example:
    >>> from edgeopt.compile.conv_layouts import convert_layouts, nhwc_convs  # doctest: +SKIP
    >>> mod, fallbacks = convert_layouts(mod, nhwc_convs(kernel="OHWI"))  # doctest: +SKIP
    >>> fallbacks  # doctest: +SKIP
    ['relax.nn.conv2d_transpose kept NCHW/IOHW: TVM cannot lower it in NHWC/IOHW']
"""

from __future__ import annotations

from typing import Callable

#: Attributes of a conv-like op that name its layouts, in the order ``ConvertLayout`` takes them.
LAYOUT_ATTRS = ("data_layout", "kernel_layout", "out_layout")
#: How many times an op kind may be pinned and the conversion redone (each pins one kind or more).
MAX_ROUNDS = 4


def nhwc_convs(kernel: str = "OIHW", keep: Callable | None = None, conv1d: bool = True) -> Callable:
    """A layout chooser for ``convert_layouts``: conv2d in NHWC with weights in ``kernel``
    (``OIHW``: oneDNN reorders them itself; ``OHWI``: TVM's NHWC kernels), except the convs
    ``keep(call)`` says stay in NCHW; conv1d in NWC when ``conv1d``."""
    conv1d_kernel = kernel.replace("H", "")

    def choose(call, name: str):
        if name == "relax.nn.conv2d":
            if keep is not None and keep(call):
                return ["NCHW", "OIHW"]
            return ["NHWC", kernel]
        if name == "relax.nn.conv1d" and conv1d:
            return ["NWC", conv1d_kernel]
        return None

    return choose


def is_grouped_not_depthwise(call) -> bool:
    """A conv2d with groups > 1 whose groups hold more than one input channel each (OIHW weights:
    the I axis is the channels per group; depthwise has one)."""
    groups = int(call.attrs.groups)
    if groups == 1:
        return False
    weight = call.args[1].ty
    try:
        per_group = int(weight.shape[call.attrs.kernel_layout.index("I")])
    except Exception:  # a symbolic weight shape: treat it as grouped, the safe side
        return True
    return per_group != 1


def convert_layouts(mod, choose: Callable, target=None) -> tuple:
    """``(module, fallbacks)``: ``mod`` with every op ``choose(call, op_name)`` answers (a list of
    layouts for ``ConvertLayout``; ``None``: no preference) converted, the layouts carried through
    the ops between them, and ops that TVM cannot lower in the carried layout kept in the
    model's own. ``fallbacks`` holds one line per op kind kept (or for the whole conversion).
    ``target`` (a ``tvm.target.Target``) is the scope of the check's legalization."""
    import contextlib

    import tvm
    from tvm import relax

    pinned: dict[str, list[str]] = {}  # op kind -> the model's own layouts for it
    fallbacks: list[str] = []

    def layout_cb(call):  # ConvertLayout asks for every call of the original module
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if name in pinned:
            return {name: own_layouts(call)}
        layouts = choose(call, name)
        return {name: layouts} if layouts else {}

    for _ in range(MAX_ROUNDS):
        try:
            converted = relax.transform.ConvertLayout({}, layout_cb)(mod)
        except Exception as e:  # a layout rule that fails on a converted input
            why = error_summary(e)
            each = convert_each_conv(mod, choose, pinned)
            scope = target if target is not None else contextlib.nullcontext()
            try:
                with scope:
                    left = ops_left_unlowered(relax.transform.LegalizeOps()(each))
            except Exception:  # the check itself failed
                left = {"": []}
            if left:
                fallbacks.append(f"layout conversion failed ({why}); convs keep the model's layouts")
                return mod, fallbacks
            fallbacks.append(f"layout conversion failed ({why}); each conv converted on its own, "
                             "with a transpose on each side")
            return each, fallbacks
        scope = target if target is not None else contextlib.nullcontext()
        try:
            with scope:
                unlowered = ops_left_unlowered(relax.transform.LegalizeOps()(converted))
        except Exception as e:  # the check itself failed: TVM will say more when it builds
            fallbacks.append(f"layout check failed ({error_summary(e)}); convs keep the model's layouts")
            return mod, fallbacks
        if not unlowered:
            return converted, fallbacks
        for name, layouts in unlowered.items():
            own = _original_layouts(mod, name)
            if name in pinned or own is None:  # pinned and still failing, or nothing to pin
                fallbacks.append(f"{name} cannot be lowered in {'/'.join(layouts)}; "
                                 "convs keep the model's layouts")
                return mod, fallbacks
            pinned[name] = own
            fallbacks.append(f"{name} kept {'/'.join(own)}: TVM cannot lower it in {'/'.join(layouts)}")
    fallbacks.append(f"layouts still unlowered after {MAX_ROUNDS} rounds; convs keep the model's layouts")
    return mod, fallbacks


def convert_each_conv(mod, choose: Callable, pinned: dict | None = None):
    """``mod`` with every conv2d / conv1d that ``choose`` wants in other layouts computed in them
    between two transposes (``permute_dims`` to the new data layout and back; the weights
    permuted too where the kernel layout changes): what ``convert_layouts`` falls back to when
    Relax's ``ConvertLayout`` fails on a module (silero-vad's graph: ``std::bad_alloc``). Nothing
    is carried between ops, but each conv reaches the kernels that want its layout. Op kinds in
    ``pinned`` are left alone."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    convs = {"relax.nn.conv2d": relax.op.nn.conv2d, "relax.nn.conv1d": relax.op.nn.conv1d}

    @mutator
    class EachConv(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
            if name not in convs or name in (pinned or {}):
                return call
            layouts = choose(call, name)
            own = own_layouts(call)
            if not layouts or list(layouts[:2]) == own:
                return call
            data, kernel = layouts[:2]
            src, own_kernel = own
            out = str(call.attrs.out_layout) or src
            if sorted(data) != sorted(src) or sorted(kernel) != sorted(own_kernel):
                return call  # (a blocked layout such as NCHW16c is ConvertLayout's only)
            x = relax.op.permute_dims(call.args[0], [src.index(c) for c in data])
            w = call.args[1]
            if kernel != own_kernel:
                w = relax.op.permute_dims(w, [own_kernel.index(c) for c in kernel])
            a = call.attrs
            out_dtype = str(a.out_dtype) if str(a.out_dtype) not in ("", "void", "None") else None
            new = convs[name](x, w, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
                              data_layout=data, kernel_layout=kernel, out_layout=data, out_dtype=out_dtype)
            return relax.op.permute_dims(new, [data.index(c) for c in out])

    # a new module: assigning into ``mod`` would change the caller's, which convert_layouts
    # returns unchanged when this conversion does not lower either
    updated = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            updated[gv] = EachConv(mod).visit_expr(func)
    return updated


def own_layouts(call) -> list[str]:
    """The layouts ``call`` has, as ``ConvertLayout`` takes them: its data and kernel layouts
    (those it names; the output follows the data)."""
    return [str(getattr(call.attrs, a)) for a in LAYOUT_ATTRS if hasattr(call.attrs, a)][:2]


def ops_left_unlowered(mod) -> dict[str, list[str]]:
    """{op name: its layouts} for every op of a legalized ``mod`` that has a legalization and a
    layout but is still there: TVM had no kernel for it in that layout."""
    import tvm
    from tvm import relax

    found: dict[str, list[str]] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            op = expr.op
            if op.get_attr("FLegalize") is not None and expr.attrs is not None \
                    and any(hasattr(expr.attrs, a) for a in LAYOUT_ATTRS):
                found.setdefault(op.name, own_layouts(expr))

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _original_layouts(mod, name: str) -> list[str] | None:
    """The layouts the first ``name`` call of ``mod`` has, or None when it names none."""
    import tvm
    from tvm import relax

    found: list = []

    def visit(expr):
        if not found and isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
                and expr.op.name == name and expr.attrs is not None:
            layouts = own_layouts(expr)
            if layouts:
                found.append(layouts)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found[0] if found else None


def error_summary(e: BaseException, limit: int = 240) -> str:
    """One line for a record from a TVM error: its last line that names an error (TVM's messages
    end in the IR that failed, or in "(... 152 lines skipped ...)"), else its last line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    named = [ln for ln in lines if ("Error" in ln or "Check failed" in ln) and not ln.startswith("Error in pass")]
    line = (named or lines or [type(e).__name__])[-1]
    return line if len(line) <= limit else line[:limit - 3] + "..."
