"""Structured pruning and low-rank on many architectures: never a broken model, every layer left
alone named with the reason, budgets met, bad inputs refused with one clear line."""

import re

import numpy as np
import pytest
import torch

import edgeopt.compress as ec
from arch_suite import SUITE, build
from edgeopt.compile import ExportConfig, export
from edgeopt.core.errors import InputError
from edgeopt.core.result import StepResult

BIG = {"resnet18": "11M-parameter zoo model", "mobilenetv2": "3.5M-parameter zoo model"}
# Architectures where half the channels cannot go: the reason the record must give.
LEFT_WHOLE = {"tiny_vit": "changes the channel layout"}


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in SUITE])
def test_half_pruning_never_breaks_a_model(name):
    model, x = build(name)
    before = [p.clone() for p in model.parameters()]
    result = ec.prune(model, ec.PruneConfig(amount=0.5), x)
    assert isinstance(result, StepResult) and result.record["name"] == "prune"
    pruned, m = result.output, result.metrics
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "input not mutated"
    assert m["params_after"] == _params(pruned) < m["params_before"]
    assert m["engine"] in ("torch_pruning", "edgeopt") and m["engine_reason"]
    if name in LEFT_WHOLE:
        reasons = " ".join(e["reason"] for e in m["left_whole"])
        assert LEFT_WHOLE[name] in reasons
    else:
        assert m["params_after"] <= 0.6 * m["params_before"], m


def test_zoo_attention_loses_whole_heads(tmp_path):
    model, x = build("tiny_vit")
    r = ec.prune(model, ec.PruneConfig(amount=0.5), x)  # Torch-Pruning fails on its class token
    assert r.metrics["engine"] == "edgeopt"
    assert [(h["heads_before"], h["heads_after"]) for h in r.metrics["heads"]] == [(4, 2), (4, 2)]
    attn = r.output.blocks[0].attn
    assert attn.heads == 2 and attn.qkv.out_features == 3 * 2 * attn.head_dim
    assert export(r.output, ExportConfig(), x.numpy(), out=tmp_path / "vit.onnx").metrics["parity"]["passed"]


def test_fallback_engine_is_recorded_with_the_reason():
    model, x = build("mlp_mixer")  # Torch-Pruning's result fails to run (token-mixing Linear)
    m = ec.prune(model, ec.PruneConfig(amount=0.5), x).metrics
    assert m["engine"] == "edgeopt"
    assert m["engine_reason"].startswith("torch_pruning failed: the result fails to run")
    with pytest.raises(InputError, match=r"structured pruning failed \(torch_pruning failed: the result fails to run"):
        ec.prune(model, ec.PruneConfig(amount=0.5, engine="torch_pruning"), x)


@pytest.mark.parametrize("name", ["concat_residual", "se_residual", "tcn_conv1d", "chunk_gate"])
def test_edgeopt_engine_keeps_joined_tensors_consistent(name):
    # cat + residual and SE gate + residual crashed the fx tracer ("size of tensor a (64) must
    # match b (29)"): an op it does not follow now leaves its output whole as well.
    model, x = build(name)
    r = ec.prune(model, ec.PruneConfig(amount=0.5, engine="edgeopt"), x)
    assert r.metrics["engine"] == "edgeopt"
    assert r.output(x).shape == model(x).shape
    assert r.metrics["params_after"] < r.metrics["params_before"]


def test_edgeopt_engine_prunes_conv1d_and_se_gate_channels():
    model, x = build("tcn_conv1d")
    pruned = ec.prune(model, ec.PruneConfig(amount=0.5, scope="local", engine="edgeopt"), x).output
    assert pruned.blocks[0][0].out_channels == 8 and pruned.blocks[0][1].num_features == 8
    model, x = build("se_residual")
    r = ec.prune(model, ec.PruneConfig(amount=0.5, scope="local", engine="edgeopt"), x)
    layers = {tuple(g["layers"]) for g in r.metrics["groups"]}
    assert ("body.1", "fc2", "stem.0") in {tuple(sorted(g)) for g in layers}, layers


@pytest.mark.parametrize("engine", ["torch_pruning", "edgeopt"])
def test_round_to_keeps_multiples_of_it(engine):
    model, x = build("se_residual")
    pruned = ec.prune(model, ec.PruneConfig(amount=0.5, scope="local", round_to=8, engine=engine), x).output
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths) and sum(widths) < 3 * 16, widths


def test_pruned_suite_model_exports_with_parity(tmp_path):
    model, x = build("se_residual")
    pruned = ec.prune(model, ec.PruneConfig(amount=0.5), x).output
    assert export(pruned, ExportConfig(), x.numpy(), out=tmp_path / "p.onnx").metrics["parity"]["passed"]


def test_nothing_to_prune_says_why():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    r = ec.prune(model, ec.PruneConfig(amount=0.5), torch.zeros(1, 4))
    assert r.metrics["params_after"] == r.metrics["params_before"]
    assert "produces the model output" in r.metrics["nothing_changed"]
    r = ec.lowrank(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=4)).eval(),
                   ec.LowRankConfig(rank_ratio=0.5), torch.zeros(1, 4, 8, 8))
    assert "depthwise convolution (groups=4)" in r.metrics["nothing_changed"]


def test_skip_names_match_exactly():
    assert ec.PruneConfig(amount=0.5, skip="stem.0").skip == ("stem.0",)
    model, x = build("tcn_conv1d")
    r = ec.prune(model, ec.PruneConfig(amount=0.5, skip="blocks.0.0", engine="edgeopt"), x)
    assert r.output.blocks[0][0].out_channels == 16, "the skipped layer keeps its channels"
    assert r.output.blocks[1][0].out_channels < 16, "a name containing the skip name is still pruned"
    assert any("blocks.0.0 listed in skip" in e["reason"] for e in r.metrics["left_whole"])
    with pytest.raises(InputError, match=r"skip names \['block'\] are not modules of the model"):
        ec.prune(model, ec.PruneConfig(amount=0.5, skip="block"), x)  # a substring is no name


def test_flops_budget_met_and_impossible_budget_refused():
    model, x = build("tcn_conv1d")
    calib = torch.randn(8, *x.shape[1:])
    r = ec.prune(model, ec.PruneConfig(flops_budget=0.5), x, calibration=calib)
    m = r.metrics
    assert m["flops_after"] <= 0.5 * m["flops_before"] and r.output(x).shape == model(x).shape
    with pytest.raises(InputError, match=r"params_budget=0.01 cannot be met: .* leaves 0\.\d\d of"):
        ec.prune(model, ec.PruneConfig(params_budget=0.01), x)


@pytest.mark.parametrize("kwargs, message", [
    ({"amount": 1.0}, r"amount must be in \[0, 1\), got 1.0"),
    ({"amount": -0.5}, r"amount must be in \[0, 1\), got -0.5"),
    ({}, "set exactly one of amount, flops_budget, params_budget; got none"),
    ({"amount": 0.5, "flops_budget": 0.5}, r"set exactly one of .* got \['amount', 'flops_budget'\]"),
    ({"params_budget": 1.2}, r"params_budget must be in \(0, 1\)"),
    ({"flops_budget": 0.5, "structured": False}, "need structured=True"),
    ({"amount": 0.5, "engine": "nni"}, "engine must be one of auto, torch_pruning, edgeopt"),
    ({"amount": 0.5, "skip": 3}, "skip must be a list, got 3"),
    ({"amount": 0.5, "skip": ["conv1", 3]}, r"skip must be a list of strings, got \['conv1', 3\]"),
    ({"amount": "0.5"}, "amount must be a number or null, got '0.5'"),
    ({"amount": 0.5, "round_to": 0}, "round_to must be a positive integer or None, got 0"),
])
def test_prune_config_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        ec.PruneConfig(**kwargs)


class DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            y = torch.relu(y)
        return self.b(y)


def test_untraceable_model_names_the_construct():
    with pytest.raises(InputError, match="torch.fx-traceable .* control flow"):
        ec.prune(DataDependent().eval(), ec.PruneConfig(amount=0.5, engine="edgeopt"), torch.randn(1, 3, 8, 8))


# -- low-rank --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["tucker", "cp"])
def test_lowrank_conv1d_full_rank_reproduces_outputs(method):
    model, x = build("tcn_conv1d")
    r = ec.lowrank(model, ec.LowRankConfig(rank_ratio=1.0, only_if_cheaper=False, method=method), x)
    kinds = {e["layer"]: e["kind"] for e in r.metrics["layers"]}
    assert kinds["blocks.0.0"] == method and kinds["inp"] == "conv1x1"
    if method == "tucker":  # CP at full rank is an approximation; Tucker-2 at full rank is exact
        with torch.no_grad():
            assert torch.allclose(r.output(x), model(x), atol=1e-4, rtol=1e-4)
    small = ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.25), x)
    assert small.metrics["params_after"] < small.metrics["params_before"]


def test_lowrank_transformer_linears_and_reasons_for_the_rest():
    model, x = build("vit_encoder")
    r = ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.25), x)
    done = {e["layer"] for e in r.metrics["layers"]}
    assert {"layers.0.mlp.0", "layers.0.mlp.2", "layers.1.mlp.0"} <= done
    skipped = {s["layer"]: s["reason"] for s in r.metrics["skipped"]}
    assert "fused in_proj_weight" in skipped["layers.0.attn"]
    assert r.output(x).shape == model(x).shape


class ReadsWeight(torch.nn.Module):
    """Reads a child's ``.weight`` directly: replacing that child by two layers breaks it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.fc(x) * self.fc.weight.mean())


def test_lowrank_puts_back_a_layer_whose_factorization_breaks_the_model():
    r = ec.lowrank(ReadsWeight().eval(), ec.LowRankConfig(rank_ratio=0.25, only_if_cheaper=False),
                   torch.randn(2, 16))
    skipped = {s["layer"]: s["reason"] for s in r.metrics["skipped"]}
    assert "its factorization breaks the model" in skipped["fc"]
    assert [e["layer"] for e in r.metrics["layers"]] == ["out"]
    assert r.output(torch.randn(2, 16)).shape == (2, 4)


def test_steps_chain_as_step_results_and_report_progress():
    model, x = build("concat_residual")
    lines = []
    first = ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.5), x, progress=lines.append)
    second = ec.prune(first, ec.PruneConfig(amount=0.3), x, progress=lines.append)
    assert [h["name"] for h in second.history] == ["lowrank", "prune"]
    assert [h["name"] for h in ec.history(second.output)] == ["lowrank", "prune"]
    assert any(line.startswith("prune: engine") for line in lines)
    assert np.isfinite(second.output(x).detach().numpy()).all()


class TwoOutputs(torch.nn.Module):
    """Returns a dict whose "feat" entry is an activation after the last conv (not the conv's
    own output), so an engine that only keeps output-producing layers whole changes it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        f = torch.relu(self.b(torch.relu(self.a(x))))
        return {"logits": self.head(f.mean((2, 3))), "feat": f}


def test_output_structure_is_the_invariant():
    model, x = TwoOutputs().eval(), torch.randn(1, 3, 12, 12)
    r = ec.prune(model, ec.PruneConfig(amount=0.5), x)
    assert r.metrics["engine"] == "edgeopt"
    assert re.search(r"output shape \(1, \d+, 8, 8\) differs from the original \(1, 16, 8, 8\)",
                     r.metrics["engine_reason"])
    out = r.output(x)
    assert list(out) == ["logits", "feat"] and out["feat"].shape == (1, 16, 8, 8)
    assert r.metrics["params_after"] < r.metrics["params_before"]  # conv a is still pruned


def test_sensitivity_weights_center_on_one_and_unmeasured_layers_stay_neutral():
    from edgeopt.compress.prune import layer_sensitivity

    model, x = build("vit_encoder")
    w = layer_sensitivity(model, [(x,)])
    assert w["layers.0.attn.out_proj"] == 1.0  # called through its weight only: not measured
    assert np.median([v for k, v in w.items() if "out_proj" not in k]) == pytest.approx(1.0, rel=0.5)
    assert all(v > 0 for v in w.values())
