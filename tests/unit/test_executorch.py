"""ExecuTorch as a runtime: a .pte with the XNNPACK delegate matches onnxruntime in fp32, runs
PT2E int8, and a recipe naming it without the package exits 2 naming the extra."""


import numpy as np
import pytest
import torch

from edgeopt.compile import ExportConfig, export
from edgeopt.compile.executorch_export import to_executorch
from edgeopt.core.errors import InputError
from edgeopt.pipeline.zoo import create
from edgeopt.runtimes import load
from helpers import edgeopt_without, example_inputs, tiny_conv_net

pytest.importorskip("executorch", reason="the executorch extra is not installed (requirements/executorch.txt)")


class ResidualTwoOutputs(torch.nn.Module):
    """A model of our own: a strided conv, a depthwise conv, a residual add and two outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + torch.nn.functional.hardswish(self.dw(h))
        return self.fc(h.mean((2, 3))), h


def _relative(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.mark.parametrize("make, shape", [(tiny_conv_net, (1, 1, 8, 8)), (ResidualTwoOutputs, (1, 1, 8, 8)),
                                         (lambda: create("digits_cnn"), (1, 1, 32, 32))])
def test_fp32_pte_matches_onnxruntime_within_1e_4(make, shape, tmp_path):
    model = make().eval()
    x = example_inputs(shape)
    art = to_executorch(model, x, tmp_path / "pte")
    assert art.format == "pte" and art.manifest["runtime_version"].startswith("executorch ")
    assert art.history[-1]["metrics"]["delegated_subgraphs"] >= 1, "XNNPACK took the graph"
    onnx = export(model, ExportConfig(), x, out=tmp_path / "m.onnx").path
    et, ort = load(art, threads=2), load(onnx)
    for seed in range(3):
        xs = example_inputs(shape, seed=seed)
        for a, b in zip(et.run(xs), ort.run(xs), strict=True):
            assert _relative(a, b) <= 1e-4


def test_pt2e_int8_is_smaller_and_close(tmp_path):
    model = create("digits_cnn").eval()
    rng = np.random.default_rng(0)
    calib = rng.random((32, 1, 32, 32), dtype=np.float32)
    fp32 = to_executorch(model, calib[:1], tmp_path / "fp32")
    int8 = to_executorch(model, calib[:1], tmp_path / "int8", calibration=calib)
    assert int8.history[-1]["config"]["int8"] and int8.history[-1]["metrics"]["calibration_samples"] == 32
    assert (int8.path / "model.pte").stat().st_size < 0.5 * (fp32.path / "model.pte").stat().st_size
    x = rng.random((1, 1, 32, 32), dtype=np.float32)
    a, b = load(int8).run(x)[0], load(fp32).run(x)[0]
    assert _relative(a, b) < 0.1


def test_calibration_of_the_wrong_shape_is_named(tmp_path):
    with pytest.raises(InputError, match=r"calibration samples have shape \(4, 3, 8, 8\)"):
        to_executorch(tiny_conv_net(), example_inputs(), tmp_path / "q",
                      calibration=np.zeros((4, 3, 8, 8), np.float32))
    assert not (tmp_path / "q").exists()


def test_a_recipe_naming_executorch_without_the_package_exits_2_naming_the_extra(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits_cnn\ntask: digits\nvariants: {fp32: []}\n"
                      "targets: [{runtime: executorch}]\n")
    r = edgeopt_without("executorch", "run", recipe, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install -e .[executorch]" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
@pytest.mark.slow  # a whole study (training, PT2E int8, four timed pairs); parity and int8 are tested above
def test_a_study_has_executorch_rows_fp32_and_pt2e_int8(tmp_path):
    import json

    from helpers import edgeopt_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits_cnn\ntask: digits\ntrain: {epochs: 2}\n"
                      "variants:\n  fp32: []\n  int8: [{quantize: {debug_layers: 0}}]\n"
                      "targets:\n  - runtime: onnxruntime\n  - runtime: executorch\n"
                      "bench: {warmup: 1, repeat: 5}\n")
    r = edgeopt_cli("run", str(recipe), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    rows = {(v["name"], v["runtime"]): v for v in json.loads((tmp_path / "out" / "report.json").read_text())["variants"]}
    assert set(rows) == {(n, rt) for n in ("fp32", "int8") for rt in ("onnxruntime", "executorch")}
    et = rows["fp32", "executorch"]
    assert et["runtime_version"] and et["accuracy"] == pytest.approx(rows["fp32", "onnxruntime"]["accuracy"], abs=0.003)
    assert rows["int8", "executorch"]["accuracy"] > rows["fp32", "executorch"]["accuracy"] - 0.03
