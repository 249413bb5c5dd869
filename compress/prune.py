"""Pruning: unstructured magnitude pruning, and structured channel pruning that physically
removes channels.

Structured pruning traces the model with ``torch.fx`` and groups channels that must be removed
together: a convolution's output channels, the BatchNorm after it, activations and pools (which
keep channels), depthwise convolutions (whose channels pass through), every tensor joined to
them by a residual ``add`` (one group across the whole chain), and the consumers that read them:
the next convolution's input channels, or a ``Linear`` after ``flatten`` (each channel owns
H*W input features). A channel's importance is the L1 (or L2) norm of its filters in every
producing layer, each normalized by that layer's mean filter norm. Groups that reach an op the
tracer does not understand (``cat``, ``reshape`` into another layout, LayerNorm, the model
output, ...) are left whole and named with the reason.

Unstructured pruning zeroes the smallest-magnitude weights (globally or per layer) through
``torch.nn.utils.prune`` and makes it permanent: no masks or hooks remain.

Example:
    >>> import torch
    >>> import edgeopt.compress as ec
    >>> from edgeopt.pipeline.zoo import create
    >>> model = create("digits_cnn")
    >>> small = ec.prune(model, ec.PruneConfig(amount=0.5), example_inputs=torch.zeros(1, 1, 32, 32))
    >>> ec.count_params(small) < ec.count_params(model) / 2
    True
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeopt.core.errors import InputError

from .counting import model_stats
from .history import with_record

NORMS = ("l1", "l2")
SCOPES = ("global", "local")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune.

    Args:
        amount: fraction of channels (structured) or weights (unstructured) to remove, in [0, 1).
        structured: remove whole channels (True) or single weights (False).
        norm: "l1" or "l2" filter norm for channel importance.
        scope: "global" ranks channels (or weights) across all layers; "local" prunes every group
            (layer) by ``amount``.
        min_keep: structured, global scope: every group keeps at least this fraction.
        skip: module names never to prune (their groups are left whole).
    """

    amount: float
    structured: bool = True
    norm: str = "l1"
    scope: str = "global"
    min_keep: float = 0.1
    skip: tuple = ()

    def __post_init__(self):
        if not isinstance(self.amount, (int, float)) or not (0 <= self.amount < 1):
            raise InputError(f"amount must be in [0, 1), got {self.amount!r}")
        if self.norm not in NORMS:
            raise InputError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.scope not in SCOPES:
            raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not (0 < self.min_keep <= 1):
            raise InputError(f"min_keep must be in (0, 1], got {self.min_keep!r}")


def prune(model, config: PruneConfig, example_inputs):
    """Return a pruned copy of ``model`` (the input is not modified).

    The returned module carries the step record (``edgeopt.compress.history.last_record``):
    params and FLOPs before/after, channels kept per group (or sparsity per layer for
    unstructured), and the groups left whole with the reason.
    """
    args = _as_args(example_inputs)
    student = copy.deepcopy(model).eval()
    before = model_stats(student, args)
    if config.structured:
        details = _prune_channels(student, config, args)
    else:
        details = _prune_weights(student, config)
    after = model_stats(student, args)
    record = {"name": "prune", "config": {**asdict(config), "skip": list(config.skip)},
              "metrics": {"params_before": before["params"], "params_after": after["params"],
                          "flops_before": before["flops"], "flops_after": after["flops"], **details}}
    return with_record(student, record, previous=model)


# -- unstructured -----------------------------------------------------------------------------

def _prune_weights(model, config: PruneConfig) -> dict:
    import torch
    from torch.nn.utils import prune as tprune

    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and name not in config.skip]
    if not targets:
        raise InputError("the model has no Conv2d or Linear layer to prune")
    if config.amount > 0:
        if config.scope == "global":
            tprune.global_unstructured([(m, "weight") for _, m in targets],
                                       pruning_method=tprune.L1Unstructured, amount=config.amount)
        else:
            for _, m in targets:
                tprune.l1_unstructured(m, "weight", amount=config.amount)
        for _, m in targets:
            tprune.remove(m, "weight")  # fold the mask into the weight: no hooks left behind
    sparsity = {name: float((m.weight == 0).float().mean()) for name, m in targets}
    total = sum(m.weight.numel() for _, m in targets)
    zeros = sum(int((m.weight == 0).sum()) for _, m in targets)
    return {"sparsity": sparsity, "overall_sparsity": zeros / total}


# -- structured: channel groups --------------------------------------------------------------

@dataclass
class _Group:
    size: int
    producers: list = field(default_factory=list)   # (module name) conv/linear producing channels
    norms: list = field(default_factory=list)       # BatchNorm module names
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
            ga.blocked.append(f"added to a tensor with {gb.size} channels at {where}")
        for f in ("producers", "norms", "depthwise", "consumers", "blocked"):
            getattr(ga, f).extend(getattr(gb, f))
        self.parent[rb] = ra
        return ra

    def roots(self) -> list[int]:
        return sorted({self.find(i) for i in range(len(self.parent))})


PASS_MODULES = ("ReLU", "ReLU6", "Hardtanh", "SiLU", "GELU", "Sigmoid", "Hardswish", "Identity",
                "Dropout", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "LeakyReLU")
PASS_FUNCTIONS = ("relu", "relu6", "hardtanh", "silu", "gelu", "sigmoid", "hardswish", "dropout",
                  "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "leaky_relu", "contiguous",
                  "relu_", "clone")
HARMLESS = ("size", "dim", "shape")  # reading a shape does not constrain channels


def _analyse(model, args) -> tuple[_Groups, dict]:
    """Trace ``model`` and build its channel groups. Returns the groups and, per traced node
    that carries channels, ``(group, layout, spatial)``."""
    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        raise InputError(f"structured pruning needs a torch.fx-traceable model; tracing "
                         f"{type(model).__name__} failed: {str(e).splitlines()[0]}") from None
    ShapeProp(gm).propagate(*args)
    groups = _Groups()
    info: dict = {}  # node -> (group id, layout "nchw"|"feat"|"flat", spatial)

    def shape(node):
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def block_inputs(node, reason):
        for a in node.all_input_nodes:
            if a in info:
                groups.get(info[a][0]).blocked.append(reason)

    def passthrough(node, src):
        if src in info:
            info[node] = info[src]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            s = shape(node)
            if s is not None and len(s) >= 2:
                g = groups.new(s[1] if len(s) == 4 else s[-1])
                groups.get(g).blocked.append("model input")
                info[node] = (g, "nchw" if len(s) == 4 else "feat", 1)
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":
            block_inputs(node, "model output")
            continue
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            kind = type(m).__name__
            name = node.target
            if isinstance(m, torch.nn.Conv2d):
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
                    g = groups.new(m.out_channels)
                    groups.get(g).blocked.append(f"produced by grouped convolution {name}")
                    info[node] = (g, "nchw", 1)
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
            elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                if src in info:
                    groups.get(info[src][0]).norms.append(name)
                    passthrough(node, src)
            elif kind in PASS_MODULES:
                passthrough(node, src)
            elif isinstance(m, torch.nn.Flatten):
                _flatten(node, src, info, groups, shape, f"module {name}")
            else:
                block_inputs(node, f"module {name} ({kind}) is not supported by channel pruning")
            continue
        # call_function / call_method
        target = node.target
        tname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if tname in HARMLESS or target is getattr:
            continue
        if tname in PASS_FUNCTIONS:
            passthrough(node, src)
        elif target in (operator.add, operator.iadd, torch.add) or tname in ("add", "add_"):
            tensors = [a for a in node.args if isinstance(a, fx.Node) and a in info]
            if tensors:
                g = info[tensors[0]][0]
                for t in tensors[1:]:
                    if info[t][1] != info[tensors[0]][1]:
                        groups.get(g).blocked.append(f"add of different layouts at {node.name}")
                    g = groups.union(g, info[t][0], node.name)
                info[node] = (g, *info[tensors[0]][1:])
        elif target in (operator.mul, torch.mul) or tname == "mul":
            others = [a for a in node.args if isinstance(a, fx.Node) and a is not src]
            if others:
                block_inputs(node, f"elementwise product at {node.name}")
            else:
                passthrough(node, src)
        elif tname in ("flatten", "view", "reshape"):
            _flatten(node, src, info, groups, shape, f"{tname} at {node.name}")
        else:
            block_inputs(node, f"op {tname} at {node.name} is not supported by channel pruning")
    return groups, info


def _flatten(node, src, info, groups, shape, where: str) -> None:
    """(N, C, H, W) -> (N, C*H*W): channel c owns features [c*H*W, (c+1)*H*W)."""
    if src not in info:
        return
    g, layout, _ = info[src]
    s_in, s_out = shape(src), shape(node)
    if layout == "nchw" and s_in is not None and s_out is not None and len(s_in) == 4 \
            and len(s_out) == 2 and s_out[1] == s_in[1] * s_in[2] * s_in[3]:
        info[node] = (g, "flat", s_in[2] * s_in[3])
    elif layout == "feat" and s_in == s_out:
        info[node] = info[src]
    else:
        groups.get(g).blocked.append(f"{where} changes the channel layout")


def _prune_channels(model, config: PruneConfig, args) -> dict:
    import torch

    groups, _ = _analyse(model, args)
    modules = dict(model.named_modules())
    prunable, left = [], []
    for root in groups.roots():
        g = groups.data[root]
        members = g.producers + g.norms + g.depthwise
        skipped = [n for n in members if n in config.skip]
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
            n = w.sum(1) if config.norm == "l1" else w.pow(2).sum(1).sqrt()
            n = n.double().numpy()
            scores += n / max(float(n.mean()), 1e-12)
        prunable.append((g, scores / len(g.producers)))
    keep = _choose(prunable, config)
    kept = []
    with torch.no_grad():
        for (g, _), idx in zip(prunable, keep):
            if len(idx) < g.size:
                _apply(modules, g, torch.as_tensor(idx, dtype=torch.long))
            kept.append({"layers": g.producers, "channels_before": g.size, "channels_after": len(idx)})
    return {"groups": kept, "left_whole": left}


def _choose(prunable: list, config: PruneConfig) -> list[np.ndarray]:
    """Indices to keep per group: local (each group by ``amount``) or global (one threshold on
    normalized scores, each group keeping at least ``min_keep`` of its channels)."""
    out = []
    if config.scope == "local" or not prunable:
        for g, s in prunable:
            k = max(1, g.size - int(math.floor(config.amount * g.size)))
            out.append(np.sort(np.argsort(-s, kind="stable")[:k]))
        return out
    all_scores = np.concatenate([s for _, s in prunable])
    n_remove = int(math.floor(config.amount * len(all_scores)))
    threshold = np.sort(all_scores)[n_remove - 1] if n_remove > 0 else -np.inf
    for g, s in prunable:
        floor_k = max(1, math.ceil(config.min_keep * g.size))
        k = max(floor_k, int(np.sum(s > threshold)))
        out.append(np.sort(np.argsort(-s, kind="stable")[:k]))
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
        if isinstance(m, torch.nn.Conv2d):
            m.out_channels = n
        else:
            m.out_features = n
    for name in g.norms:
        m = modules[name]
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
        if isinstance(m, torch.nn.Conv2d):
            m.weight = take(m.weight, 1, idx)
            m.in_channels = n
        else:
            cols = (idx[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
            m.weight = take(m.weight, 1, cols)
            m.in_features = len(cols)


def _as_args(x) -> tuple:
    import torch

    items = x if isinstance(x, (tuple, list)) else (x,)
    return tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in items)
