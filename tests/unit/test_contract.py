"""The one step contract, the step registry and the defects the contract review found."""

import ast
import json

import numpy as np
import pytest
import torch

import edgeopt.compile as eoc
import edgeopt.compress as ec
from edgeopt.core.errors import InputError
from edgeopt.core.result import StepResult
from edgeopt.pipeline.steps import STEPS, make_step
from helpers import REPO, edgeopt_cli, example_inputs, listing, tiny_conv_net


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    return eoc.export(tiny_conv_net(), eoc.ExportConfig(), example_inputs(), out=d / "fp32")


def test_steps_chain_through_step_results_and_carry_history(exported, tmp_path):
    assert isinstance(exported, StepResult) and exported.artifact is not None
    calib = [example_inputs(seed=s) for s in range(4)]
    q = ec.quantize(exported, ec.QuantizeConfig(method="minmax"), calib, out=tmp_path / "int8")
    assert [r["name"] for r in q.history] == ["export", "quantize"]
    assert [r["name"] for r in q.artifact.history] == ["export", "quantize"]
    # an artifact folder is accepted by build (it was refused before) and its history carried
    b = eoc.build(tmp_path / "int8", eoc.BuildConfig(target="cpu"), out=tmp_path / "tvm")
    assert [r["name"] for r in b.artifact.history] == ["export", "quantize", "compile"]
    assert b.record is b.history[-1] and b.metrics["int8_ops"] > 0


def test_torch_steps_return_step_results_that_export_carries(tmp_path):
    x = torch.from_numpy(example_inputs())
    pruned = ec.prune(tiny_conv_net(), ec.PruneConfig(amount=0.5), x)
    assert isinstance(pruned, StepResult) and isinstance(pruned.output, torch.nn.Module)
    art = eoc.export(pruned, eoc.ExportConfig(), x, out=tmp_path / "p").artifact
    assert [r["name"] for r in art.history] == ["prune", "export"]


def test_distill_takes_input_config_data(tmp_path):
    from edgeopt.pipeline.tasks import Split

    rng = np.random.default_rng(0)
    data = Split(rng.standard_normal((32, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 32))
    teacher = tiny_conv_net()
    r = ec.distill(tiny_conv_net(), ec.DistillConfig(epochs=1, batch_size=16), data, teacher=teacher)
    assert isinstance(r, StepResult) and r.record["name"] == "distill"
    with pytest.raises(InputError, match="teacher"):
        ec.distill(tiny_conv_net(), ec.DistillConfig(epochs=1), data)


def test_a_step_refuses_anything_but_its_config_in_second_place(exported, tmp_path):
    """Data or a target where the config belongs is named, with the call to write instead."""
    x = example_inputs()
    with pytest.raises(InputError, match=r"export needs an ExportConfig .* got ndarray"):
        eoc.export(tiny_conv_net(), x, out=tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"quantize needs a QuantizeConfig .* got list"):
        ec.quantize(exported, [x], ec.QuantizeConfig(), out=tmp_path / "q.onnx")
    with pytest.raises(InputError, match=r"build needs a BuildConfig .* got str: "
                                         r"call build\(model, BuildConfig\(target='cuda'\), out=...\)"):
        eoc.build(exported, "cuda", out=tmp_path / "tvm")
    with pytest.raises(InputError, match=r"distill needs a DistillConfig .* got .*teacher=teacher"):
        ec.distill(tiny_conv_net(), tiny_conv_net(), x, teacher=tiny_conv_net())
    with pytest.raises(InputError, match="unknown parameter"):
        make_step("quantize", {"calibration": "minmax"})
    assert listing(tmp_path) == []


def test_progress_is_one_argument_everywhere(tmp_path, capsys):
    lines = []
    eoc.export(tiny_conv_net(), None, example_inputs(), out=tmp_path / "a.onnx", progress=lines.append)
    assert any("parity" in ln for ln in lines)
    eoc.export(tiny_conv_net(), None, example_inputs(), out=tmp_path / "b.onnx", progress=True)
    assert "parity" in capsys.readouterr().err
    with pytest.raises(InputError, match="progress must be"):
        eoc.export(tiny_conv_net(), None, example_inputs(), out=tmp_path / "c.onnx", progress="yes")


def test_export_keeps_the_callers_training_mode(tmp_path):
    model = tiny_conv_net().train()
    model.bn.eval()  # a mixed mode must come back as it was, not flattened
    eoc.export(model, None, example_inputs(), out=tmp_path / "m.onnx")
    assert model.training and model.conv.training and not model.bn.training


def test_dict_outputs_export_with_parity(tmp_path):
    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.fc(x), "embedding": x * 2}

    r = eoc.export(Heads(), None, torch.zeros(1, 4), out=tmp_path / "d.onnx")
    assert r.metrics["parity"]["passed"]


@pytest.mark.parametrize("make, message", [
    (lambda: ec.DistillConfig(epochs=1, alpha="0.5"), "alpha must be a number, got '0.5'"),
    (lambda: ec.DistillConfig(epochs=True), "epochs must be an integer"),
    (lambda: ec.QuantizeConfig(per_channel="yes"), "per_channel must be true or false"),
    (lambda: eoc.ExportConfig(rtol="1e-4"), "rtol must be a number"),
    (lambda: eoc.TuneConfig(trials="64"), "trials must be an integer"),
    (lambda: eoc.BuildConfig(target="gpu9000"), "unknown target 'gpu9000'"),
])
def test_configs_name_the_field_of_a_wrong_type(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_quantize_refuses_an_already_quantized_model(exported, tmp_path):
    calib = [example_inputs(seed=s) for s in range(2)]
    q = ec.quantize(exported, None, calib, out=tmp_path / "q1.onnx")
    with pytest.raises(InputError, match="already quantized"):
        ec.quantize(q, None, calib, out=tmp_path / "q2.onnx")
    assert not (tmp_path / "q2.onnx").exists()


def test_budget_needing_labels_is_refused_before_calibration(exported, tmp_path):
    with pytest.raises(InputError, match="needs labelled eval_data"):
        ec.quantize(exported, ec.QuantizeConfig(max_accuracy_drop=0.01), None,
                    out=tmp_path / "q.onnx", eval_data=np.zeros((4, 1, 8, 8), np.float32))


# -- the registry ---------------------------------------------------------------------------

def test_registry_builds_validated_configs():
    step = make_step("prune", {"amount": 0.5})
    assert step.config == ec.PruneConfig(amount=0.5) and step.to_dict() == {"prune": {"amount": 0.5}}
    with pytest.raises(InputError, match="missing required parameter"):
        make_step("distill", {})
    with pytest.raises(InputError, match="unknown step 'shrink'"):
        make_step("shrink", {})


def _names_used(path):
    tree = ast.parse(path.read_text())
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


def test_the_registry_is_the_only_map_from_step_names_to_functions():
    step_symbols = set()
    for kind in STEPS.values():
        step_symbols |= {kind.config.__name__, kind.function.__name__}
    users = [REPO / "pipeline" / "recipe.py", REPO / "pipeline" / "study.py",
             REPO / "pipeline" / "cli" / "compress.py", REPO / "pipeline" / "cli" / "compile.py"]
    for path in users:
        used = _names_used(path)
        assert used & {"STEPS", "make_step", "apply_step", "kind"}, f"{path.name} does not use the registry"
        # (a local variable may be called build; an import of a step's function or config may not)
        imported = {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)
                    for a in n.names}
        named = imported | (used & {kind.config.__name__ for kind in STEPS.values()})
        assert not named & step_symbols, f"{path.name} names step functions/configs directly: {named & step_symbols}"


def test_cli_options_are_the_config_fields():
    import dataclasses

    r = edgeopt_cli("compress", "lowrank", "--help")
    assert r.returncode == 0
    for f in dataclasses.fields(ec.LowRankConfig):
        assert "--" + f.name.replace("_", "-") in r.stdout


def test_recipe_targets_take_tuning_keys():
    from edgeopt.pipeline.recipe import parse_recipe

    r = parse_recipe("model: zoo:digits_cnn\ntask: digits\nvariants: {fp32: []}\n"
                     "targets: [{runtime: tvm, target: cpu, tune_trials: 64, tune_timeout_s: 30}]\n")
    assert r.targets[0].build.tune.trials == 64 and r.targets[0].build.tune.timeout_s == 30


# -- the study survives a failing variant -----------------------------------------------------

FAILING = """\
model: helpers:tiny_conv_net
task: random
input_shape: [1, 1, 8, 8]
variants:
  fp32: []
  broken: [{distill: {epochs: 1, features: [[nope, nope]]}}]
targets: [{runtime: onnxruntime}]
bench: {warmup: 1, repeat: 3}
"""


def test_a_failing_variant_is_recorded_and_the_study_goes_on(tmp_path):
    (tmp_path / "r.yaml").write_text(FAILING)
    r = edgeopt_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "1 of 2 variant/target pairs failed" in r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    broken = next(v for v in report["variants"] if v["name"] == "broken")
    assert broken["status"] == "failed" and "no module 'nope'" in broken["error"]
    assert (tmp_path / "out" / "failures" / "broken--onnxruntime.txt").read_text().startswith("Traceback")
    ok = next(v for v in report["variants"] if v["name"] == "fp32")
    assert ok["latency_ratio"] == 1.0


def test_a_factory_that_fails_leaves_no_output(tmp_path):
    (tmp_path / "r.yaml").write_text(FAILING.replace("helpers:tiny_conv_net", "helpers:no_such_factory"))
    r = edgeopt_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert r.returncode == 2 and "no_such_factory" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_tvm_target_in_a_recipe_fails_before_any_work(tmp_path):
    (tmp_path / "r.yaml").write_text(FAILING.replace("targets: [{runtime: onnxruntime}]",
                                                     "targets: [{runtime: tvm, target: cpu9}]"))
    r = edgeopt_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert r.returncode == 2 and "line 7: unknown target 'cpu9'" in r.stderr
    assert not (tmp_path / "out").exists() or listing(tmp_path / "out") == []


def test_outputs_get_the_users_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        art = eoc.export(tiny_conv_net(), None, example_inputs(), out=tmp_path / "art").artifact
        single = eoc.export(tiny_conv_net(), None, example_inputs(), out=tmp_path / "m.onnx").path
        from edgeopt.core.files import write_json_atomic

        write_json_atomic(tmp_path / "state.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(art.path.stat().st_mode) == 0o755
    for f in [*art.path.iterdir(), single, tmp_path / "state.json"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_a_third_party_onnx_model_runs_a_study(exported, tmp_path):
    recipe = (f"model: {exported.path}\ntask: random\nvariants:\n  fp32: []\n"
              "  int8: [{quantize: {method: minmax}}]\ntargets: [{runtime: onnxruntime}]\n"
              "bench: {warmup: 1, repeat: 3}\n")
    (tmp_path / "r.yaml").write_text(recipe)
    r = edgeopt_cli("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    assert [h["name"] for h in int8["history"]] == ["prepare", "quantize"]
    assert 0.5 <= int8["agreement"] <= 1.0 and int8["params"] > 0

    (tmp_path / "bad.yaml").write_text(recipe.replace("[{quantize: {method: minmax}}]", "[{prune: {amount: 0.5}}]"))
    r = edgeopt_cli("run", tmp_path / "bad.yaml", "--out", tmp_path / "bad")
    assert r.returncode == 2 and "needs a torch model" in r.stderr and not (tmp_path / "bad").exists()
