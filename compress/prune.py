"""Pruning: structured pruning that physically removes channels (two engines), and unstructured
magnitude pruning.

Structured pruning has two engines behind one config (``PruneConfig.engine``):

- ``"torch_pruning"``: Torch-Pruning's dependency graph (``edgeopt.compress.prune_tp``). It
  traces the autograd graph, so it follows ``cat``, ``chunk``, squeeze-excitation gates,
  Conv1d and ``nn.MultiheadAttention`` (heads kept whole: widths stay divisible by the heads).
- ``"edgeopt"``: edgeopt's own ``torch.fx`` tracer (``edgeopt.compress.prune_fx``). It groups
  channels that must be removed together (residual adds, norms, depthwise convs, the consumers
  that read them) and leaves whole whatever an op it does not understand touches. It handles a
  Linear over a transposed (token) axis, where Torch-Pruning fails.
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
is then searched (bisection) until the budget is met; a budget no fraction meets is refused
(``BudgetUnreachable``, an ``InputError``: no engine can meet it, so none is tried after it).

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
import re
from dataclasses import asdict, dataclass

import numpy as np

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import InputError, first_line
from edgeopt.core.phrases import listing
from edgeopt.core.result import StepResult, reporter, unwrap

from .counting import count_params, model_stats
from .history import with_record
from .invariant import broken, signature
from .prune_fx import prune_with_fx
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
        details = prune_with_fx(student, args, amount, norm=config.norm, scope=scope,
                                min_keep=config.min_keep, skip=config.skip, weights=weights,
                                round_to=config.round_to)
    return student, details


class BudgetUnreachable(InputError):
    """A ``flops_budget`` / ``params_budget`` that pruning every group down to ``min_keep`` does
    not reach: the budget itself is wrong, so ``engine: auto`` does not try the next engine."""


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
        except BudgetUnreachable:
            raise
        except InputError as e:
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
        raise BudgetUnreachable(
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


def _as_args(x) -> tuple:
    import torch

    items = x if isinstance(x, (tuple, list)) else (x,)
    return tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in items)


def describe(metrics: dict, config: dict) -> list[str]:
    """What a prune record changed, as the report says it (the channels per group, sparsity).

    >>> describe({"groups": [{"layers": ["conv1"], "channels_before": 16, "channels_after": 8}]}, {})
    ['channels conv1 16->8']
    """
    parts = []
    groups = metrics.get("groups") or []
    if groups:
        parts.append("channels " + listing([
            f"{'+'.join(g.get('layers') or ['?'])} {g.get('channels_before')}->{g.get('channels_after')}"
            for g in groups]))
    if metrics.get("overall_sparsity") is not None:
        parts.append(f"weight sparsity {metrics['overall_sparsity'] * 100:.1f}%")
    return parts
