"""Pruning: structured pruning that physically removes channels (two engines), and unstructured
magnitude pruning.

Structured pruning has two engines behind one config (``PruneConfig.engine``):

- ``"torch_pruning"``: Torch-Pruning's dependency graph (``edgeopt.compress.prune_tp``). It
  traces the autograd graph, so it follows ``cat``, ``chunk``, squeeze-excitation gates,
  Conv1d and ``nn.MultiheadAttention`` (heads kept whole: widths stay divisible by the heads).
- ``"edgeopt"``: edgeopt's own ``torch.fx`` tracer (below). It groups channels that must be
  removed together: a convolution's (1d or 2d) or Linear's outputs, the BatchNorm/LayerNorm after
  it, activations, pools and spatial means (which keep channels), depthwise convolutions (whose
  channels pass through), every tensor joined to them by a residual ``add`` or an elementwise
  product of equal widths (one group across the chain), and the consumers that read them: the
  next layer's input channels, or a ``Linear`` after ``flatten`` (each channel owns its spatial
  features). Any op it does not understand leaves its inputs *and its output* whole, so a later
  add can never join a pruned tensor to an unpruned one. It handles a Linear over a transposed
  (token) axis, where Torch-Pruning fails.
- ``"auto"`` (default): Torch-Pruning first; when it raises or its result breaks the invariant,
  edgeopt's tracer. The record says which engine ran and why.

Invariant: the returned model runs on the example input and gives outputs of the original's
structure and shapes (``edgeopt.compress.invariant``); otherwise the step falls back or raises
``InputError`` naming what failed. It never returns a broken model. Groups left whole are listed
with the reason; a model with nothing to prune gets ``metrics["nothing_changed"]`` saying why.

Models from ``.pt2`` files are lifted (``edgeopt.compress.pt2``): their layers are modules, the
rest are ATen calls, which edgeopt's tracer reads like the torch functions they stand for; a
reshape to sizes the program wrote as numbers keeps the channels before it whole.

Amount or budget: ``amount`` removes that fraction of channels (ranked by L1/L2 filter norm,
normalized per group). ``flops_budget``/``params_budget`` (fractions of the original) are met by
a global ranking whose per-layer weights are measured sensitivities: each layer's weakest half
of channels is zeroed alone and the model's relative output error on the calibration data is
its weight, so layers that barely change the output give up more channels. The global fraction
is then searched (bisection) until the budget is met; a budget no fraction meets is refused.

Unstructured pruning zeroes the smallest-magnitude weights (globally or per layer) through
``torch.nn.utils.prune`` and makes it permanent: no masks or hooks remain.

Example:
    >>> import torch
    >>> import edgeopt.compress as ec
    >>> from edgeopt.pipeline.zoo import create
    >>> model = create("digits_cnn")
    >>> r = ec.prune(model, ec.PruneConfig(amount=0.5), torch.zeros(1, 1, 32, 32))
    >>> ec.count_params(r.output) < ec.count_params(model) / 2, r.metrics["engine"]
    (True, 'torch_pruning')
"""

from __future__ import annotations

import copy
import math
import operator
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import InputError, first_line
from edgeopt.core.result import StepResult, reporter, unwrap

from .counting import count_params, model_stats
from .history import with_record
from .invariant import broken, signature
from .pt2 import lifted_if_exported

NORMS = ("l1", "l2")
SCOPES = ("global", "local")
ENGINES = ("auto", "torch_pruning", "edgeopt")


@dataclass(frozen=True)
class PruneConfig(StepConfig):
    """What to prune: exactly one of ``amount``, ``flops_budget``, ``params_budget``.

    Args:
        amount: fraction of channels (structured) or weights (unstructured) to remove, in [0, 1).
        flops_budget: structured only: the pruned model's FLOPs as a fraction of the original's,
            in (0, 1); met by a sensitivity-weighted global ranking (module docstring).
        params_budget: the same for parameters.
        structured: remove whole channels (True) or zero single weights (False).
        norm: "l1" or "l2" filter norm for channel importance.
        scope: "global" ranks channels (or weights) across all layers; "local" prunes every group
            (layer) by ``amount``. Budgets always rank globally.
        min_keep: global ranking: every group keeps at least this fraction of its channels.
        skip: module names never to prune, matched exactly (a single name may be given as a str).
        engine: "auto", "torch_pruning" or "edgeopt" (module docstring).
        round_to: keep a multiple of this many channels per group (e.g. 8: vectorized CPU
            kernels run odd widths slower, so fewer FLOPs need not mean less time); None: any.
            edgeopt's engine rounds the kept count up; Torch-Pruning rounds it down and leaves
            a group whole where that would keep nothing.
    """

    amount: float | None = None
    structured: bool = True
    norm: str = "l1"
    scope: str = "global"
    min_keep: float = 0.1
    skip: tuple[str, ...] = ()
    engine: str = "auto"
    flops_budget: float | None = None
    params_budget: float | None = None
    round_to: int | None = None

    def validate(self):
        chosen = [n for n in ("amount", "flops_budget", "params_budget") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise InputError(f"set exactly one of amount, flops_budget, params_budget; got {chosen or 'none'}")
        if self.amount is not None and not (0 <= self.amount < 1):
            raise InputError(f"amount must be in [0, 1), got {self.amount!r}")
        for name in ("flops_budget", "params_budget"):
            v = getattr(self, name)
            if v is not None and not (0 < v < 1):
                raise InputError(f"{name} must be in (0, 1) (a fraction of the original), got {v!r}")
        if self.amount is None and not self.structured:
            raise InputError("flops_budget/params_budget need structured=True: zeroed weights "
                             "change neither FLOPs nor parameter count")
        if self.norm not in NORMS:
            raise InputError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.scope not in SCOPES:
            raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not (0 < self.min_keep <= 1):
            raise InputError(f"min_keep must be in (0, 1], got {self.min_keep!r}")
        if self.round_to is not None and self.round_to < 1:
            raise InputError(f"round_to must be a positive integer or None, got {self.round_to!r}")
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")


def prune(model, config: PruneConfig, example_inputs, *, calibration=None, progress=None) -> StepResult:
    """Prune a copy of ``model`` (the input is not modified) and return a ``StepResult``.

    Args:
        model: an ``nn.Module`` or the ``StepResult`` of the step before; a bare
            ``torch.export`` program module (``program.module()``) is lifted first
            (``edgeopt.compress.pt2``).
        config: ``PruneConfig``.
        example_inputs: a tensor/array (or tuple) the model runs on; also the invariant's input.
        calibration: inputs (a batch, or a list of batches) for the budget's sensitivity
            measurement; default ``example_inputs``.
        progress: ``None``/``False``, ``True`` or a callable taking a line.

    The record's metrics: params and FLOPs before/after, ``engine`` and ``engine_reason``, the
    groups pruned (channels before/after), ``left_whole`` (groups kept whole, with the reason),
    ``nothing_changed`` (``None``, or why nothing was removed); unstructured: sparsity per layer.
    """
    module, previous = unwrap(model)
    say = reporter(progress)
    args = _as_args(example_inputs)
    module = lifted_if_exported(module, args)  # a bare .module() of a .pt2 program: its layers
    original = copy.deepcopy(module).eval()
    before = model_stats(original, args)
    reference = signature(original, args)
    known = {n for n, _ in original.named_modules() if n}
    unknown = [s for s in config.skip if s not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:5])
        raise InputError(f"skip names {unknown} are not modules of the model; expected exact "
                         f"module names such as {sample}")
    if not config.structured:
        student = copy.deepcopy(original)
        details = {"engine": "unstructured", "engine_reason": "structured=False",
                   **_prune_weights(student, config)}
    else:
        student, details = _structured(original, config, args, reference, calibration, before, say)
    failure = broken(student, args, reference)
    if failure:  # the engines check this already; unstructured pruning is checked here
        raise InputError(f"pruning produced a model that does not work ({failure}); nothing returned")
    after = model_stats(student, args)
    details.setdefault("nothing_changed", None)
    if config.structured and after["params"] >= before["params"] and not details["nothing_changed"]:
        left = details.get("left_whole", [])
        details["nothing_changed"] = (
            "every prunable group is left whole: " + "; ".join(
                f"{', '.join(e['layers'])}: {e['reason']}" for e in left[:4]) if left
            else "the model has no prunable channel group")
    if config.amount == 0:
        details["nothing_changed"] = "amount=0 removes nothing"
    if details["nothing_changed"]:
        say(f"prune: nothing changed: {details['nothing_changed']}")
    record = {"name": "prune", "config": _config_dict(config),
              "metrics": {"params_before": before["params"], "params_after": after["params"],
                          "flops_before": before["flops"], "flops_after": after["flops"], **details}}
    with_record(student, record, previous=_Carrier(previous))
    return StepResult(output=student, record=record, history=previous)


class _Carrier:
    """Holds a history list where ``with_record`` expects a model carrying one."""

    def __init__(self, history: list):
        self.edgeopt_history = list(history)


def _config_dict(config) -> dict:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# -- structured: engines, fallback and budgets ---------------------------------------------------

def _run_engine(engine: str, original, config: PruneConfig, args, amount: float, scope: str,
                weights: dict | None):
    """A pruned copy of ``original`` by ``engine`` and its details (may raise)."""
    student = copy.deepcopy(original)
    if engine == "torch_pruning":
        from .prune_tp import prune_with_torch_pruning

        details = prune_with_torch_pruning(student, args, amount, p=1 if config.norm == "l1" else 2,
                                           scope=scope, min_keep=config.min_keep, skip=config.skip,
                                           weights=weights, round_to=config.round_to)
    else:
        details = _prune_channels(student, config, args, amount, scope, weights)
    return student, details


#: torch's error for a view / reshape to fixed sizes that no longer match the pruned channels.
FIXED_SHAPE_ERROR = re.compile(r"shape '\[[-0-9, ]*\]' is invalid for input of size")


def _structured(original, config: PruneConfig, args, reference, calibration, before: dict, say):
    """Run the engine(s), keeping the invariant; for a budget, search the global fraction."""
    engines = ["torch_pruning", "edgeopt"] if config.engine == "auto" else [config.engine]
    reasons = []
    for engine in engines:
        try:
            if config.amount is not None:
                student, details = _run_engine(engine, original, config, args, config.amount,
                                               config.scope, None)
                failure = broken(student, args, reference)
            else:
                student, details, failure = _meet_budget(engine, original, config, args, reference,
                                                         calibration, before, say)
        except InputError as e:
            if "cannot be met" in str(e):
                raise
            failure = str(e)
        except Exception as e:  # an engine failing on an architecture is what "auto" recovers from
            failure = f"{type(e).__name__}: {first_line(e, 200)}"
        if failure is None:
            why = "requested" if config.engine != "auto" else (
                "first choice" if not reasons else "; ".join(reasons))
            say(f"prune: engine {engine} ({why})")
            return student, {"engine": engine, "engine_reason": why, **details}
        # not said here: the engine that works says why it ran, or the error names every failure
        reasons.append(f"{engine} failed: {failure}")
    hint = ""
    if any(FIXED_SHAPE_ERROR.search(r) for r in reasons):
        # the model's code reshapes to sizes written as numbers; the channels feeding that
        # reshape can only stay whole, which skip says
        hint = ("; the model reshapes to a fixed size: keep the layer(s) feeding that reshape whole "
                "with skip (--skip NAME,... on the command line, skip: [NAME] in a recipe), or "
                "write the reshape as flatten(1) / reshape(N, -1)")
    raise InputError(f"structured pruning failed ({'; '.join(reasons)}); nothing returned{hint}")


def _meet_budget(engine, original, config, args, reference, calibration, before, say):
    """Bisection on the global pruned fraction until the budget holds (sensitivity-weighted)."""
    use_flops = config.flops_budget is not None
    fraction = config.flops_budget if use_flops else config.params_budget
    key = "flops" if use_flops else "params"
    target = fraction * before[key]
    weights = layer_sensitivity(original, _batches(calibration, args))
    say(f"prune: sensitivity of {len(weights)} layers measured")

    def cost(model):
        if use_flops:
            return model_stats(model, args)["flops"]
        return count_params(model)

    hi = 1 - config.min_keep
    best = None
    student, details = _run_engine(engine, original, config, args, hi, "global", weights)
    failure = broken(student, args, reference)
    if failure:
        return student, details, failure
    lowest = cost(student)
    if lowest > target:
        name = "flops_budget" if use_flops else "params_budget"
        raise InputError(
            f"{name}={fraction} cannot be met: pruning every prunable group down to "
            f"min_keep={config.min_keep} leaves {lowest / before[key]:.2f} of the model's {key}; "
            "raise the budget or lower min_keep")
    best = (student, details, hi)
    lo = 0.0
    for _ in range(8):  # 8 halvings: the fraction to within 0.4% of the channels
        mid = (lo + hi) / 2
        student, details = _run_engine(engine, original, config, args, mid, "global", weights)
        if broken(student, args, reference) is None and cost(student) <= target:
            best, hi = (student, details, mid), mid
        else:
            lo = mid
    student, details, amount = best
    return student, {**details, "global_fraction": round(amount, 4)}, None


def _batches(calibration, args) -> list[tuple]:
    """Calibration inputs as argument tuples (first 4 batches of 64); default the example."""
    import torch

    if calibration is None:
        return [args]
    items = calibration if isinstance(calibration, list) else [calibration]
    out = []
    for c in items:
        c = torch.from_numpy(c) if isinstance(c, np.ndarray) else c
        if isinstance(c, tuple):
            out.append(c)
        else:
            out += [(c[i:i + 64],) for i in range(0, len(c), 64)]
    if not out:
        raise InputError("calibration data is empty: expected at least one sample")
    return out[:4]


def layer_sensitivity(model, batches: list[tuple]) -> dict:
    """Per Conv/Linear layer: the model's relative output error when the layer's weaker half
    of output channels (by L1 norm) is zeroed, divided by the median over layers (so the
    weights of the global ranking center on 1). Measured with forward hooks on ``model``."""
    import torch

    with torch.inference_mode():
        refs = [_flat(model(*b)) for b in batches]
    errors = {}
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) or m.weight.dim() < 2:
            continue
        if isinstance(m, torch.nn.modules.conv._ConvNd) and m.transposed:
            continue
        norms = m.weight.detach().flatten(1).abs().sum(1)
        mask = (norms >= norms.median()).to(m.weight.dtype)
        if mask.numel() < 2:
            continue

        fired = []

        def hook(mod, inp, out, mask=mask, conv=isinstance(m, torch.nn.modules.conv._ConvNd)):
            fired.append(True)
            shape = [1, -1] + [1] * (out.dim() - 2) if conv else [1] * (out.dim() - 1) + [-1]
            return out * mask.view(shape)

        h = m.register_forward_hook(hook)
        try:
            num = den = 0.0
            with torch.inference_mode():
                for b, ref in zip(batches, refs):
                    out = _flat(model(*b))
                    num += float(((out - ref) ** 2).sum())
                    den += float((ref ** 2).sum())
            # A layer whose module is never called (nn.MultiheadAttention reads out_proj's
            # weight directly) was not measured: it keeps the neutral weight, not "harmless".
            errors[name] = math.sqrt(num / max(den, 1e-30)) if fired else None
        except Exception:  # a layer whose output cannot be masked this way keeps weight 1
            errors[name] = None
        finally:
            h.remove()
    known = [e for e in errors.values() if e is not None]
    median = float(np.median(known)) if known else 1.0
    return {n: (max(e / max(median, 1e-12), 1e-3) if e is not None else 1.0) for n, e in errors.items()}


def _flat(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out.detach().float().reshape(-1)
    vals = out.values() if isinstance(out, dict) else out
    return torch.cat([_flat(v) for v in vals]) if vals else torch.zeros(0)


# -- unstructured -----------------------------------------------------------------------------

def _prune_weights(model, config: PruneConfig) -> dict:
    import torch
    from torch.nn.utils import prune as tprune

    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)) and name not in config.skip]
    if not targets:
        raise InputError("the model has no Conv or Linear layer to prune")
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


# -- structured: edgeopt's channel groups -----------------------------------------------------

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


def _prune_channels(model, config: PruneConfig, args, amount: float, scope: str,
                    weights: dict | None = None) -> dict:
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
        scores /= len(g.producers)
        if weights:  # sensitivity-weighted global ranking (budgets)
            scores *= float(np.mean([weights.get(n, 1.0) for n in g.producers]))
        prunable.append((g, scores))
    keep = _choose(prunable, amount, scope, config.min_keep, config.round_to)
    heads = _prune_heads(model, modules, config, amount)
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


def _prune_heads(model, modules: dict, config: PruneConfig, amount: float) -> list:
    """Remove the weakest ``amount`` of each attention module's heads as whole units: their
    rows of q, k and v in ``qkv`` and their columns of ``proj``. A head's importance is the
    norm of those weights (mean-normalized); every module keeps at least one head."""
    import torch

    done = []
    for name in sorted(_attention_modules(model)):
        m = modules[name]
        if {name, f"{name}.qkv", f"{name}.proj"} & set(config.skip):
            continue
        h, d = m.heads, m.head_dim
        keep = max(1, math.ceil(config.min_keep * h), h - int(math.floor(amount * h)))
        if config.round_to:
            keep = min(h, int(math.ceil(keep / config.round_to)) * config.round_to)
        if keep >= h:
            continue
        w = m.qkv.weight.detach().reshape(3, h, d, -1).abs()
        p = m.proj.weight.detach().reshape(-1, h, d).abs()
        if config.norm == "l1":
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


def _as_args(x) -> tuple:
    import torch

    items = x if isinstance(x, (tuple, list)) else (x,)
    return tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in items)
