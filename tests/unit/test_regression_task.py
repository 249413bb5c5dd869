"""A regression task (a small conv encoder/decoder judged by mse on an ``.npz`` of target images)
is judged by its own metric everywhere: the report's table, report.md, index.html and the Pareto
front, the int8 accuracy budget, and distillation (fine-tuning a pruned regression model)."""

import json
import textwrap

import numpy as np
import pytest

from helpers import edgeopt_cli

MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyUNet(nn.Module):
        """Encoder/decoder with a skip connection: an image in, an image out."""

        input_shape = (1, 1, 16, 16)

        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(16, 8, 3, padding=1),
                                    nn.ReLU())
            self.out = nn.Conv2d(16, 1, 3, padding=1)

        def forward(self, x):
            e = self.enc(x)
            return self.out(torch.cat([e, self.up(self.down(e))], dim=1))


    def make():
        return TinyUNet()
''')


def regression_data(n: int = 240, seed: int = 0):
    """Noisy images in, the clean (smooth) images out: a denoising task a small net learns fast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float32) / 15.0
    cx, cy, w = rng.uniform(0.2, 0.8, (3, n, 1, 1)).astype(np.float32)
    clean = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.1 * w))[:, None].astype(np.float32)
    noisy = clean + rng.normal(0, 0.2, clean.shape).astype(np.float32)
    return noisy.astype(np.float32), clean.astype(np.float32)


RECIPE = """\
model: mymodels:make
task: images.npz
train: {epochs: 15, lr: 0.01, shift: 0}
variants:
  fp32: []
  pruned: [{prune: {amount: 0.5}}, {distill: {epochs: 3, alpha: 0.5, patience: null}}]
  int8: [{quantize: {method: minmax, max_accuracy_drop: 0.9}}]
targets: [{runtime: onnxruntime}]
bench: {warmup: 1, repeat: 3}
"""


def tiny_unet():
    namespace: dict = {}
    exec(compile(MODEL, "mymodels.py", "exec"), namespace)
    return namespace["make"]()


@pytest.mark.integration
def test_regression_study_reports_mse_per_row(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODEL)
    x, y = regression_data()
    np.savez(tmp_path / "images.npz", x=x, y=y)
    (tmp_path / "study.yaml").write_text(RECIPE)
    r = edgeopt_cli("run", "study.yaml", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["metric"] == "mse" and report["task"]["higher_is_better"] is False
    rows = {v["name"]: v for v in report["variants"]}
    assert set(rows) == {"fp32", "pruned", "int8"}
    assert all(v.get("status", "ok") == "ok" for v in rows.values()), rows
    for v in rows.values():
        tm = v["task_metric"]
        assert tm["name"] == "mse" and tm["higher_is_better"] is False
        assert tm["value"] == v["metric_value"] and tm["value"] >= 0
    # the distillation fine-tuned the pruned model on the task's loss, with val mse as its score
    distill = next(h for h in rows["pruned"]["history"] if h["name"] == "distill")
    assert distill["metrics"]["val_metric"] == "mse" and distill["metrics"]["best_val"] >= 0
    # the int8 budget was judged on mse (relative rise), and recorded as such
    manifest = json.loads((tmp_path / rows["int8"]["artifact"] / "manifest.json").read_text())
    quant = next(h for h in manifest["history"] if h["name"] == "quantize")
    attempts = quant["metrics"]["attempts"]
    assert all(a["metric"] == "mse" and "accuracy" not in a for a in attempts)
    assert attempts[-1]["accuracy_drop"] <= 0.9, "the kept model meets the budget on mse"
    # the Pareto front is on latency and mse in its direction (lower is better)
    best = min(rows.values(), key=lambda v: v["task_metric"]["value"])
    assert best["pareto"], "the row with the lowest mse is on the front"
    # every view names the metric and its direction, and shows no empty accuracy column
    md = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    terminal = next(line for line in (r.stdout + r.stderr).splitlines() if line.startswith("variant "))
    markdown = next(line for line in md.splitlines() if line.startswith("| variant"))
    page = html[html.index("<tr><th>variant</th>"):]
    page = page[:page.index("</tr>")]
    for header in (terminal, markdown, page):
        assert "mse (lower is better)" in header and "cosine to fp32" in header
        assert "accuracy" not in header and "agreement" not in header
    for v in rows.values():
        row = next(line for line in md.splitlines() if line.startswith(f"| {v['name']} |"))
        assert f"{v['task_metric']['value']:.4g}" in row


def test_make_report_front_follows_lower_is_better():
    from edgeopt.pipeline.report_figures import pareto_figure
    from edgeopt.pipeline.report_schema import make_report
    from edgeopt.pipeline.report_text import text_table

    def row(name, ms, mse, cosine):
        return {"name": name, "runtime": "onnxruntime", "target": "cpu", "steps": [],
                "latency_ms": {"median": ms, "p90": ms}, "accuracy": None, "agreement": cosine,
                "agreement_kind": "cosine", "metric_value": mse,
                "task_metric": {"name": "mse", "value": mse, "higher_is_better": False}}

    task = {"name": "images", "metric": "mse", "higher_is_better": False}
    # b is slower than a and has a lower mse: both on the front; c is slower than b with a higher
    # mse: dominated, however close its outputs are to fp32's (cosine)
    r = make_report([row("a", 1.0, 0.07, 0.95), row("b", 2.0, 0.01, 0.80), row("c", 3.0, 0.02, 0.99)],
                    {"threads": 1}, task, None, meta={"created": "2026-01-01"})
    assert [v["pareto"] for v in r["variants"]] == [True, True, False]
    table = text_table(r)
    assert "mse (lower is better)" in table.splitlines()[0] and "accuracy" not in table
    assert "0.07" in table and "cosine to fp32" in table and "0.8000" in table
    fig = pareto_figure(r)
    assert "mse (lower is better)" in fig.axes[0].get_ylabel()
    assert fig.axes[0].yaxis_inverted(), "better (lower mse) is up, as for accuracy"


def _export_unet(tmp_path):
    import torch

    import edgeopt.compile as eoc
    from edgeopt.pipeline.tasks import TrainConfig, Split, Task, train

    x, y = regression_data(160)
    task = Task("images", "mse", (1, 1, 16, 16), 0, Split(x[:100], y[:100]), Split(x[100:130], y[100:130]),
                Split(x[130:146], None), Split(x[146:], y[146:]), model="")
    torch.manual_seed(0)
    model = train(tiny_unet(), task, TrainConfig(epochs=6, lr=0.01, shift=0), progress=False)
    onnx = eoc.export(model, eoc.ExportConfig(), x[:1], out=tmp_path / "fp32")
    return model, task, onnx


def test_quantize_budget_on_regression_eval_data_judges_mse(tmp_path):
    import edgeopt.compress as ec
    from edgeopt.compress.quantize import BudgetMissed
    from edgeopt.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    model, task, onnx = _export_unet(tmp_path)
    # a budget every int8 model meets: the first attempt is kept and it is scored by mse
    r = ec.quantize(onnx, ec.QuantizeConfig(method="minmax", max_accuracy_drop=0.99), task.calib,
                    out=tmp_path / "int8", eval_data=task.val)
    first = r.metrics["attempts"][0]
    fp32_out = OnnxRuntimeRunner(onnx.path).run(task.val.x[:1])[0]
    assert fp32_out.shape == (1, 1, 16, 16)
    assert first["metric"] == "mse" and first["fp32_value"] > 0
    expect = (first["value"] - first["fp32_value"]) / first["fp32_value"]
    assert first["accuracy_drop"] == pytest.approx(expect), "relative rise of mse"
    assert "accuracy" not in first
    # no rise of mse allowed: the fallback keeps the nodes that cost mse in float until it holds
    r = ec.quantize(onnx, ec.QuantizeConfig(method="minmax", max_accuracy_drop=0.0), task.calib,
                    out=tmp_path / "int8-strict", eval_data=task.val)
    last = r.metrics["attempts"][-1]
    assert last["method"] == "fallback" and last["nodes_in_float"] and last["metric"] == "mse"
    assert last["value"] <= last["fp32_value"]
    # and with no node allowed in float: refused in one line naming the metric, nothing written
    with pytest.raises(BudgetMissed) as e:
        ec.quantize(onnx, ec.QuantizeConfig(method="minmax", max_accuracy_drop=0.0, max_float_nodes=0),
                    task.calib, out=tmp_path / "int8-none", eval_data=task.val)
    assert "mse" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "int8-none").exists()


@pytest.mark.integration
def test_quantize_cli_budget_on_regression_task(tmp_path):
    _, task, onnx = _export_unet(tmp_path)
    x, y = regression_data()
    np.savez(tmp_path / "images.npz", x=x, y=y)
    r = edgeopt_cli("compress", "quantize", onnx.path, "--method", "minmax", "--max-accuracy-drop", "0.99",
                    "--calibration-data", "task:images.npz", "--eval-data", "task:images.npz",
                    "--out", tmp_path / "int8", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mse" in r.stdout


def test_distill_regression_uses_mse_and_improves_a_pruned_model():
    import torch

    import edgeopt.compress as ec

    from edgeopt.pipeline.tasks import Split, Task, TrainConfig, train
    from edgeopt.runtimes.torch_runner import torch_outputs

    x, y = regression_data(200)
    task = Task("images", "mse", (1, 1, 16, 16), 0, Split(x[:140], y[:140]), Split(x[140:170], y[140:170]),
                Split(x[170:180], None), Split(x[170:], y[170:]), model="")
    torch.manual_seed(0)
    teacher = train(tiny_unet(), task, TrainConfig(epochs=8, lr=0.01, shift=0), progress=False)
    pruned = ec.prune(teacher, ec.PruneConfig(amount=0.5), x[:1]).output
    before = task.score(torch_outputs(pruned, task.test.x)[0])
    for alpha in (0.0, 0.5):
        r = ec.distill(pruned, ec.DistillConfig(epochs=4, alpha=alpha, lr=3e-3, patience=None), task,
                       teacher=teacher)
        m = r.record["metrics"]
        assert m["val_metric"] == "mse" and m["best_val_top1"] is None
        after = task.score(torch_outputs(r.output, task.test.x)[0])
        assert after < before, f"alpha={alpha}: fine-tuning lowers the pruned model's mse ({before} -> {after})"
    # (x, y) arrays with float targets are a regression too
    r = ec.distill(pruned, ec.DistillConfig(epochs=1, alpha=0.0, patience=None), (x[:64], y[:64]),
                   teacher=teacher)
    assert r.record["metrics"]["loss"] == "mse"
