"""Low-rank factorization, pruning and distillation: really smaller, still correct."""

import numpy as np
import pytest
import torch

import edgeopt.compress as ec
from edgeopt.compile import ExportConfig, export
from edgeopt.pipeline.zoo import create
from edgeopt.core.errors import InputError
from helpers import listing


def _rel_err(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


class WithDepthwise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class WithCat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 8, 3, padding=1)
        self.d = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.d(torch.relu(y)).mean(dim=(2, 3))


# -- lowrank ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [
    ("digits_cnn", (2, 1, 32, 32)), ("tiny_vit", (2, 3, 32, 32)),
    # Tucker HOOI at full rank on 512-channel layers: minutes on a shared 2-core machine.
    pytest.param("resnet18", (1, 3, 64, 64), marks=pytest.mark.slow)])
def test_full_rank_factorization_reproduces_outputs(name, shape):
    model = create(name)
    x = torch.randn(*shape)
    full = ec.lowrank(model, ec.LowRankConfig(rank_ratio=1.0, only_if_cheaper=False), x, progress=False).output
    layers = ec.last_record(full)["metrics"]["layers"]
    assert layers and all(entry["ranks"] == entry["full_ranks"] for entry in layers)
    assert _rel_err(model, full, x) <= 1e-4


def test_energy_and_ratio_shrink_and_record_ranks():
    model = create("digits_cnn")
    x = torch.randn(1, 1, 32, 32)
    small = ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.25), x).output
    m = ec.last_record(small)["metrics"]
    assert m["params_after"] < m["params_before"] and m["flops_after"] < m["flops_before"]
    assert ec.count_params(small) == m["params_after"]
    assert ec.count_params(model) == m["params_before"], "the input model is not modified"
    assert small(x).shape == (1, 10)
    # conv1 has one input channel: at 75% of its ranks the three factors cost more than the
    # layer, so it is left alone and listed with the reason.
    mild = ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.75), x).output
    skipped = ec.last_record(mild)["metrics"]["skipped"]
    assert any(s["layer"] == "features.0" and "does not lower cost" in s["reason"] for s in skipped)


def test_depthwise_is_skipped_with_reason():
    small = ec.lowrank(WithDepthwise().eval(), ec.LowRankConfig(rank_ratio=0.5), torch.randn(1, 3, 8, 8)).output
    skipped = {s["layer"]: s["reason"] for s in ec.last_record(small)["metrics"]["skipped"]}
    assert "depthwise convolution (groups=16)" in skipped["dw"]


def test_flops_budget_is_met_and_impossible_budget_is_refused():
    model = create("digits_cnn")
    x = torch.randn(1, 1, 32, 32)
    small = ec.lowrank(model, ec.LowRankConfig(flops_budget=0.6), x, calibration=torch.randn(8, 1, 32, 32),
                       progress=False).output
    m = ec.last_record(small)["metrics"]
    assert m["flops_after"] <= 0.6 * m["flops_before"] * 1.01
    with pytest.raises(InputError, match="flops_budget=0.01 cannot be met"):
        ec.lowrank(model, ec.LowRankConfig(flops_budget=0.01), x, progress=False)


def test_responses_energy_uses_calibration_data():
    model = create("digits_cnn")
    x = torch.randn(1, 1, 32, 32)
    with pytest.raises(InputError, match="needs calibration data"):
        ec.lowrank(model, ec.LowRankConfig(energy=0.9, energy_on="responses"), x)
    small = ec.lowrank(model, ec.LowRankConfig(energy=0.99, energy_on="responses"), x,
                       calibration=torch.randn(16, 1, 32, 32)).output
    assert ec.count_params(small) < ec.count_params(model)


@pytest.mark.parametrize("kwargs, message", [
    ({"energy": 0.0}, "energy must be in \\(0, 1\\]"),
    ({"energy": 1.5}, "energy must be in \\(0, 1\\]"),
    ({"rank_ratio": 0.0}, "rank_ratio must be in \\(0, 1\\]"),
    ({"flops_budget": 1.0}, "flops_budget must be in \\(0, 1\\)"),
    ({}, "set exactly one of"),
    ({"energy": 0.9, "rank_ratio": 0.5}, "set exactly one of"),
    ({"energy": 0.9, "method": "svd"}, "method must be one of tucker, cp"),
])
def test_lowrank_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ec.LowRankConfig(**kwargs)


# -- pruning -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [
    ("digits_cnn", (1, 1, 32, 32)), ("resnet18", (1, 3, 64, 64)),
    # Exports two full-width MobileNetV2s with parity checks (tens of seconds).
    pytest.param("mobilenetv2", (1, 3, 64, 64), marks=pytest.mark.slow)])
def test_structured_pruning_removes_channels_and_exports(name, shape, tmp_path):
    model = create(name)
    x = torch.randn(*shape)
    pruned = ec.prune(model, ec.PruneConfig(amount=0.5, scope="local"), x).output
    m = ec.last_record(pruned)["metrics"]
    assert ec.count_params(pruned) == m["params_after"] < m["params_before"] / 1.8
    assert pruned(x).shape == model(x).shape
    assert all(g["channels_after"] < g["channels_before"] for g in m["groups"])
    result = export(pruned, ExportConfig(), x.numpy(), out=tmp_path / "p.onnx")
    assert result.metrics["parity"]["passed"]
    original = export(model, ExportConfig(), x.numpy(), out=tmp_path / "o.onnx")
    assert result.path.stat().st_size < original.path.stat().st_size


def test_residual_adds_tie_channels_into_one_group():
    pruned = ec.prune(create("resnet18"), ec.PruneConfig(amount=0.5, scope="local", engine="edgeopt"),
                      torch.randn(1, 3, 64, 64)).output
    groups = ec.last_record(pruned)["metrics"]["groups"]
    stem = next(g for g in groups if "conv1" in g["layers"])
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stem["layers"])
    down = next(g for g in groups if "layer2.0.downsample.0" in g["layers"])
    assert {"layer2.0.conv2", "layer2.1.conv2"} <= set(down["layers"])
    mods = dict(pruned.named_modules())
    assert mods["conv1"].out_channels == mods["layer1.0.conv2"].out_channels == 32


def test_unhandled_op_leaves_group_whole_and_named():
    pruned = ec.prune(WithCat().eval(), ec.PruneConfig(amount=0.5, scope="local", engine="edgeopt"),
                      torch.randn(1, 3, 8, 8)).output
    m = ec.last_record(pruned)["metrics"]
    left = {tuple(entry["layers"]): entry["reason"] for entry in m["left_whole"]}
    assert "op cat" in left[("a",)] and "op cat" in left[("b",)]
    assert any("c" in g["layers"] for g in m["groups"]), "the group after the cat is still pruned"


def test_unstructured_pruning_is_permanent():
    model = create("digits_cnn")
    pruned = ec.prune(model, ec.PruneConfig(amount=0.6, structured=False), torch.randn(1, 1, 32, 32)).output
    m = ec.last_record(pruned)["metrics"]
    assert m["overall_sparsity"] == pytest.approx(0.6, abs=0.01)
    for mod in pruned.modules():
        assert not hasattr(mod, "weight_orig") and not hasattr(mod, "weight_mask")
        assert not mod._forward_pre_hooks
    assert set(m["sparsity"]) == {"features.0", "features.4", "features.8", "classifier.1", "classifier.3"}


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_prune_amount_out_of_range(amount):
    with pytest.raises(ValueError, match=r"amount must be in \[0, 1\)"):
        ec.PruneConfig(amount=amount)


# -- distillation ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from edgeopt.pipeline.tasks import TrainConfig, load_task, train

    task = load_task("digits")
    return task, train(create("digits_cnn"), task, TrainConfig(epochs=6), progress=False)


def test_distillation_recovers_a_pruned_model(digits):
    from edgeopt.runtimes.torch_runner import torch_outputs

    task, teacher = digits
    pruned = ec.prune(teacher, ec.PruneConfig(amount=0.5, scope="local"), torch.zeros(1, 1, 32, 32)).output
    before = task.score(torch_outputs(pruned, task.test.x)[0])
    student = ec.distill(pruned, ec.DistillConfig(epochs=3), task, teacher=teacher, progress=False).output
    after = task.score(torch_outputs(student, task.test.x)[0])
    assert after > before + 0.2 and after > 0.9
    names = [r["name"] for r in ec.history(student)]
    assert names == ["prune", "distill"]
    assert ec.last_record(student)["metrics"]["epochs_run"] == 3


def test_distillation_is_deterministic(digits):
    task, teacher = digits
    cfg = ec.DistillConfig(epochs=1, seed=3)
    student = create("digits_cnn", seed=5)
    a = ec.distill(student, cfg, task, teacher=teacher, progress=False).output
    b = ec.distill(student, cfg, task, teacher=teacher, progress=False).output
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_early_stopping_and_batches_and_features(digits):
    task, teacher = digits
    batches = [(task.train.x[i:i + 64], task.train.y[i:i + 64]) for i in range(0, 256, 64)]
    cfg = ec.DistillConfig(epochs=30, patience=1, features=(("features.4", "features.4"),))
    student = ec.distill(create("digits_cnn", seed=1), cfg, batches, teacher=teacher, val=task.val, progress=False).output
    m = ec.last_record(student)["metrics"]
    assert m["epochs_run"] < 30 and m["best_val_top1"] is not None


def test_distillation_bad_inputs(digits):
    task, teacher = digits
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 5))
    with pytest.raises(InputError, match=r"teacher and student outputs differ: teacher \(2, 10\), student \(2, 5\)"):
        ec.distill(other, ec.DistillConfig(epochs=1), task, teacher=teacher, progress=False)
    with pytest.raises(InputError, match="the loader yielded no batch"):
        ec.distill(create("digits_cnn"), ec.DistillConfig(epochs=1), [], teacher=teacher, progress=False)
    with pytest.raises(InputError, match="distillation data is empty"):
        ec.distill(create("digits_cnn"), ec.DistillConfig(epochs=1), (np.zeros((0, 1, 32, 32), np.float32), np.zeros(0)), teacher=teacher, progress=False)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ec.DistillConfig(epochs=1, temperature=0)


def test_step_records_reach_the_artifact_manifest(tmp_path):
    model = create("digits_cnn")
    x = torch.randn(1, 1, 32, 32)
    small = ec.prune(ec.lowrank(model, ec.LowRankConfig(rank_ratio=0.5), x), ec.PruneConfig(amount=0.3), x).output
    art = export(small, ExportConfig(), x.numpy(), out=tmp_path / "art").artifact
    assert [h["name"] for h in art.history] == ["lowrank", "prune", "export"]
    assert listing(tmp_path) == ["art", "art/manifest.json", "art/model.onnx"]
