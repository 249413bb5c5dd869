"""The Torch-Pruning engine of structured pruning (``PruneConfig(engine="torch_pruning")``).

Torch-Pruning (Fang et al., DepGraph, CVPR 2023) builds its dependency graph from the autograd
graph of one forward pass, so it follows ``cat``, ``split``/``chunk``, squeeze-excitation gates,
residual adds, Conv1d and ``nn.MultiheadAttention`` where edgeopt's fx tracer leaves groups whole.
This module only adapts it: the layers that produce the model's outputs are kept whole (the
output shape must not change), ``skip`` becomes ``ignored_layers``, attention heads are passed as
``num_heads`` so embedding widths stay divisible by the head count, and with a budget the
channel importance is weighted by measured per-layer sensitivity (``weights``).

Example:
    >>> import torch
    >>> from edgeopt.compress.prune_tp import prune_with_torch_pruning
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> details = prune_with_torch_pruning(m, (torch.zeros(1, 3, 8, 8),), 0.5, p=1, scope="local",
    ...                                    min_keep=0.1, skip=())
    >>> m[0].out_channels
    4
"""

from __future__ import annotations

import warnings


def output_layers(model, args: tuple) -> list[str]:
    """Names of the Conv/Linear layers whose output is (one of) the model's outputs; when an
    op follows the last layer (``conv(x).mean(...)``), the last layer run instead."""
    import torch

    seen: list = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: seen.append((name, o)))
             for name, m in model.named_modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            out = model(*args)
    finally:
        for h in hooks:
            h.remove()
    outs = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            outs.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v)

    walk(out)
    names = [name for name, o in seen if any(o is t for t in outs)]
    if not names and seen:
        names = [seen[-1][0]]
    return list(dict.fromkeys(names))


def prune_with_torch_pruning(model, args: tuple, ratio: float, *, p: int, scope: str, min_keep: float,
                             skip: tuple, weights: dict | None = None, round_to: int | None = None) -> dict:
    """Prune ``model`` in place by ``ratio`` of its channels with Torch-Pruning.

    ``round_to``: channels kept per group are a multiple of it. ``weights`` maps module names to a factor on the importance of the groups rooted at that
    module (sensitivity-weighted global ranking). Returns the changed layers and the ones kept
    whole with the reason, in the shape of edgeopt's own engine's record.
    """
    import torch
    import torch_pruning as tp

    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    kept = {n: "produces the model output" for n in output_layers(model, args)}
    kept.update({n: "listed in skip" for n in skip})
    ignored = [modules[n] for n in kept if n in modules]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    before = {n: _width(m) for n, m in modules.items() if _width(m) is not None}

    def pruner(**kw):
        return tp.pruner.MagnitudePruner(
            model, args[0] if len(args) == 1 else args, importance=tp.importance.MagnitudeImportance(p=p),
            max_pruning_ratio=1 - min_keep, ignored_layers=ignored, num_heads=heads, round_to=round_to, **kw)

    with warnings.catch_warnings():
        # Torch-Pruning warns about every bare nn.Parameter (position embeddings); it prunes
        # their last axis, which is the feature axis in every layout it can trace.
        warnings.simplefilter("ignore")
        if not weights:
            pruner(pruning_ratio=ratio, global_pruning=scope == "global").step()
        else:
            # Torch-Pruning's global mode skips any group whose channels all fall under the
            # threshold (weighted scores make that common), so the global ranking is done here
            # and handed over as one ratio per group's root layer.
            ratios = _weighted_ratios(pruner(pruning_ratio=0.0), ratio, min_keep, weights, names, p)
            pruner(pruning_ratio=0.0, pruning_ratio_dict=ratios).step()
    changed = []
    for n, w in before.items():
        now = _width(modules[n])
        if now != w:
            changed.append({"layers": [n], "channels_before": w, "channels_after": now})
    left = [{"layers": [n], "channels": before.get(n), "reason": why} for n, why in kept.items()
            if n in modules]
    return {"groups": changed, "left_whole": left}


def _weighted_ratios(pruner, ratio: float, min_keep: float, weights: dict, names: dict, p: int) -> dict:
    """Per root layer, the fraction of its group's channels that one global threshold on
    sensitivity-weighted magnitude scores removes (each group keeping ``min_keep``)."""
    import math

    import torch
    import torch_pruning as tp

    scorer = tp.importance.MagnitudeImportance(p=p)
    entries = []
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        imp = scorer(group)
        if imp is None or len(imp) < 2:
            continue
        root = group[0].dep.target.module
        entries.append((root, imp.double() * weights.get(names.get(root), 1.0)))
    if not entries:
        return {}
    scores = torch.cat([s for _, s in entries])
    n_remove = int(math.floor(ratio * len(scores)))
    if n_remove <= 0:
        return {}
    threshold = torch.sort(scores).values[n_remove - 1]
    out = {}
    for root, s in entries:
        keep_min = max(1, math.ceil(min_keep * len(s)))
        removed = min(int((s <= threshold).sum()), len(s) - keep_min)
        if removed > 0:
            out[root] = removed / len(s)
    return out


def _width(m):
    """Output width of a prunable layer (channels or features), ``None`` for other modules."""
    import torch

    if isinstance(m, torch.nn.modules.conv._ConvNd):
        return m.out_channels
    if isinstance(m, torch.nn.Linear):
        return m.out_features
    if isinstance(m, torch.nn.MultiheadAttention):
        return m.embed_dim
    return None
