"""OpenVINO as a runtime: parity with onnxruntime, precision reported, int8 QDQ, study rows, and
a clean exit 2 when the package is missing."""

import json

import numpy as np
import pytest
import torch

from edgeopt.compile import ExportConfig, export
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.core.errors import InputError
from edgeopt.runtimes import load
from helpers import edgeopt_cli, edgeopt_without, example_inputs, tiny_conv_net

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed (pip install -e .[openvino])")


class TwoOutputs(torch.nn.Module):
    """A model of our own: a grouped conv, a residual, an average pool and two outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.g = torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + torch.relu(self.g(h))
        return self.fc(h.mean((2, 3))), torch.sigmoid(h)


def _relative(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.mark.parametrize("model", [tiny_conv_net, TwoOutputs])
def test_fp32_matches_onnxruntime_within_1e_4(model, tmp_path):
    path = export(model(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    ov, ort = load(path, runtime="openvino", precision="f32"), load(path)
    assert ov.chosen_precision == "f32" and ov.version[:4].isdigit()
    for seed in range(3):
        x = example_inputs(seed=seed)
        for a, b in zip(ov.run(x), ort.run(x), strict=True):
            assert _relative(a, b) <= 1e-4


def test_edgeopts_int8_qdq_runs_close_to_onnxruntime_int8(tmp_path):
    fp32 = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    calib = [example_inputs(seed=s) for s in range(16)]
    int8 = quantize(fp32, QuantizeConfig(debug_layers=0), calib, out=tmp_path / "q.onnx").path
    x = np.concatenate([example_inputs(seed=s) for s in range(20, 28)])
    ov, ort, ref = load(int8, runtime="openvino", precision="f32"), load(int8), load(fp32)
    got = np.concatenate([ov.run(x[i:i + 1])[0] for i in range(len(x))])
    want = np.concatenate([ort.run(x[i:i + 1])[0] for i in range(len(x))])
    base = np.concatenate([ref.run(x[i:i + 1])[0] for i in range(len(x))])
    # both runtimes compute the same int8 graph: their gap is far below int8's own error
    assert np.max(np.abs(got - want)) <= 0.25 * np.max(np.abs(want - base)) + 1e-6


def test_a_precision_the_cpu_lacks_is_a_clear_error(tmp_path):
    path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    caps = set(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    with pytest.raises(InputError, match="precision must be one of"):
        load(path, runtime="openvino", precision="int4")
    if "FP16" not in caps:
        with pytest.raises(InputError, match="'f16' needs a CPU with FP16"):
            load(path, runtime="openvino", precision="f16")


@pytest.mark.integration
@pytest.mark.slow  # a whole study (training, quantize, six timed pairs); parity and errors are tested above
def test_a_study_has_openvino_rows_with_the_precision_and_version(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits_cnn\ntask: digits\ntrain: {epochs: 2}\n"
                      "variants:\n  fp32: []\n  int8: [{quantize: {debug_layers: 0}}]\n"
                      "targets:\n  - runtime: onnxruntime\n  - runtime: openvino\n"
                      "  - {runtime: openvino, precision: f32}\nbench: {warmup: 1, repeat: 5}\n")
    r = edgeopt_cli("run", str(recipe), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["variants"]
    ov = [v for v in rows if v["runtime"] == "openvino"]
    assert len(ov) == 4 and all(v.get("status", "ok") != "failed" for v in ov)
    assert all(v["runtime_version"] == openvino.__version__.split("-")[0] for v in ov)
    assert {v["target"].split("/")[-1] for v in ov} >= {"f32"}
    f32 = {v["name"]: v for v in ov if v["target"].endswith("/f32")}
    ort = {v["name"]: v for v in rows if v["runtime"] == "onnxruntime"}
    assert f32["fp32"]["accuracy"] == pytest.approx(ort["fp32"]["accuracy"], abs=0.003)


def test_a_recipe_naming_openvino_without_the_package_exits_2_naming_the_extra(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:digits_cnn\ntask: digits\nvariants: {fp32: []}\n"
                      "targets: [{runtime: openvino}]\n")
    r = edgeopt_without("openvino", "run", recipe, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install -e .[openvino]" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
