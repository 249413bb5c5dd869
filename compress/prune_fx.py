"""edgeopt's own structured pruning engine: channel groups found by tracing with ``torch.fx``.

``prune_with_fx`` is the ``"edgeopt"`` engine of ``edgeopt.compress.prune`` (Torch-Pruning's is
``prune_tp``). It groups channels that must be removed together: a convolution's (1d or 2d) or
Linear's outputs, the BatchNorm/LayerNorm after it, activations, pools and spatial means (which
keep channels), depthwise convolutions (whose channels pass through), every tensor joined to
them by a residual ``add`` or an elementwise product of equal widths (one group across the
chain), and the consumers that read them: the next layer's input channels, or a ``Linear`` after
``flatten`` (each channel owns its spatial features). Any op it does not understand leaves its
inputs *and its output* whole, so a later add can never join a pruned tensor to an unpruned one.
It handles a Linear over a transposed (token) axis, where Torch-Pruning fails. Models lifted
from ``.pt2`` programs call ATen ops, read like the torch functions they stand for; a reshape to
sizes the program wrote as numbers keeps the channels before it whole.

This module prunes in place and checks nothing: ``prune`` runs it on a copy, checks the
invariant and falls back or refuses.

Example:
    >>> import torch
    >>> from edgeopt.compress.prune_fx import prune_with_fx
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> prune_with_fx(net, (torch.zeros(1, 1, 8, 8),), 0.5)["groups"]
    [{'layers': ['0'], 'channels_before': 8, 'channels_after': 4}]
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

from edgeopt.core.errors import InputError, first_line

@dataclass
class _Group:
    size: int
    producers: list = field(default_factory=list)   # (module name) conv/linear producing channels
    norms: list = field(default_factory=list)       # BatchNorm/LayerNorm module names
    depthwise: list = field(default_factory=list)   # depthwise conv module names
    consumers: list = field(default_factory=list)   # (module name, spatial) reading the channels
    blocked: list = field(default_factory=list)     # reasons the group cannot be pruned


class _Groups:
    """Union-find over channel groups."""

    def __init__(self):
        self.parent: list[int] = []
        self.data: list[_Group] = []

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.data.append(_Group(size))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def get(self, g: int) -> _Group:
        return self.data[self.find(g)]

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.data[ra], self.data[rb]
        if ga.size != gb.size:
            ga.blocked.append(f"joined to a tensor with {gb.size} channels at {where}")
        for f in ("producers", "norms", "depthwise", "consumers", "blocked"):
            getattr(ga, f).extend(getattr(gb, f))
        self.parent[rb] = ra
        return ra

    def roots(self) -> list[int]:
        return sorted({self.find(i) for i in range(len(self.parent))})


PASS_MODULES = ("ReLU", "ReLU6", "Hardtanh", "SiLU", "GELU", "Sigmoid", "Hardswish", "Identity",
                "Dropout", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "LeakyReLU", "Tanh",
                "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d", "Hardsigmoid", "Mish")
PASS_FUNCTIONS = ("relu", "relu6", "hardtanh", "silu", "gelu", "sigmoid", "hardswish", "dropout",
                  "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "leaky_relu", "contiguous",
                  "relu_", "clone", "tanh", "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d",
                  "hardsigmoid", "mish")
HARMLESS = ("size", "dim", "shape", "sym_size", "sym_numel")  # reading a shape does not constrain channels
REDUCTIONS = ("mean", "sum", "amax", "amin")


def _analyse(model, args) -> tuple[_Groups, dict]:
    """Trace ``model`` and build its channel groups. Returns the groups and, per traced node
    that carries channels, ``(group, layout, spatial)``: layout "nchw" has channels on axis 1
    (Conv1d/Conv2d tensors), "feat" on the last axis (Linear), "flat" is a flattened "nchw"."""
    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    heads = _attention_modules(model)

    class Tracer(fx.Tracer):
        """Keeps head-structured attention modules whole in the graph: their heads are
        pruned as units (``_prune_heads``), their reshapes into heads are not channel ops."""

        def is_leaf_module(self, m, qualname):
            return qualname in heads or super().is_leaf_module(m, qualname)

    try:
        gm = fx.GraphModule(model, Tracer().trace(model))
    except Exception as e:
        raise InputError(f"structured pruning needs a torch.fx-traceable model; tracing "
                         f"{type(model).__name__} failed: {first_line(e)}") from None
    ShapeProp(gm).propagate(*args)
    groups = _Groups()
    info: dict = {}  # node -> (group id, layout, spatial)
    convs = (torch.nn.Conv1d, torch.nn.Conv2d)

    def shape(node):
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def block_inputs(node, reason):
        for a in node.all_input_nodes:
            if a in info:
                groups.get(info[a][0]).blocked.append(reason)

    def passthrough(node, src):
        if src in info:
            info[node] = info[src]

    def opaque(node, reason):
        """An output the tracer cannot follow: its channels are a group of their own that is
        never pruned, so anything joined to it later (an add) is kept whole too."""
        s = shape(node)
        if s is not None and len(s) >= 1:
            feat = len(s) <= 3  # (F,), (N, F), (N, T, F); 4-D and up are (N, C, H, W, ...)
            g = groups.new(s[-1] if feat else s[1])
            groups.get(g).blocked.append(reason)
            info[node] = (g, "feat" if feat else "nchw", 1)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            opaque(node, "model input")
            continue
        if node.op == "get_attr":
            opaque(node, f"parameter {node.target} used directly")
            continue
        if node.op == "output":
            block_inputs(node, "model output")
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            kind = type(m).__name__
            name = node.target
            if name in heads:
                # (N, T, D) -> qkv -> heads -> proj -> (N, T, D'): qkv reads the input's
                # features, proj produces new ones; the heads in between go by _prune_heads.
                if src in info and info[src][1] == "feat":
                    groups.get(info[src][0]).consumers.append((f"{name}.qkv", 1))
                else:
                    block_inputs(node, f"attention {name} reads a non-feature layout")
                g = groups.new(m.proj.out_features)
                groups.get(g).producers.append(f"{name}.proj")
                info[node] = (g, "feat", 1)
            elif isinstance(m, convs):
                g_in = info.get(src, (None,))[0]
                if m.groups == 1:
                    if g_in is not None:
                        groups.get(g_in).consumers.append((name, 1))
                    g = groups.new(m.out_channels)
                    groups.get(g).producers.append(name)
                    info[node] = (g, "nchw", 1)
                elif m.groups == m.in_channels == m.out_channels and g_in is not None:
                    groups.get(g_in).depthwise.append(name)
                    info[node] = info[src]
                else:
                    block_inputs(node, f"grouped convolution {name} (groups={m.groups})")
                    opaque(node, f"produced by grouped convolution {name}")
            elif isinstance(m, torch.nn.Linear):
                if src in info:
                    g_in, layout, spatial = info[src]
                    if layout in ("flat", "feat"):
                        groups.get(g_in).consumers.append((name, spatial if layout == "flat" else 1))
                    else:
                        groups.get(g_in).blocked.append(f"read by {name} without flatten")
                g = groups.new(m.out_features)
                groups.get(g).producers.append(name)
                info[node] = (g, "feat", 1)  # features on the last axis, also for (N, tokens, F)
            elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) and src in info \
                    and info[src][1] in ("nchw", "feat") and (info[src][1] == "nchw" or len(shape(src) or ()) == 2):
                groups.get(info[src][0]).norms.append(name)
                passthrough(node, src)
            elif isinstance(m, torch.nn.LayerNorm) and src in info and info[src][1] == "feat" \
                    and len(m.normalized_shape) == 1:
                # LayerNorm over the features: its affine parameters follow the kept features.
                groups.get(info[src][0]).norms.append(name)
                passthrough(node, src)
            elif kind in PASS_MODULES:
                passthrough(node, src)
            elif isinstance(m, torch.nn.Flatten):
                _flatten(node, src, info, groups, shape, f"module {name}")
            else:
                block_inputs(node, f"module {name} ({kind}) is not supported by channel pruning")
                opaque(node, f"output of module {name} ({kind})")
            if node not in info:
                opaque(node, f"output of module {name} ({kind})")
            continue
        # call_function / call_method
        target = node.target
        aten = isinstance(target, torch._ops.OpOverload)
        # A model lifted from a .pt2 program calls ATen ops (aten.relu.default): the op's
        # name is its overload packet's (relu), and its arguments follow the torch function's.
        tname = target.overloadpacket.__name__ if aten else \
            target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if tname in HARMLESS or target is getattr:
            continue
        if aten and tname in ("view", "reshape", "_unsafe_view") and not _flattens(node, shape):
            # The exported graph holds the sizes as numbers: pruning the channels would
            # leave them wrong, so a reshape other than a same-shape one or (N, -1) is a wall.
            block_inputs(node, f"{tname} at {node.name} fixes the shape {list(node.args[1])} "
                               "in the exported graph")
        elif tname in PASS_FUNCTIONS:
            passthrough(node, src)
        elif target in (operator.add, operator.iadd, torch.add, operator.mul, torch.mul) \
                or tname in ("add", "add_", "mul", "mul_"):
            _join(node, [a for a in node.args if isinstance(a, fx.Node)], info, groups, shape)
        elif tname in REDUCTIONS:
            _reduce(node, src, info, groups, shape)
        elif tname in ("flatten", "view", "reshape", "getitem", "unsqueeze"):
            _flatten(node, src, info, groups, shape, f"{tname} at {node.name}")
        else:
            block_inputs(node, f"op {tname} at {node.name} is not supported by channel pruning")
        if node not in info:
            opaque(node, f"output of op {tname} at {node.name}")
    return groups, info


def _flattens(node, shape) -> bool:
    """An ATen view/reshape that pruning cannot invalidate: same shape, or ``(N, -1)``."""
    src = node.args[0]
    sizes = list(node.args[1]) if len(node.args) > 1 else []
    return shape(node) == shape(src) or (len(sizes) == 2 and sizes[1] == -1)


def _join(node, tensors, info, groups, shape) -> None:
    """Elementwise add/mul: every operand with the output's channel count shares one group;
    a broadcast operand (one channel) leaves the group as it is."""
    out = shape(node)
    if not tensors or out is None:
        return
    src = tensors[0]
    tensors = [t for t in tensors if t in info]
    if not tensors:
        return
    g = None
    for t in tensors:
        s = shape(t)
        layout = info[t][1]
        axis = 1 if layout == "nchw" else -1
        if s is None or len(s) < 2 or s[axis] == 1 and out[axis] != 1:
            continue  # a broadcast scale: its single channel is not tied to the others
        if s != out and layout == "feat" and len(s) != len(out):
            groups.get(info[t][0]).blocked.append(f"broadcast join of different ranks at {node.name}")
        g = info[t][0] if g is None else groups.union(g, info[t][0], node.name)
        if layout != info[tensors[0]][1]:
            groups.get(g).blocked.append(f"join of different layouts at {node.name}")
    if g is not None:
        info[node] = (g, *info[tensors[0]][1:])
    elif src in info:
        info[node] = info[src]


def _reduce(node, src, info, groups, shape) -> None:
    """mean/sum/amax over spatial axes keeps channels ((N, C, ...) -> (N, C) is "feat")."""
    if src not in info:
        return
    g, layout, _ = info[src]
    s_in, s_out = shape(src), shape(node)
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    if s_in is None or s_out is None or not dims:
        groups.get(g).blocked.append(f"reduction at {node.name} changes the channel layout")
        return
    dims = {d % len(s_in) for d in dims}
    if layout == "nchw" and 0 not in dims and 1 not in dims:
        info[node] = (g, "feat" if len(s_out) == 2 else "nchw", 1)
    elif layout == "feat" and 0 not in dims and len(s_in) - 1 not in dims:
        info[node] = (g, "feat", 1)
    else:
        groups.get(g).blocked.append(f"reduction at {node.name} changes the channel layout")


def _flatten(node, src, info, groups, shape, where: str) -> None:
    """(N, C, *S) -> (N, C*prod(S)): channel c owns features [c*S, (c+1)*S); (N, C) -> (N, C, 1..)
    and (N, C, 1, 1) -> (N, C) keep the channel axis; same-shape views are no-ops."""
    if src not in info:
        return
    g, layout, _ = info[src]
    s_in, s_out = shape(src), shape(node)
    if s_in is None or s_out is None:
        groups.get(g).blocked.append(f"{where} changes the channel layout")
        return
    spatial = int(np.prod(s_in[2:])) if len(s_in) >= 3 else 1
    if s_in == s_out:
        info[node] = info[src]
    elif layout == "nchw" and len(s_in) >= 3 and len(s_out) == 2 and s_out[1] == s_in[1] * spatial:
        info[node] = (g, "flat" if spatial > 1 else "feat", spatial)
    elif layout == "feat" and len(s_in) == 2 and len(s_out) >= 3 and s_out[:2] == s_in \
            and all(d == 1 for d in s_out[2:]):
        info[node] = (g, "nchw", 1)
    elif layout == "nchw" and len(s_out) > len(s_in) >= 3 and s_out[:len(s_in)] == s_in \
            and all(d == 1 for d in s_out[len(s_in):]):
        # (N, C, 1) -> (N, C, 1, 1): ATen graphs unsqueeze one axis at a time.
        info[node] = info[src]
    else:
        groups.get(g).blocked.append(f"{where} changes the channel layout")


def prune_with_fx(model, args: tuple, amount: float, *, norm: str = "l1", scope: str = "global",
                  min_keep: float = 0.1, skip: tuple = (), weights: dict | None = None,
                  round_to: int | None = None) -> dict:
    """Prune ``model`` in place: ``amount`` of each channel group's channels (``scope`` local) or
    of all of them by one threshold (global, each group keeping ``min_keep``), ranked by the
    ``norm`` ("l1" or "l2") of their filters normalized per group and scaled by ``weights``
    (module name -> sensitivity, for budgets); the kept count is a multiple of ``round_to``.
    Groups holding a module named in ``skip`` stay whole. Attention modules lose whole heads.
    Returns the record's details: ``groups`` (channels before/after), ``left_whole`` (with the
    reason) and ``heads``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> prune_with_fx(net, (torch.zeros(1, 1, 8, 8),), 0.5)["groups"][0]["channels_after"]
        4
    """
    import torch

    groups, _ = _analyse(model, args)
    modules = dict(model.named_modules())
    prunable, left = [], []
    for root in groups.roots():
        g = groups.data[root]
        members = g.producers + g.norms + g.depthwise
        skipped = [n for n in members if n in skip]
        if skipped:
            g.blocked.append(f"{', '.join(skipped)} listed in skip")
        if not g.producers:
            continue
        if g.blocked:
            left.append({"layers": g.producers, "channels": g.size, "reason": "; ".join(dict.fromkeys(g.blocked))})
            continue
        scores = np.zeros(g.size)
        for name in g.producers:
            w = modules[name].weight.detach().reshape(g.size, -1).abs()
            n = w.sum(1) if norm == "l1" else w.pow(2).sum(1).sqrt()
            n = n.double().numpy()
            scores += n / max(float(n.mean()), 1e-12)
        scores /= len(g.producers)
        if weights:  # sensitivity-weighted global ranking (budgets)
            scores *= float(np.mean([weights.get(n, 1.0) for n in g.producers]))
        prunable.append((g, scores))
    keep = _choose(prunable, amount, scope, min_keep, round_to)
    heads = _prune_heads(model, modules, amount, norm, min_keep, skip, round_to)
    kept = []
    with torch.no_grad():
        for (g, _), idx in zip(prunable, keep):
            if len(idx) < g.size:
                _apply(modules, g, torch.as_tensor(idx, dtype=torch.long))
            kept.append({"layers": g.producers, "channels_before": g.size, "channels_after": len(idx)})
    return {"groups": kept, "left_whole": left, **({"heads": heads} if heads else {})}


def _attention_modules(model) -> set:
    """Names of attention modules with whole-head structure: ``heads``/``head_dim`` attributes,
    a fused ``qkv`` Linear (3 * heads * head_dim outputs) and a ``proj`` Linear reading
    heads * head_dim features (the zoo's ``Attention``, timm-style blocks)."""
    import torch

    out = set()
    for name, m in model.named_modules():
        h, d = getattr(m, "heads", None), getattr(m, "head_dim", None)
        qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
        if isinstance(h, int) and isinstance(d, int) and isinstance(qkv, torch.nn.Linear) \
                and isinstance(proj, torch.nn.Linear) and qkv.out_features == 3 * h * d \
                and proj.in_features == h * d and name:
            out.add(name)
    return out


def _prune_heads(model, modules: dict, amount: float, norm: str, min_keep: float, skip: tuple,
                 round_to: int | None) -> list:
    """Remove the weakest ``amount`` of each attention module's heads as whole units: their
    rows of q, k and v in ``qkv`` and their columns of ``proj``. A head's importance is the
    norm of those weights (mean-normalized); every module keeps at least one head."""
    import torch

    done = []
    for name in sorted(_attention_modules(model)):
        m = modules[name]
        if {name, f"{name}.qkv", f"{name}.proj"} & set(skip):
            continue
        h, d = m.heads, m.head_dim
        keep = max(1, math.ceil(min_keep * h), h - int(math.floor(amount * h)))
        if round_to:
            keep = min(h, int(math.ceil(keep / round_to)) * round_to)
        if keep >= h:
            continue
        w = m.qkv.weight.detach().reshape(3, h, d, -1).abs()
        p = m.proj.weight.detach().reshape(-1, h, d).abs()
        if norm == "l1":
            score = w.sum(dim=(0, 2, 3)) + p.sum(dim=(0, 2))
        else:
            score = w.pow(2).sum(dim=(0, 2, 3)).sqrt() + p.pow(2).sum(dim=(0, 2)).sqrt()
        kept = torch.sort(torch.argsort(-score, stable=True)[:keep]).values
        rows = torch.cat([part * h * d + kept[:, None] * d + torch.arange(d)[None, :]
                          for part in range(3)], dim=0).reshape(-1)
        cols = (kept[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
        with torch.no_grad():
            m.qkv.weight = torch.nn.Parameter(m.qkv.weight.detach().index_select(0, rows).clone())
            if m.qkv.bias is not None:
                m.qkv.bias = torch.nn.Parameter(m.qkv.bias.detach().index_select(0, rows).clone())
            m.proj.weight = torch.nn.Parameter(m.proj.weight.detach().index_select(1, cols).clone())
        m.qkv.out_features, m.proj.in_features, m.heads = len(rows), len(cols), keep
        done.append({"module": name, "heads_before": h, "heads_after": keep})
    return done


def _choose(prunable: list, amount: float, scope: str, min_keep: float,
            round_to: int | None = None) -> list[np.ndarray]:
    """Indices to keep per group: local (each group by ``amount``) or global (one threshold on
    normalized scores, each group keeping at least ``min_keep`` of its channels); the count
    kept is rounded up to a multiple of ``round_to``."""
    def top(s, k):
        if round_to:
            k = min(len(s), int(math.ceil(k / round_to)) * round_to)
        return np.sort(np.argsort(-s, kind="stable")[:k])

    out = []
    if scope == "local" or not prunable:
        for g, s in prunable:
            out.append(top(s, max(1, g.size - int(math.floor(amount * g.size)))))
        return out
    all_scores = np.concatenate([s for _, s in prunable])
    n_remove = int(math.floor(amount * len(all_scores)))
    threshold = np.sort(all_scores)[n_remove - 1] if n_remove > 0 else -np.inf
    for g, s in prunable:
        floor_k = max(1, math.ceil(min_keep * g.size))
        out.append(top(s, max(floor_k, int(np.sum(s > threshold)))))
    return out


def _apply(modules: dict, g: _Group, idx) -> None:
    import torch

    def take(t, dim, index):
        return torch.nn.Parameter(t.detach().index_select(dim, index).clone(), requires_grad=t.requires_grad)

    n = len(idx)
    for name in g.producers:
        m = modules[name]
        m.weight = take(m.weight, 0, idx)
        if m.bias is not None:
            m.bias = take(m.bias, 0, idx)
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            m.out_channels = n
        else:
            m.out_features = n
    for name in g.norms:
        m = modules[name]
        if isinstance(m, torch.nn.LayerNorm):
            if m.weight is not None:
                m.weight = take(m.weight, 0, idx)
            if m.bias is not None:
                m.bias = take(m.bias, 0, idx)
            m.normalized_shape = (n,)
            continue
        if m.affine:
            m.weight, m.bias = take(m.weight, 0, idx), take(m.bias, 0, idx)
        if m.track_running_stats:
            m.running_mean = m.running_mean.index_select(0, idx).clone()
            m.running_var = m.running_var.index_select(0, idx).clone()
        m.num_features = n
    for name in g.depthwise:
        m = modules[name]
        m.weight = take(m.weight, 0, idx)
        if m.bias is not None:
            m.bias = take(m.bias, 0, idx)
        m.in_channels = m.out_channels = m.groups = n
    for name, spatial in g.consumers:
        m = modules[name]
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            m.weight = take(m.weight, 1, idx)
            m.in_channels = n
        else:
            cols = (idx[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
            m.weight = take(m.weight, 1, cols)
            m.in_features = len(cols)
