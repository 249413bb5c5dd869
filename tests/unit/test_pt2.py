""".pt2 files (torch.export programs) in torch-level steps: the program's layers are lifted into
real modules, so prune (both engines), lowrank and distill edit them; the CLI prunes, exports
and benchmarks a .pt2 end to end."""

import json

import numpy as np
import pytest
import torch

import edgeopt.compress as ec
from arch_suite import build
from edgeopt.compile import ExportConfig, export
from edgeopt.compress.pt2 import lift_program
from edgeopt.core.errors import InputError
from edgeopt.pipeline.models import load_model
from helpers import edgeopt_cli

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies

MODELS = ["concat_residual", "se_residual", "tcn_conv1d"]
LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
          torch.nn.LayerNorm)


def _saved(tmp_path, name, **export_kw):
    model, x = build(name)
    path = tmp_path / f"{name}.pt2"
    program = torch.export.export(model, (x,), **export_kw)
    torch.export.save(program, str(path))
    return model, x, path, program


def _layers(module) -> dict:
    return {n: type(m).__name__ for n, m in module.named_modules() if isinstance(m, LAYERS)}


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_lifted_module_has_the_model_layers_and_the_program_outputs(tmp_path, name):
    model, x, path, program = _saved(tmp_path, name)
    lifted = load_model(str(path)).module
    assert _layers(lifted) == _layers(model), "every layer is a module again, under its own name"
    assert _params(lifted) == _params(model), "no parameter is held twice or lost"
    with torch.no_grad():
        assert torch.allclose(lifted(x), program.module()(x), rtol=1e-5, atol=1e-7)
        # The program's guard pinned the batch to 1; the lifted module takes any batch.
        x4 = torch.randn(4, *x.shape[1:])
        assert torch.allclose(lifted(x4), model(x4), rtol=1e-5, atol=1e-6)
    assert lifted.eval() is lifted and lifted.train().training, "eval()/train() work"


@pytest.mark.parametrize("name", MODELS)
def test_pt2_prunes_like_the_model_exports_with_parity_and_factorizes(tmp_path, name):
    model, x, path, _ = _saved(tmp_path, name)
    lifted = load_model(str(path)).module
    result = ec.prune(lifted, ec.PruneConfig(amount=0.5), x)
    m = result.metrics
    assert m["engine"] == "torch_pruning", m["engine_reason"]
    assert m["params_after"] == _params(result.output) < m["params_before"] == _params(model)
    # Torch-Pruning follows the lifted modules exactly as it follows the eager model's.
    assert m["params_after"] == ec.prune(model, ec.PruneConfig(amount=0.5), x).metrics["params_after"]
    with torch.no_grad():
        assert result.output(x).shape == model(x).shape
    exported = export(result.output, ExportConfig(), x.numpy(), out=tmp_path / "onnx")
    assert exported.metrics["parity"]["passed"]
    low = ec.lowrank(lifted, ec.LowRankConfig(energy=0.9), x)
    assert low.metrics["params_after"] <= low.metrics["params_before"]
    assert low.metrics["layers"] or low.metrics["nothing_changed"]
    with torch.no_grad():
        assert low.output(x).shape == model(x).shape


@pytest.mark.parametrize("name", ["se_residual", "tcn_conv1d"])
def test_edgeopt_engine_reads_aten_ops_like_the_model_functions(tmp_path, name):
    model, x, path, _ = _saved(tmp_path, name)
    config = ec.PruneConfig(amount=0.5, engine="edgeopt")
    lifted = ec.prune(load_model(str(path)).module, config, x).metrics
    eager = ec.prune(model, config, x).metrics
    assert lifted["params_after"] == eager["params_after"] < eager["params_before"]


def test_decomposed_program_lifts_convolution_batch_norm_and_addmm():
    model, x = build("concat_residual")
    program = torch.export.export(model, (x,)).run_decompositions()
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.convolution.default", "aten._native_batch_norm_legit_no_training.default",
            "aten.addmm.default"} <= ops
    lifted = lift_program(program)
    assert _layers(lifted) == _layers(model)
    assert lifted.edgeopt_lifted == {"layers": {"Conv2d": 4, "BatchNorm2d": 4, "Linear": 1}, "left": []}
    with torch.no_grad():
        assert torch.allclose(lifted(x), model(x), rtol=1e-5, atol=1e-6)


class SharedAndTransposed(torch.nn.Module):
    """One conv called twice (one module, two call sites) and a transposed conv (left as is)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.up(torch.relu(self.conv(self.conv(x)))))


def test_shared_layer_is_one_module_and_unlifted_ops_stay_functions():
    model, x = SharedAndTransposed().eval(), torch.randn(1, 4, 6, 6)
    lifted = lift_program(torch.export.export(model, (x,)))
    assert _layers(lifted) == {"conv": "Conv2d", "head": "Conv2d"}
    assert [n.target for n in lifted.graph.nodes if n.op == "call_module"] == ["conv", "conv", "head"]
    assert lifted.edgeopt_lifted["left"] == ["conv_transpose2d at conv_transpose2d"]
    assert isinstance(lifted.up.weight, torch.nn.Parameter), "a function's parameters stay attributes"
    with torch.no_grad():
        assert torch.allclose(lifted(x), model(x), rtol=1e-5, atol=1e-6)


def test_bare_program_module_is_lifted_by_the_step():
    model, x = build("concat_residual")
    bare = torch.export.export(model, (x,)).module()
    r = ec.prune(bare, ec.PruneConfig(amount=0.5), x)
    assert r.metrics["params_after"] < r.metrics["params_before"]
    assert r.metrics["params_before"] == _params(model)
    program = torch.export.export(model, (x,))
    assert ec.prune(program, ec.PruneConfig(amount=0.5), x).metrics["params_after"] == r.metrics["params_after"]
    with pytest.raises(InputError, match=r"program does not run on inputs of shape \[\(2, 3, 16, 16\)\] "
                                         r"\(Guard failed: .*\); pass inputs of the shape it was exported with"):
        ec.lowrank(bare, ec.LowRankConfig(energy=0.9), torch.randn(2, 3, 16, 16))


class FixedView(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).view(x.shape[0], 4 * 6 * 6))


def test_fixed_size_view_is_left_whole_and_fixed_batch_refused_by_distill():
    model, x = FixedView().eval(), torch.randn(1, 3, 8, 8)
    lifted = lift_program(torch.export.export(model, (x,)))
    m = ec.prune(lifted, ec.PruneConfig(amount=0.5), x).metrics
    assert m["engine"] == "edgeopt" and m["params_after"] == m["params_before"]
    assert "view at view_default fixes the shape [1, 144] in the exported graph" in m["nothing_changed"]
    xs = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype("float32")
    ys = np.zeros(8, dtype="int64")
    with pytest.raises(InputError, match=r"cannot take .* export it with a dynamic batch .* or pass zoo:NAME"):
        ec.distill(lifted, ec.DistillConfig(epochs=1, batch_size=4), (xs, ys), teacher=model)


def test_dynamic_batch_program_distills():
    model, x = FixedView().eval(), torch.randn(2, 3, 8, 8)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    lifted = lift_program(program)
    xs = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype("float32")
    ys = np.zeros(8, dtype="int64")
    r = ec.distill(lifted, ec.DistillConfig(epochs=1, batch_size=4), (xs, ys), teacher=model)
    assert r.metrics["epochs_run"] == 1
    assert not torch.equal(r.output.bn.running_mean, lifted.bn.running_mean), "BatchNorm trained"
    with torch.no_grad():
        assert r.output(torch.from_numpy(xs)).shape == (8, 5)


def test_cli_prunes_exports_and_benchmarks_a_pt2(tmp_path):
    """The must-show: a .pt2 of a concat + residual CNN is pruned, exported and benchmarked."""
    _, _, path, _ = _saved(tmp_path, "concat_residual")
    r = edgeopt_cli("compress", "prune", path, "--amount", "0.5", "--out", tmp_path / "pruned")
    assert r.returncode == 0, r.stderr
    assert "prune: params 4,282 -> 1,239" in r.stdout and "parity" in r.stdout
    manifest = json.loads((tmp_path / "pruned" / "manifest.json").read_text())
    assert [h["name"] for h in manifest["history"]] == ["prune", "export"]
    assert manifest["history"][0]["metrics"]["params_after"] < manifest["history"][0]["metrics"]["params_before"]
    r = edgeopt_cli("bench", tmp_path / "pruned", "--runtime", "onnxruntime", "--repeat", "5")
    assert r.returncode == 0, r.stderr
    assert "runtime onnxruntime: median" in r.stdout and "n 5" in r.stdout


def test_lifted_module_survives_deepcopy_and_torch_save(tmp_path):
    """Steps deepcopy their input, distributed distillation torch.saves it for its workers."""
    import copy

    from edgeopt.compress.pt2 import is_exported_program_module

    model, x = build("tcn_conv1d")
    lifted = lift_program(torch.export.export(model, (x,)))
    copied = copy.deepcopy(lifted)
    assert not is_exported_program_module(copied), "still marked as lifted"
    torch.save(lifted, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert _layers(loaded) == _layers(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), lifted(x)) and torch.equal(copied(x), lifted(x))
