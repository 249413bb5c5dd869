"""Low-rank factorization: truncated SVD for ``nn.Linear`` and 1x1 convolutions, Tucker-2 (or CP)
through tensorly for kxk convolutions, 1-d and 2-d.

- ``nn.Linear(in, out)`` -> ``Linear(in, r) -> Linear(r, out)`` from the truncated SVD; this
  includes the projections and MLPs inside transformer blocks (any ``nn.Linear`` the model calls
  as a module, on (N, F) or (N, tokens, F) inputs).
- ``nn.Conv2d``/``nn.Conv1d`` 1x1 -> ``1x1 (Cin -> r, with the stride) -> 1x1 (r -> Cout)``.
- ``nn.Conv2d`` kxk (``nn.Conv1d`` k) -> Tucker-2 on the channel modes: ``1x1 (Cin -> R_in) ->
  kxk core (R_in -> R_out, stride/padding/dilation) -> 1x1 (R_out -> Cout)``; with
  ``method="cp"``: ``1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1`` (Conv1d: ``1 -> depthwise k
  -> 1``) from a rank-R CP decomposition.

Every layer with weights that is not factorized is listed in the record with the reason
(grouped/depthwise convolution, ``nn.MultiheadAttention``'s fused projections, transposed
convolutions, a factorization that would not lower cost, ...). The result is checked like
pruning's (``edgeopt.compress.invariant``): it must run on the example input and give the
original's output structure and shapes; a layer whose replacement breaks that is put back and
listed. A model with nothing to factorize gets ``metrics["nothing_changed"]`` saying why.

Ranks come from one of: a fixed ``rank_ratio`` of the full rank, an ``energy`` threshold (the
smallest rank keeping that fraction of the squared singular values of the weight, per mode), or a
whole-model ``flops_budget`` / ``params_budget``. Budgets are met greedily by measured
sensitivity, the way AIMET's compression-ratio search works: every layer is tried alone at each
candidate ratio and the model's output error on calibration inputs is measured; then one error
threshold is searched so that each layer takes its smallest ratio within the threshold and the
model meets the budget. Layers where a factorization would not lower cost are left alone and
listed; grouped and depthwise convolutions are skipped with the reason.

Example:
    >>> import torch
    >>> import edgeopt.compress as ec
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    >>> small = ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.25), torch.randn(1, 64)).output
    >>> ec.count_params(small) < ec.count_params(model)
    True
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeopt.core.config import StepConfig
from edgeopt.core.errors import InputError
from edgeopt.core.phrases import listing

from edgeopt.core.result import StepResult, reporter, shows_bars, unwrap

from .counting import model_stats
from .history import with_record
from .invariant import broken, signature
from .pt2 import lifted_if_exported

METHODS = ("tucker", "cp")
CANDIDATES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75)


@dataclass(frozen=True)
class LowRankConfig(StepConfig):
    """Exactly one of ``rank_ratio``, ``energy``, ``flops_budget``, ``params_budget``.

    Args:
        rank_ratio: keep this fraction of each layer's full rank, in (0, 1].
        energy: keep the smallest rank whose squared singular values sum to this fraction of
            the total, in (0, 1].
        flops_budget: the factorized model's FLOPs as a fraction of the original's, in (0, 1)
            (0.5 = 2x fewer FLOPs); ranks assigned per layer by measured sensitivity.
        params_budget: the same for parameters.
        method: "tucker" or "cp" for kxk convolutions.
        only_if_cheaper: leave a layer alone when its factorization would not lower its FLOPs.
        skip: module names never to factorize.
        candidates: rank ratios tried per layer by the budget search.
        energy_on: "weights": ranks and bases from the SVD of the weights (no data needed);
            "responses": from the calibration data's layer outputs and inputs (the explained
            variance of what the layer computes; bases are their principal directions, as in
            Zhang et al. 2015). Trained layers have flat weight spectra but low-dimensional
            responses (digits_cnn at 0.9: weight ranks [50, 28] of [64, 32], response ranks
            [14, 7]), so "responses" compresses far more at the same energy. Tucker only.
    """

    rank_ratio: float | None = None
    energy: float | None = None
    flops_budget: float | None = None
    method: str = "tucker"
    params_budget: float | None = None
    only_if_cheaper: bool = True
    skip: tuple[str, ...] = ()
    candidates: tuple[float, ...] = CANDIDATES
    energy_on: str = "weights"

    def validate(self):
        chosen = [n for n in ("rank_ratio", "energy", "flops_budget", "params_budget")
                  if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise InputError("set exactly one of rank_ratio, energy, flops_budget, params_budget; "
                             f"got {chosen or 'none'}")
        if self.rank_ratio is not None and not (0 < self.rank_ratio <= 1):
            raise InputError(f"rank_ratio must be in (0, 1], got {self.rank_ratio!r}")
        if self.energy is not None and not (0 < self.energy <= 1):
            raise InputError(f"energy must be in (0, 1], got {self.energy!r}")
        for name in ("flops_budget", "params_budget"):
            v = getattr(self, name)
            if v is not None and not (0 < v < 1):
                raise InputError(f"{name} must be in (0, 1) (a fraction of the original), got {v!r}")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.candidates or any(not (0 < c < 1) for c in self.candidates):
            raise InputError(f"candidates must be ratios in (0, 1), got {self.candidates!r}")
        if self.energy_on not in ("weights", "responses"):
            raise InputError(f"energy_on must be 'weights' or 'responses', got {self.energy_on!r}")
        if self.energy_on == "responses" and self.method != "tucker":
            raise InputError("energy_on='responses' works with method='tucker' only")


# -- per-layer plans -------------------------------------------------------------------------

@dataclass
class _Layer:
    name: str
    module: Any
    kind: str            # "linear", "conv1x1", "tucker", "cp"
    in_hw: int           # input spatial size (1 for linear; per sample, batch folded in)
    out_hw: int
    svds: tuple          # (U, S) of each factorized mode's unfolding, computed once
    data_bases: bool = False  # svds come from calibration responses, not the weights

    @property
    def spectra(self) -> tuple:
        return tuple(s for _, s in self.svds)

    @property
    def full_ranks(self) -> tuple:
        return tuple(len(s) for s in self.spectra)

    def original_cost(self) -> tuple[int, int]:
        w = self.module.weight
        params = w.numel()
        flops = 2 * self.out_hw * params
        return params, flops

    def cost(self, ranks: tuple) -> tuple[int, int]:
        """(params, FLOPs) of the factorized layer with ``ranks`` (weights only, no bias)."""
        m = self.module
        if self.kind == "linear":
            (r,) = ranks
            p = r * (m.in_features + m.out_features)
            return p, 2 * self.out_hw * p
        if self.kind == "conv1x1":
            (r,) = ranks
            return r * (m.in_channels + m.out_channels), 2 * self.out_hw * r * (m.in_channels + m.out_channels)
        k = int(np.prod(m.kernel_size))
        ksum = int(np.sum(m.kernel_size))
        if self.kind == "tucker":
            r_out, r_in = ranks
            p_in, p_core, p_out = m.in_channels * r_in, r_in * r_out * k, r_out * m.out_channels
            return p_in + p_core + p_out, 2 * (self.in_hw * p_in + self.out_hw * (p_core + p_out))
        (r,) = ranks  # cp
        p = r * (m.in_channels + ksum + m.out_channels)
        return p, 2 * (self.in_hw * r * m.in_channels + self.out_hw * r * (ksum + m.out_channels))

    def ranks_for_ratio(self, ratio: float) -> tuple:
        return tuple(max(1, math.ceil(ratio * f)) for f in self.full_ranks)

    def ranks_for_energy(self, energy: float) -> tuple:
        out = []
        for s in self.spectra:
            e = np.cumsum(s.astype(np.float64) ** 2)
            out.append(int(np.searchsorted(e / e[-1], energy - 1e-12) + 1) if e[-1] > 0 else 1)
        return tuple(min(r, f) for r, f in zip(out, self.full_ranks))


def _weight(m) -> np.ndarray:
    return m.weight.detach().double().cpu().numpy()


def _svds(m, kind: str) -> tuple:
    """(U, S) of the output-channel unfolding, and for Tucker of the input-channel unfolding."""
    w = _weight(m)
    u0, s0, _ = np.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
    if kind != "tucker":
        return ((u0, s0),)
    u1, s1, _ = np.linalg.svd(np.swapaxes(w, 0, 1).reshape(w.shape[1], -1), full_matrices=False)
    return ((u0, s0), (u1, s1))


def _response_bases(model, names: set, batches: list) -> dict:
    """Per layer: (U, sqrt(eigenvalues)) of the uncentered second moment of its responses
    W x (output channels) and of its inputs x (input channels), over the calibration data."""
    import torch
    import torch.nn.functional as F

    moments: dict = {}
    hooks = []

    def add(key, mat):
        mat = mat.double()
        moments[key] = moments.get(key, 0) + (mat.T @ mat).numpy()

    for name, m in model.named_modules():
        if name not in names:
            continue

        def hook(mod, inp, out, name=name):
            x = inp[0].detach()
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)):
                conv = F.conv1d if isinstance(mod, torch.nn.Conv1d) else F.conv2d
                y = conv(x, mod.weight, None, mod.stride, mod.padding, mod.dilation, mod.groups)
                add((name, "out"), y.movedim(1, -1).reshape(-1, y.shape[1]))
                add((name, "in"), x.movedim(1, -1).reshape(-1, x.shape[1]))
            else:
                y = x @ mod.weight.T
                add((name, "out"), y.reshape(-1, y.shape[-1]))
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for args in batches:
                model(*args)
    finally:
        for h in hooks:
            h.remove()
    bases = {}
    for name in names:
        pairs = []
        for side in ("out", "in"):
            if (name, side) in moments:
                ev, vec = np.linalg.eigh(moments[(name, side)])
                order = np.argsort(ev)[::-1]
                pairs.append((vec[:, order], np.sqrt(np.clip(ev[order], 0, None))))
        bases[name] = tuple(pairs)
    return bases


def _collect(model, config: LowRankConfig, example, calibration=None) -> tuple[list[_Layer], list[dict]]:
    """The factorizable layers (with their spatial sizes) and the skipped ones with reasons."""
    import torch

    shapes: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            def hook(mod, inp, out, name=name):
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    layers, skipped = [], []
    # nn.MultiheadAttention reads out_proj.weight and its fused in_proj_weight directly
    # (F.multi_head_attention_forward), so neither can be replaced by a two-layer module.
    attention = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            skipped.append({"layer": name, "reason": "nn.MultiheadAttention: its fused in_proj_weight "
                            "and out_proj are read directly by the attention kernel"})
            continue
        if name in attention:
            continue
        if name not in shapes:
            if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.dim() >= 2:
                why = ("not run on the example input" if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d,
                                                                        torch.nn.Conv2d))
                       else f"{type(m).__name__} is not supported by low-rank factorization")
                skipped.append({"layer": name, "reason": why})
            continue
        if name in config.skip:
            skipped.append({"layer": name, "reason": "listed in skip"})
            continue
        (ishape, oshape) = shapes[name]
        if isinstance(m, torch.nn.Linear):
            kind = "linear"
            in_hw = out_hw = int(np.prod(ishape[1:-1])) if len(ishape) > 2 else 1
        else:
            if m.groups != 1:
                kind_name = "depthwise" if m.groups == m.in_channels else "grouped"
                skipped.append({"layer": name, "reason": f"{kind_name} convolution (groups={m.groups}): "
                                "its channels are already factorized"})
                continue
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                skipped.append({"layer": name, "reason": f"padding {m.padding!r}/{m.padding_mode} not supported"})
                continue
            kind = "conv1x1" if all(k == 1 for k in m.kernel_size) else config.method
            in_hw, out_hw = int(np.prod(ishape[2:])), int(np.prod(oshape[2:]))
        layers.append(_Layer(name, m, kind, in_hw, out_hw, ()))
    if config.energy_on == "responses":
        bases = _response_bases(model, {layer.name for layer in layers}, calibration or [example])
        for layer in layers:
            pairs = bases[layer.name]
            layer.svds = pairs if layer.kind == "tucker" else pairs[:1]
            layer.data_bases = True
    else:
        for layer in layers:
            layer.svds = _svds(layer.module, layer.kind)
    return layers, skipped


# -- building factorized modules ---------------------------------------------------------------

def _factorize(layer: _Layer, ranks: tuple, exact: bool = True):
    """The replacement module for ``layer`` at ``ranks``. Tucker: ``exact=True`` refines the
    truncated HOSVD with a few HOOI iterations (tensorly); ``exact=False`` takes the truncated
    HOSVD from the cached SVDs as it is, for the budget search's sensitivity measurements."""
    import torch
    from torch import nn

    m = layer.module
    w = _weight(m)
    dtype = m.weight.dtype

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    bias = m.bias.detach().clone() if m.bias is not None else None
    if layer.kind in ("linear", "conv1x1"):
        (r,) = ranks
        u, s = layer.svds[0]
        # W = U S V^T, so S V^T = U^T W: the cached U gives the right factor without another SVD.
        mat = w.reshape(w.shape[0], -1)
        root = np.sqrt(np.maximum(s[:r], 1e-30))
        first_w = (u[:, :r].T @ mat) / root[:, None]
        second_w = u[:, :r] * root[None, :]
        if layer.kind == "linear":
            first = nn.Linear(m.in_features, r, bias=False)
            second = nn.Linear(r, m.out_features, bias=bias is not None)
            first.weight.data, second.weight.data = t(first_w), t(second_w)
        else:
            conv, tail = _conv_type(m)
            first = conv(m.in_channels, r, 1, stride=m.stride, bias=False)
            second = conv(r, m.out_channels, 1, bias=bias is not None)
            first.weight.data = t(first_w[(...,) + tail])
            second.weight.data = t(second_w[(...,) + tail])
        if bias is not None:
            second.bias.data = bias
        return nn.Sequential(first, second)
    if layer.kind == "tucker":
        r_out, r_in = ranks
        if exact and not layer.data_bases:
            import tensorly as tl
            from tensorly.decomposition import partial_tucker

            tl.set_backend("numpy")
            # Few HOOI sweeps: each costs two SVDs of the unfoldings (20 sweeps took 21 s on one
            # 512x512x3x3 layer); the error drops little after the first ones.
            (core, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1],
                                                      init="svd", n_iter_max=3, tol=1e-6)
        else:
            u_out, u_in = layer.svds[0][0][:, :r_out], layer.svds[1][0][:, :r_in]
            core = np.einsum("oi...,or,is->rs...", w, u_out, u_in, optimize=True)
        conv, tail = _conv_type(m)
        first = conv(m.in_channels, r_in, 1, bias=False)
        mid = conv(r_in, r_out, m.kernel_size, stride=m.stride, padding=m.padding,
                   dilation=m.dilation, bias=False)
        last = conv(r_out, m.out_channels, 1, bias=bias is not None)
        first.weight.data = t(u_in.T[(...,) + tail])
        mid.weight.data = t(core)
        last.weight.data = t(u_out[(...,) + tail])
        if bias is not None:
            last.bias.data = bias
        return nn.Sequential(first, mid, last)
    # CP: W[o, i, h, w] = sum_r A[o, r] B[i, r] C[h, r] D[w, r]
    import tensorly as tl
    from tensorly.decomposition import parafac

    tl.set_backend("numpy")
    (r,) = ranks
    cp = parafac(w, rank=r, init="svd", n_iter_max=200 if exact else 30, tol=1e-7, normalize_factors=True)
    weights, factors = cp
    a, b = factors[0] * weights[None, :], factors[1]
    if w.ndim == 3:  # Conv1d: W[o, i, k] = sum_r A[o, r] B[i, r] C[k, r]
        c = factors[2]
        first = nn.Conv1d(m.in_channels, r, 1, bias=False)
        mid = nn.Conv1d(r, r, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                        groups=r, bias=False)
        last = nn.Conv1d(r, m.out_channels, 1, bias=bias is not None)
        first.weight.data, mid.weight.data = t(b.T[:, :, None]), t(c.T[:, None, :])
        last.weight.data = t(a[:, :, None])
        if bias is not None:
            last.bias.data = bias
        return nn.Sequential(first, mid, last)
    c, d = factors[2], factors[3]
    kh, kw = m.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = m.stride, m.padding, m.dilation
    first = nn.Conv2d(m.in_channels, r, 1, bias=False)
    vert = nn.Conv2d(r, r, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=r, bias=False)
    horiz = nn.Conv2d(r, r, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=r, bias=False)
    last = nn.Conv2d(r, m.out_channels, 1, bias=bias is not None)
    first.weight.data = t(b.T[:, :, None, None])
    vert.weight.data = t(c.T[:, None, :, None])
    horiz.weight.data = t(d.T[:, None, None, :])
    last.weight.data = t(a[:, :, None, None])
    if bias is not None:
        last.bias.data = bias
    return nn.Sequential(first, vert, horiz, last)


def _conv_type(m) -> tuple:
    """The convolution class of ``m`` and the index tail that turns a matrix into its 1x1 kernel."""
    from torch import nn

    if isinstance(m, nn.Conv1d):
        return nn.Conv1d, (None,)
    return nn.Conv2d, (None, None)


def _set_module(model, name: str, new) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# -- rank selection ---------------------------------------------------------------------------

def _relative_error(model, reference: list, inputs: list) -> float:
    import torch

    num = den = 0.0
    with torch.inference_mode():
        for args, ref in zip(inputs, reference):
            out = model(*args)
            num += float(torch.sum((out - ref) ** 2))
            den += float(torch.sum(ref ** 2))
    return math.sqrt(num / max(den, 1e-30))


def _budget_ranks(model, layers: list[_Layer], config: LowRankConfig, inputs: list,
                  total_cost: int, progress) -> dict:
    """Per-layer ranks meeting the budget with the least measured output error (AIMET-style)."""
    import torch

    use_flops = config.flops_budget is not None
    fraction = config.flops_budget if use_flops else config.params_budget
    idx = 1 if use_flops else 0
    with torch.inference_mode():
        reference = [model(*args) for args in inputs]
    table = {}  # layer name -> list of (error, ranks, saving)
    for layer in progress(layers, desc="lowrank sensitivity"):
        original = layer.original_cost()[idx]
        options = []
        for ratio in config.candidates:
            ranks = layer.ranks_for_ratio(ratio)
            saving = original - layer.cost(ranks)[idx]
            if saving <= 0:
                continue
            trial = copy.deepcopy(model)
            _set_module(trial, layer.name, _factorize(layer, ranks, exact=False))
            options.append((_relative_error(trial, reference, inputs), ranks, saving))
        table[layer.name] = options
    target = fraction * total_cost

    def assign(threshold: float) -> tuple[dict, int]:
        chosen, saved = {}, 0
        for name, options in table.items():
            ok = [o for o in options if o[0] <= threshold]
            if ok:
                best = max(ok, key=lambda o: o[2])
                chosen[name], saved = best[1], saved + best[2]
        return chosen, total_cost - saved

    thresholds = sorted({o[0] for options in table.values() for o in options})
    if not thresholds or assign(thresholds[-1])[1] > target:
        best = assign(thresholds[-1])[1] if thresholds else total_cost
        what = "FLOPs" if use_flops else "parameters"
        raise InputError(
            f"{'flops_budget' if use_flops else 'params_budget'}={fraction} cannot be met: even the "
            f"lowest candidate ranks leave {best / total_cost:.2f} of the model's {what} "
            f"(candidates {config.candidates}); raise the budget or add smaller candidates")
    lo, hi = 0, len(thresholds) - 1
    while lo < hi:  # smallest threshold that meets the budget
        mid = (lo + hi) // 2
        if assign(thresholds[mid])[1] <= target:
            hi = mid
        else:
            lo = mid + 1
    return assign(thresholds[lo])[0]


# -- public entry point --------------------------------------------------------------------------

def lowrank(model, config: LowRankConfig, example_inputs, *, calibration=None, progress=None) -> StepResult:
    """Factorize a copy of ``model`` (the input is not modified) and return a ``StepResult``.

    Args:
        model: an ``nn.Module`` or the ``StepResult`` of the step before; a bare
            ``torch.export`` program module (``program.module()``) is lifted first
            (``edgeopt.compress.pt2``).
        config: ``LowRankConfig``.
        example_inputs: a tensor (or tuple) the model runs on: gives each layer's spatial size,
            and is the input of the invariant check.
        calibration: a batch of inputs (tensor or array, or a list of them): the responses for
            ``energy_on="responses"`` and the budget search's sensitivity data (its first 4
            batches of 64); default ``example_inputs``.
        progress: ``None``/``False``, ``True`` (lines and a bar for the budget search) or a
            callable taking a line.

    The record's metrics: params and FLOPs before/after, ranks per factorized layer
    (``layers``), every layer left alone with the reason (``skipped``), and
    ``nothing_changed`` (``None``, or why nothing was factorized).
    """
    import torch
    from tqdm.auto import tqdm

    module, previous = unwrap(model)
    say = reporter(progress)
    example = _as_args(example_inputs)
    module = lifted_if_exported(module, example)  # a bare .module() of a .pt2 program: its layers
    original = copy.deepcopy(module).eval()
    student = copy.deepcopy(original)
    before = model_stats(student, example)
    reference = signature(original, example)
    batches = None
    if calibration is not None:
        items = calibration if isinstance(calibration, (list, tuple)) else [calibration]
        batches = []
        for c in items:
            c = torch.from_numpy(c) if isinstance(c, np.ndarray) else c
            batches += [(c[i:i + 64],) for i in range(0, len(c), 64)]
        if not batches:
            raise InputError("calibration data is empty: expected at least one sample")
    if config.energy_on == "responses" and batches is None:
        raise InputError("energy_on='responses' needs calibration data (a batch of model inputs)")
    layers, skipped = _collect(student, config, example, batches)
    if config.energy is not None:
        plan = {layer.name: layer.ranks_for_energy(config.energy) for layer in layers}
    elif config.rank_ratio is not None:
        plan = {layer.name: layer.ranks_for_ratio(config.rank_ratio) for layer in layers}
    else:
        inputs = batches[:4] if batches else [example]
        total = before["flops"] if config.flops_budget is not None else before["params"]

        def bar(items, desc):
            return tqdm(items, desc=desc, disable=not shows_bars(progress), leave=False)

        say(f"lowrank: measuring the sensitivity of {len(layers)} layers")
        plan = _budget_ranks(student, layers, config, inputs, total, bar)
        for layer in layers:
            if layer.name not in plan:
                skipped.append({"layer": layer.name, "reason": "left whole by the budget search"})
    factorized, replaced = [], {}
    for layer in layers:
        if layer.name not in plan:
            continue
        ranks = plan[layer.name]
        orig_params, orig_flops = layer.original_cost()
        new_params, new_flops = layer.cost(ranks)
        if config.only_if_cheaper and new_flops >= orig_flops:
            skipped.append({"layer": layer.name, "reason": f"rank {list(ranks)} of {list(layer.full_ranks)} "
                            f"does not lower cost ({new_flops:,} >= {orig_flops:,} FLOPs)"})
            continue
        replaced[layer.name] = (layer, _factorize(layer, ranks))
        _set_module(student, layer.name, replaced[layer.name][1])
        factorized.append({"layer": layer.name, "kind": layer.kind, "ranks": list(ranks),
                           "full_ranks": list(layer.full_ranks),
                           "flops_before": orig_flops, "flops_after": new_flops})
    if broken(student, example, reference):
        # Some module reads a replaced layer's attributes (``.weight``) directly: put layers back
        # one at a time, keeping each replacement only while the model still works.
        student = copy.deepcopy(original)
        kept = []
        for entry in factorized:
            _set_module(student, entry["layer"], replaced[entry["layer"]][1])
            failure = broken(student, example, reference)
            if failure:
                _set_module(student, entry["layer"], replaced[entry["layer"]][0].module)
                skipped.append({"layer": entry["layer"], "reason": f"its factorization breaks the model ({failure})"})
            else:
                kept.append(entry)
        factorized = kept
    failure = broken(student, example, reference)
    if failure:
        raise InputError(f"low-rank factorization produced a model that does not work ({failure}); nothing returned")
    with torch.no_grad():
        after = model_stats(student, example)
    nothing = None
    if not factorized:
        nothing = ("no layer was factorized: " + "; ".join(f"{e['layer']}: {e['reason']}" for e in skipped[:4])
                   if skipped else "the model has no Linear or Conv1d/Conv2d layer that runs on the example input")
        say(f"lowrank: nothing changed: {nothing}")
    record = {"name": "lowrank", "config": _config_dict(config),
              "metrics": {"params_before": before["params"], "params_after": after["params"],
                          "flops_before": before["flops"], "flops_after": after["flops"],
                          "layers": factorized, "skipped": skipped, "nothing_changed": nothing}}
    carrier = type("_History", (), {})()
    carrier.edgeopt_history = list(previous)
    with_record(student, record, previous=carrier)
    return StepResult(output=student, record=record, history=previous)


def _config_dict(config) -> dict:
    d = asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _as_args(x) -> tuple:
    import torch

    items = x if isinstance(x, (tuple, list)) else (x,)
    return tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in items)


def describe(metrics: dict, config: dict) -> list[str]:
    """What a lowrank record changed, as the report says it (the ranks kept per layer).

    >>> describe({"layers": [{"layer": "fc", "ranks": [4], "full_ranks": [16]}]}, {})
    ['ranks fc [4] of [16]']
    """
    layers = metrics.get("layers") or []
    parts = ["ranks " + (listing([f"{lay.get('layer')} {lay.get('ranks')} of {lay.get('full_ranks')}"
                                  for lay in layers]) or "none factorized")]
    if metrics.get("skipped"):
        parts.append(f"{len(metrics['skipped'])} layers left whole")
    return parts
