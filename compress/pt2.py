"""Models loaded from ``.pt2`` files (``torch.export`` programs) in torch-level steps.

A program's ``.module()`` is a flat ``torch.fx`` graph of ATen calls: a convolution is
``aten.conv2d(x, weight, bias, stride, padding, dilation, groups)`` on plain parameter
attributes, not an ``nn.Conv2d``, so channel pruning and factorization find no layer to edit.
``lift_program`` rewrites that graph into an ordinary ``nn.Module`` whose layers are real
modules again:

- ``aten.conv1d``/``conv2d``/``conv3d`` and non-transposed ``aten.convolution`` ->
  ``nn.Conv1d``/``Conv2d``/``Conv3d`` (stride, padding, dilation and groups from the call);
- ``aten.linear``, and ``aten.addmm(bias, x, weight.T)``/``aten.mm(x, weight.T)`` of
  decomposed programs -> ``nn.Linear``;
- inference batch norm (``aten.batch_norm`` with ``training=False``,
  ``aten._native_batch_norm_legit_no_training``, ``aten.native_batch_norm``) ->
  ``nn.BatchNorm1d``/``2d``/``3d`` with the running statistics, eps and momentum of the call;
- ``aten.layer_norm``/``aten.native_layer_norm`` -> ``nn.LayerNorm``.

A call is lifted only when its weight (and bias, running statistics) are parameters or buffers
read straight from the program and every use of those tensors is a call of the same layer (one
module is then called at every site, as the eager model did). A module takes its name from the
tensors' owner (``stem.0.weight`` -> module ``stem.0``), so layer names match the model the
program came from. Everything else stays as it is: ``cat``, ``mean``, ``flatten``, attention's
``scaled_dot_product_attention``, transposed convolutions, parameters used directly; they are
functions, and pruning treats them as it treats any function. The program's guard that pins
every input dimension to the example's is dropped, so the module runs any shape its ops accept
(a ``view`` to a fixed size in the graph still fixes that size). Lifting is checked: the
module's outputs must equal the program's on its example input (rtol 1e-5), else
``InputError``.

The lifted module is in eval mode; in train mode its BatchNorm layers use batch statistics
like any model's (dropout, removed by export in inference form, does not come back).

``refuse_exported`` is what is left of the earlier refusal: distillation trains on batches,
and a program whose graph fixes the batch size cannot run on them.

Example:
    >>> import torch
    >>> from edgeopt.compress.pt2 import lift_program
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)).eval()
    >>> lifted = lift_program(torch.export.export(net, (torch.randn(1, 3, 8, 8),)))
    >>> [type(m).__name__ for n, m in lifted.named_modules() if n]
    ['Conv2d', 'BatchNorm2d', 'Linear']
    >>> torch.allclose(lifted(torch.ones(2, 3, 8, 8)), net(torch.ones(2, 3, 8, 8)))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeopt.core.errors import InputError, first_line

LIFTED_ATTR = "edgeopt_lifted"  # set on lifted modules: what was lifted, what was left


def lift_program(program, example_inputs=None, *, rtol: float = 1e-5):
    """An ``nn.Module`` with real Conv/Linear/BatchNorm/LayerNorm layers computing what the
    ``torch.export`` program computes (module docstring).

    Args:
        program: a ``torch.export.ExportedProgram`` or its ``.module()`` (the program's module
            is not modified).
        example_inputs: a tuple of tensors the outputs are compared on; default the program's
            saved example inputs, else seeded inputs of the shapes its graph records.
        rtol: relative tolerance of that comparison.

    Returns the lifted module in eval mode. Its ``edgeopt_lifted`` attribute says how many
    layers of each kind were lifted and which ATen calls with parameters were left as they are.

    Example:
        >>> import torch
        >>> ep = torch.export.export(torch.nn.Conv1d(4, 8, 3, dilation=2), (torch.randn(1, 4, 16),))
        >>> m = lift_program(ep)
        >>> m.conv1d, m.edgeopt_lifted["layers"]
        (Conv1d(4, 8, kernel_size=(3,), stride=(1,), dilation=(2,)), {'Conv1d': 1})
    """
    import torch

    if isinstance(program, torch.export.ExportedProgram):
        if example_inputs is None and program.example_inputs:
            example_inputs = tuple(program.example_inputs[0])
        gm = program.module()
    elif isinstance(program, torch.fx.GraphModule):
        import copy

        gm = copy.deepcopy(program)
    else:
        raise InputError(f"lift_program needs a torch.export program or its .module(), got "
                         f"{type(program).__name__}")
    if example_inputs is None:
        example_inputs = _inputs_from_meta(gm)
    if example_inputs is None:
        raise InputError("lifting a torch.export program needs example inputs to check its outputs; "
                         "the program has none saved: pass example_inputs")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        with torch.no_grad():
            reference = gm(*args)
    except Exception as e:  # the program's shape guards raise AssertionError, its ops anything
        first = first_line(e, 160)
        shapes = [tuple(a.shape) for a in args if hasattr(a, "shape")]
        raise InputError(f"the torch.export program does not run on inputs of shape {shapes} "
                         f"({first}); pass inputs of the shape it was exported with") from None
    summary = _rewrite(gm)
    lifted = _ordinary(gm)
    setattr(lifted, LIFTED_ATTR, summary)
    # GraphModule's deepcopy (every step copies its input) keeps only the attributes listed
    # here; without the mark a lifted module would look like a bare program again.
    lifted.meta.setdefault("_user_preserved_attributes", {})[LIFTED_ATTR] = summary
    lifted.eval()
    with torch.no_grad():
        got = lifted(*args)
    problem = _compare(reference, got, rtol)
    if problem:
        raise InputError(f"lifting the program's layers into modules changed its outputs ({problem}); "
                         "pass the model as zoo:NAME or module.path:factory instead")
    return lifted


def is_exported_program_module(model) -> bool:
    """Whether ``model`` is the graph module of a ``torch.export`` program (ATen-level calls)
    that was not lifted by ``lift_program``."""
    return _aten_graph(model) and not hasattr(model, LIFTED_ATTR)


def is_program(model) -> bool:
    """Whether ``model`` came from a ``torch.export`` program, lifted or not."""
    return _aten_graph(model)


def lifted_if_exported(model, example_inputs=None):
    """``model`` itself, or, when it is a ``torch.export`` program or its bare module (API users
    may pass ``program`` or ``program.module()``), its lifted form checked on
    ``example_inputs`` (default: inputs of the shapes the program was exported with)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram) or is_exported_program_module(model):
        return lift_program(model, example_inputs)
    return model


def refuse_exported(model, step: str, batch) -> None:
    """Raise ``InputError`` when ``model`` came from a ``.pt2`` program that cannot run on
    training batches of ``step``: its graph fixes the batch size it was exported with. Checked
    on ``batch`` and on its first sample alone, since a run's last batch may be smaller. Other
    models, and programs that run on both, pass. ``model`` should be in eval mode (the check
    runs it, and train-mode BatchNorm would update its statistics)."""
    import torch

    if not is_program(model):
        return
    args = batch if isinstance(batch, tuple) else (batch,)
    tries = [args]
    if all(hasattr(a, "shape") and a.dim() and a.shape[0] > 1 for a in args):
        tries.append(tuple(a[:1] for a in args))
    try:
        with torch.no_grad():
            for t in tries:
                shape = tuple(t[0].shape) if t and hasattr(t[0], "shape") else "?"
                model(*t)
    except Exception as e:  # whatever op holds the fixed size raises its own error type
        first = first_line(e, 160)
        raise InputError(
            f"{step} runs the model on batches of shape {shape}, which this .pt2 program cannot take "
            f"({first}): its graph fixes the shape it was exported with; export it with a dynamic "
            "batch (torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)))"
            " or pass zoo:NAME or module.path:factory") from None


# -- the rewrite ----------------------------------------------------------------------------------

@dataclass
class _Site:
    """One ATen call that becomes a call of ``kind`` (a module class name)."""

    node: Any
    kind: str
    x: Any                       # the input node
    tensors: dict                # module attribute ("weight", "running_mean", ...) -> get_attr node
    config: tuple                # the call's non-tensor arguments, as module constructor values
    outputs: list = field(default_factory=list)  # nodes whose uses become the module's output
    extra: list = field(default_factory=list)    # nodes erased with the call (a weight transpose)

    def key(self) -> tuple:
        return (self.kind, self.config, tuple(sorted((k, n.target) for k, n in self.tensors.items())))


def _aten_graph(model) -> bool:
    import torch

    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
               for node in model.graph.nodes)


def _bind(node) -> dict:
    """The call's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args) and not a.kwarg_only:
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _tensor_attr(gm, value):
    """``value`` when it is a get_attr node of a tensor, else ``None``."""
    import torch

    if not isinstance(value, torch.fx.Node) or value.op != "get_attr":
        return None
    try:
        obj = _resolve(gm, value.target)
    except AttributeError:
        return None
    return value if isinstance(obj, torch.Tensor) else None


def _inputs_from_meta(gm):
    """Seeded inputs of the shapes and dtypes the program's placeholders record, or ``None``."""
    import torch

    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    if not vals or not all(isinstance(v, torch.Tensor) for v in vals):
        return None
    try:
        shapes = [tuple(int(d) for d in v.shape) for v in vals]
    except TypeError:  # a symbolic (dynamic) dimension has no single size to try
        return None
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=gen).to(v.dtype) if v.is_floating_point()
                 else torch.zeros(s, dtype=v.dtype) for s, v in zip(shapes, vals))


def _resolve(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _ints(value, n: int) -> tuple:
    """A schema int list (``[1]`` broadcasts) as an ``n``-tuple."""
    v = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(int(x) for x in (v * n if len(v) == 1 else v))


def _rank(node) -> int | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return val.dim() if hasattr(val, "dim") else None


def _only_item0(node) -> list | None:
    """The getitem(node, 0) users when those are the only users of a tuple-returning op."""
    import operator

    users = list(node.users)
    if not users or any(u.op != "call_function" or u.target is not operator.getitem or u.args[1] != 0
                        for u in users):
        return None
    return users


def _site(gm, node) -> _Site | None:
    """The lift of ``node``, or ``None`` when it is not a call this module lifts."""
    import torch

    aten = torch.ops.aten
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    t = node.target
    packet = t.overloadpacket
    if packet in (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution):
        a = _bind(node)
        w, b = _tensor_attr(gm, a["weight"]), _tensor_attr(gm, a.get("bias"))
        if w is None or (a.get("bias") is not None and b is None) or a.get("transposed", False):
            return None
        weight = _resolve(gm, w.target)
        dims = weight.dim() - 2
        if dims not in (1, 2, 3):
            return None
        if packet is aten.convolution and any(int(p) for p in a["output_padding"]):
            return None
        padding = a["padding"] if isinstance(a["padding"], str) else _ints(a["padding"], dims)
        groups = int(a["groups"])
        config = (weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                  _ints(a["stride"], dims), padding, _ints(a["dilation"], dims), groups, b is not None)
        tensors = {"weight": w, **({"bias": b} if b is not None else {})}
        return _Site(node, f"Conv{dims}d", a["input"], tensors, config, [node])
    if packet is aten.linear:
        a = _bind(node)
        w, b = _tensor_attr(gm, a["weight"]), _tensor_attr(gm, a.get("bias"))
        if w is None or (a.get("bias") is not None and b is None) or _resolve(gm, w.target).dim() != 2:
            return None
        out_f, in_f = _resolve(gm, w.target).shape
        tensors = {"weight": w, **({"bias": b} if b is not None else {})}
        return _Site(node, "Linear", a["input"], tensors, (in_f, out_f, b is not None), [node])
    if packet in (aten.addmm, aten.mm):
        # Decomposed linear on a 2-D input: addmm(bias, x, permute(weight, [1, 0])).
        a = _bind(node)
        if packet is aten.addmm and (a.get("beta", 1) != 1 or a.get("alpha", 1) != 1):
            return None
        x, wt = (a["mat1"], a["mat2"]) if packet is aten.addmm else (a["self"], a["mat2"])
        if not isinstance(wt, torch.fx.Node) or wt.op != "call_function" or len(wt.users) != 1:
            return None
        if not (wt.target == aten.t.default or (wt.target == aten.permute.default and list(wt.args[1]) == [1, 0])):
            return None
        w = _tensor_attr(gm, wt.args[0])
        b = _tensor_attr(gm, a["self"]) if packet is aten.addmm else None
        if w is None or _resolve(gm, w.target).dim() != 2 or (packet is aten.addmm and b is None):
            return None
        out_f, in_f = _resolve(gm, w.target).shape
        if b is not None and tuple(_resolve(gm, b.target).shape) != (out_f,):
            return None  # a bias broadcast over rows is not a Linear's bias
        tensors = {"weight": w, **({"bias": b} if b is not None else {})}
        return _Site(node, "Linear", x, tensors, (in_f, out_f, b is not None), [node], [wt])
    if packet in (aten.batch_norm, aten._native_batch_norm_legit_no_training, aten.native_batch_norm):
        a = _bind(node)
        if a.get("training", False):
            return None  # a program exported in training mode updates statistics in its graph
        if packet is aten.batch_norm:
            outputs = [node]
        else:
            outputs = _only_item0(node)
            if outputs is None:
                return None
        w, b = _tensor_attr(gm, a.get("weight")), _tensor_attr(gm, a.get("bias"))
        mean, var = _tensor_attr(gm, a.get("running_mean")), _tensor_attr(gm, a.get("running_var"))
        affine = a.get("weight") is not None
        if mean is None or var is None or (affine and (w is None or b is None)) \
                or (not affine and a.get("bias") is not None):
            return None
        rank = _rank(a["input"])
        kind = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}.get(rank)
        if kind is None:
            return None
        tensors = {"running_mean": mean, "running_var": var, **({"weight": w, "bias": b} if affine else {})}
        config = (_resolve(gm, mean.target).shape[0], float(a["eps"]), float(a["momentum"]), affine)
        return _Site(node, kind, a["input"], tensors, config, outputs)
    if packet in (aten.layer_norm, aten.native_layer_norm):
        a = _bind(node)
        outputs = [node] if packet is aten.layer_norm else _only_item0(node)
        w, b = _tensor_attr(gm, a.get("weight")), _tensor_attr(gm, a.get("bias"))
        if outputs is None or w is None or (a.get("bias") is not None and b is None):
            return None
        tensors = {"weight": w, **({"bias": b} if b is not None else {})}
        config = (tuple(int(d) for d in a["normalized_shape"]), float(a["eps"]), b is not None)
        return _Site(node, "LayerNorm", a["input"], tensors, config, outputs)
    return None


def _build(kind: str, config: tuple, tensors: dict):
    """The module of ``kind`` holding ``tensors`` (the program's own Parameter/buffer objects)."""
    import torch
    from torch import nn
    from torch.nn.utils import skip_init

    if kind.startswith("Conv"):
        cin, cout, k, stride, padding, dilation, groups, bias = config
        cls = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Conv3d": nn.Conv3d}[kind]
        m = skip_init(cls, cin, cout, k, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, bias=bias)
    elif kind == "Linear":
        m = skip_init(nn.Linear, *config)
    elif kind.startswith("BatchNorm"):
        features, eps, momentum, affine = config
        cls = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm3d": nn.BatchNorm3d}[kind]
        m = cls(features, eps=eps, momentum=momentum, affine=affine, device="meta")
        m.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
    else:
        shape, eps, bias = config
        m = nn.LayerNorm(shape, eps=eps, bias=bias, device="meta")
    for name, value in tensors.items():
        if name in m._parameters:
            # The program's parameters are nn.Parameters already; a frozen one (a constant)
            # is wrapped without gradients so the module stays what the program computes.
            m._parameters[name] = value if isinstance(value, nn.Parameter) else \
                nn.Parameter(value, requires_grad=False)
        else:
            m._buffers[name] = value
    return m.eval()


def _rewrite(gm) -> dict:
    """Replace every liftable call of ``gm.graph`` by a module call (in place); the summary."""
    import torch

    graph = gm.graph
    sites = [s for s in (_site(gm, n) for n in list(graph.nodes)) if s is not None]
    # Every use of a lifted tensor must be a call of that same layer: a weight also read by
    # another op (tied embeddings, a conv called with two strides) stays a plain attribute.
    keys_of: dict = {}
    for s in sites:
        for n in s.tensors.values():
            keys_of.setdefault(n.target, set()).add(s.key())
    site_nodes = {s.node for s in sites} | {e for s in sites for e in s.extra}
    valid = []
    for s in sites:
        ok = all(len(keys_of[n.target]) == 1 for n in s.tensors.values())
        for n in s.tensors.values():
            same = [g for g in graph.nodes if g.op == "get_attr" and g.target == n.target]
            ok = ok and all(u in site_nodes for g in same for u in g.users)
        if ok:
            valid.append(s)
    by_key: dict = {}
    for s in valid:
        by_key.setdefault(s.key(), []).append(s)
    used_names = {n for n, _ in gm.named_modules()}
    taken: set = set()
    counts: dict = {}
    replaced: dict = {}  # erased output node -> the module call standing for it
    for key, group in by_key.items():
        first = group[0]
        tensors = {k: _resolve(gm, n.target) for k, n in first.tensors.items()}
        module = _build(first.kind, first.config, tensors)
        name = _place(gm, module, first, used_names, taken)
        for s in group:
            with graph.inserting_before(s.node):
                call = graph.call_module(name, (replaced.get(s.x, s.x),))
            out_meta = s.outputs[0].meta
            call.meta.update({k: v for k, v in out_meta.items() if k in ("val", "tensor_meta", "stack_trace")})
            for out in s.outputs:
                out.replace_all_uses_with(call)
                replaced[out] = call
                if out is not s.node:
                    graph.erase_node(out)
            graph.erase_node(s.node)
            for e in s.extra:
                graph.erase_node(e)
        counts[first.kind] = counts.get(first.kind, 0) + 1
    for node in list(graph.nodes):
        # The program's shape guard pins every input dimension (the batch included) to the
        # example's; an ordinary module runs whatever shapes its ops accept.
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
        elif node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    left = sorted({f"{n.target.overloadpacket.__name__} at {n.name}" for n in graph.nodes
                   if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                   and any(a.op == "get_attr" for a in n.all_input_nodes)
                   and any(isinstance(_resolve(gm, a.target), torch.nn.Parameter)
                           for a in n.all_input_nodes if a.op == "get_attr")})
    graph.lint()
    return {"layers": counts, "left": left}


def _place(gm, module, site: _Site, used_names: set, taken: set) -> str:
    """Put ``module`` into ``gm`` under the name of its tensors' owner and return the name.

    ``stem.0.weight`` (+ ``stem.0.bias``) -> ``stem.0`` when that owner holds nothing else; an
    owner that holds more (``mha.in_proj_weight`` beside ``mha.out_proj``) gets a child named
    after the attribute (``mha.in_proj``)."""
    import torch

    weight = site.tensors.get("weight", next(iter(site.tensors.values()))).target
    owner, _, attr = weight.rpartition(".")
    consumed = {n.target for n in site.tensors.values()}
    if owner and owner not in taken:
        holder = gm.get_submodule(owner)
        state = {f"{owner}.{k}" for k, _ in holder.named_parameters(recurse=True, remove_duplicate=False)}
        state |= {f"{owner}.{k}" for k, _ in holder.named_buffers(recurse=True, remove_duplicate=False)}
        extra = state - consumed - {f"{owner}.num_batches_tracked"}
        nested = any(True for _ in holder.children())
        if not extra and not nested and type(holder) is torch.nn.Module:
            parent, _, child = owner.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, child, module)
            taken.add(owner)
            return owner
    base = attr[: -len("_weight")] if attr.endswith("_weight") and attr != "_weight" else \
        site.kind.lower()
    prefix = f"{owner}." if owner else ""
    name, i = f"{prefix}{base}", 1
    while name in used_names or name in taken or _exists(gm, name):
        i += 1
        name = f"{prefix}{base}_{i}"
    parent = gm.get_submodule(owner) if owner else gm
    parent.add_module(name.rpartition(".")[2], module)
    taken.add(name)
    return name


def _exists(gm, dotted: str) -> bool:
    try:
        _resolve(gm, dotted)
        return True
    except AttributeError:
        return False


def _ordinary(gm):
    """A plain ``torch.fx.GraphModule`` over ``gm``'s rewritten graph: no input-constraint
    hook, ``train()``/``eval()`` allowed, only the attributes the graph uses (so the lifted
    tensors are not held twice), and ordinary argument passing when the program takes
    positional tensors."""
    import torch
    from torch.fx.graph import CodeGen, _PyTreeCodeGen
    from torch.utils import _pytree as pytree

    graph = gm.graph
    codegen = graph._codegen
    if isinstance(codegen, _PyTreeCodeGen) and codegen.pytree_info is not None:
        info = codegen.pytree_info
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        in_spec = info.in_spec
        # ((x1, x2, ...), {}): positional tensors only, which plain argument passing covers.
        simple = (in_spec is not None and in_spec.num_children == 2
                  and in_spec.child(1).num_leaves == 0
                  and in_spec.child(0).num_leaves == len(placeholders)
                  and all(c.is_leaf() for c in in_spec.child(0).children()))
        if simple and info.out_spec is not None:
            output = next(n for n in graph.nodes if n.op == "output")
            flat = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
            structured = pytree.tree_unflatten(flat, info.out_spec)
            graph._codegen = CodeGen()
            output.args = (structured,)
    # Export's tracer class is recorded on the graph; a pickled GraphModule (torch.save, as
    # distributed distillation hands the model to its workers) re-traces its code with that
    # class on load, and export's cannot be built that way. The default tracer can.
    graph._tracer_cls = None
    graph._tracer_extras = None
    lifted = torch.fx.GraphModule(gm, graph, class_name="LiftedProgram")
    return lifted


def _compare(a, b, rtol: float) -> str | None:
    """``None`` when ``b`` has ``a``'s structure and values within ``rtol``; else what differs."""
    import torch
    from torch.utils import _pytree as pytree

    fa, sa = pytree.tree_flatten(a)
    fb, sb = pytree.tree_flatten(b)
    if sa != sb:
        return "the output structure changed"
    for x, y in zip(fa, fb):
        if isinstance(x, torch.Tensor):
            if not isinstance(y, torch.Tensor) or x.shape != y.shape:
                return "an output shape changed"
            # atol scaled to the output: values that round to zero differ by ulp-level noise.
            atol = rtol * float(x.abs().max()) if x.numel() and x.is_floating_point() else 0.0
            if not torch.allclose(x, y, rtol=rtol, atol=atol):
                return f"max abs difference {float((x - y).abs().max()):.3g}"
        elif x != y:
            return "a non-tensor output changed"
    return None
