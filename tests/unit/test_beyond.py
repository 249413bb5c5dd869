"""Beyond top-1: per-class accuracy, slices, calibration, robustness, exemplars; the gate's new
limits; ``edgeopt shadow``."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.core.errors import CheckFailed, InputError
from edgeopt.pipeline import evaluate as ev
from helpers import REPO, edgeopt_cli, tiny_conv_net

STUDY = """\
model: helpers:tiny_conv_net
task: helpers:tiny_image_task
train: {epochs: 2, batch_size: 32}
variants:
  fp32: []
  pruned:
    - prune: {amount: 0.75, scope: local}
  int8:
    - quantize: {method: minmax}
targets:
  - runtime: onnxruntime
bench: {warmup: 1, repeat: 3, threads: 1}
evaluate: {samples: 24, thumbnails: 12}
"""


# -- evaluation functions ---------------------------------------------------------------------

def test_ece_equals_a_direct_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (500, 4))
    labels = rng.integers(0, 4, 500)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    direct = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            direct += m.sum() / 500 * abs(np.mean(pred[m] == labels[m]) - conf[m].mean())
    got = ev.expected_calibration_error(logits, labels)
    assert got["ece"] == pytest.approx(direct, abs=1e-12)
    assert sum(got["count"]) == 500 and got["bins"] == 15


def test_per_class_and_the_worst_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    ref = np.array([0, 0, 1, 1, 2, 0])
    pred = np.array([0, 0, 0, 0, 2, 0])      # class 1 lost both; class 2 unchanged
    rows = ev.per_class(pred, ref, y, ("a", "b"), 3)
    assert [r["accuracy"] for r in rows] == [1.0, 0.0, 0.5]
    assert [r["change"] for r in rows] == [0.0, -1.0, 0.0]
    assert ev.worst_class(rows) == {"class": 1, "name": "b", "n": 2, "accuracy": 0.0,
                                    "fp32_accuracy": 1.0, "change": -1.0}


def test_perturbations_are_seeded_and_keep_shapes():
    x = np.random.default_rng(1).normal(size=(5, 1, 8, 8)).astype(np.float32)
    a, b = ev.perturbations(x, 3), ev.perturbations(x, 3)
    assert set(a) == {"noise", "shift", "brightness", "contrast"}
    for k in a:
        assert a[k].shape == x.shape and a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["noise"], ev.perturbations(x, 4)["noise"])
    assert not np.array_equal(a["shift"], x)
    # contrast keeps each image's mean; vector inputs only get noise
    np.testing.assert_allclose(a["contrast"].mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
    assert set(ev.perturbations(np.zeros((3, 5), np.float32), 0)) == {"noise"}


def test_slices_cover_every_sample_once():
    x = np.random.default_rng(2).normal(size=(30, 1, 8, 8)).astype(np.float32)
    masks = ev.slice_masks(x, np.array(["a", "b", "c"] * 10))
    for kind in ("brightness", "contrast", "group"):
        total = sum(m.astype(int) for _, m in masks[kind])
        assert (total == 1).all()


def test_task_groups_contract():
    from edgeopt.pipeline.task_sources import TaskData, task_from_data
    from edgeopt.pipeline.tasks import limit_task, load_task

    task = load_task("helpers:tiny_image_task")
    assert task.test_groups.tolist()[:3] == ["even", "odd", "even"]
    assert len(limit_task(task, 10).test_groups) == 10
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match="one value per test sample"):
        task_from_data(TaskData(train=(x, np.arange(4)), calib=x, test=(x, np.arange(4)), groups=[1, 2]), "t")


def test_recipe_evaluate_section_is_checked():
    from edgeopt.pipeline.recipe import parse_recipe

    assert parse_recipe(STUDY, "r.yaml").evaluate == {"samples": 24, "thumbnails": 12}
    with pytest.raises(InputError, match="line 13: unknown key 'colour' in 'evaluate'"):
        parse_recipe(STUDY.replace("samples: 24", "colour: 24"), "r.yaml")
    with pytest.raises(InputError, match="samples must be an integer >= 1"):
        parse_recipe(STUDY.replace("samples: 24", "samples: 0"), "r.yaml")
    with pytest.raises(InputError, match="'evaluate.robustness' must be true or false"):
        parse_recipe(STUDY.replace("samples: 24", "robustness: 3"), "r.yaml")


# -- a whole (tiny) study ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from edgeopt.pipeline.recipe import parse_recipe
    from edgeopt.pipeline.run import run_recipe

    out = tmp_path_factory.mktemp("beyond")
    report = run_recipe(parse_recipe(STUDY, "beyond.yaml"), out, progress=None)
    return out, report


def test_study_entries_carry_the_evaluation(study):
    from edgeopt.pipeline.tasks import load_task

    out, report = study
    task = load_task("helpers:tiny_image_task")
    by = {v["name"]: v for v in report["variants"]}
    for v in by.values():
        assert [r["name"] for r in v["per_class"]] == ["top", "middle", "bottom"]
        assert sum(r["n"] for r in v["per_class"]) == len(task.test)
        # the per-class accuracies weighted by class size give the mean accuracy
        mean = sum(r["accuracy"] * r["n"] for r in v["per_class"]) / len(task.test)
        assert mean == pytest.approx(v["accuracy"])
        assert v["worst_class"]["change"] == min(r["change"] for r in v["per_class"])
        assert 0 <= v["ece"] <= 1 and sum(v["calibration"]["count"]) == len(task.test)
        assert set(v["slices"]) == {"brightness", "contrast", "group"}
        assert [s["slice"] for s in v["slices"]["group"]] == ["even", "odd"]
        rob = v["robustness"]
        assert rob["samples"] == 24 and set(rob["perturbations"]) == {"noise", "shift", "brightness", "contrast"}
        assert set(v["invariance"]) == set(rob["perturbations"])
        assert "pareto_worst_class" in v
    fp32 = by["fp32"]
    assert fp32["exemplars"]["count"] == 0 and fp32["worst_class"]["change"] == 0.0
    assert all(p["agreement"] == 1.0 for p in fp32["robustness"]["perturbations"].values())
    assert fp32["ece"] == pytest.approx(fp32["ece_fp32"], abs=1e-6)


def test_exemplars_are_saved_and_counted(study):
    out, report = study
    pruned = next(v for v in report["variants"] if v["name"] == "pruned")
    ex = pruned["exemplars"]
    data = np.load(out / ex["file"])
    assert len(data["x"]) == len(data["index"]) == ex["count"] == sum(ex["per_class"].values())
    # exactly the inputs where the variant's top-1 differs from fp32's: 1 - agreement
    assert ex["count"] == round((1 - pruned["agreement"]) * 60)
    assert (data["pred"] != data["fp32_pred"]).all()
    assert ex["count"] > 0 and (out / ex["thumbnails"]).is_file()  # 75% of channels pruned, no retraining


def test_report_views_show_the_evaluation(study):
    out, report = study
    md = (out / "report.md").read_text()
    for heading in ("## Beyond top-1", "## Per-class accuracy", "## Slice: brightness", "## Slice: group",
                    "## Robustness", "## Compression-identified exemplars"):
        assert heading in md
    page = (out / "index.html").read_text()
    assert (out / "reliability.png").is_file()
    assert 'id="calibration"' in page and 'id="classes"' in page
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert sources and all(s.startswith("data:") for s in sources)  # self-contained
    assert "exemplar thumbnails of pruned/onnxruntime" in page


# -- the gate ------------------------------------------------------------------------------------

def _gate_report(class_acc, ece=0.05, robust=0.80, acc=0.90):
    rows = [{"class": c, "name": f"c{c}", "n": 100, "accuracy": a, "fp32_accuracy": 0.9, "change": a - 0.9}
            for c, a in enumerate(class_acc)]
    return {"schema": 1, "task": {"name": "t", "metric": "top1", "higher_is_better": True}, "variants": [
        {"name": "int8", "runtime": "onnxruntime", "target": "cpu", "latency_ratio": 0.5, "size_bytes": 100,
         "accuracy": acc, "agreement": 0.99, "per_class": rows, "ece": ece,
         "robustness": {"samples": 100, "perturbations": {"noise": {"accuracy": robust, "fp32_accuracy": 0.8}}}}]}


def test_check_catches_one_class_dropping_while_the_mean_holds(tmp_path):
    base = _gate_report([0.9, 0.9, 0.9, 0.9])
    new = _gate_report([0.98, 0.98, 0.98, 0.66])   # mean 0.90 either way
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "new.json").write_text(json.dumps(new))
    r = edgeopt_cli("check", tmp_path / "new.json", "--baseline", tmp_path / "base.json", "--max-class-drop", "0.05")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REGRESSION: class" in r.stdout and "-24.00 pt (c3)" in r.stdout
    r = edgeopt_cli("check", tmp_path / "base.json", "--baseline", tmp_path / "base.json", "--max-class-drop", "0.05")
    assert r.returncode == 0, r.stdout + r.stderr


def test_gate_ece_and_robustness_limits():
    from edgeopt.pipeline.gate import Thresholds, compare

    base = _gate_report([0.9, 0.9])
    worse = _gate_report([0.9, 0.9], ece=0.09, robust=0.70)
    assert compare(worse, base, Thresholds())[0]["regressions"] == []   # not gated by default
    rows = compare(worse, base, Thresholds(max_ece_increase=0.02, max_robust_drop=0.05))
    assert rows[0]["regressions"] == ["ece", "robust"]
    assert rows[0]["ece_increase"] == pytest.approx(0.04) and rows[0]["robust_drop"] == pytest.approx(0.10)
    with pytest.raises(InputError, match="max_class_drop must be a finite number"):
        Thresholds(max_class_drop=-1)


# -- shadow ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    import torch

    from edgeopt.compile import ExportConfig, export

    d = tmp_path_factory.mktemp("shadow")
    champion = tiny_conv_net()
    candidate = tiny_conv_net()
    with torch.no_grad():
        candidate.fc.weight.add_(0.3 * torch.randn_like(candidate.fc.weight))
    x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    export(champion, ExportConfig(), x, out=d / "champion")
    export(candidate, ExportConfig(), x, out=d / "candidate")
    log = np.random.default_rng(1).normal(size=(300, 1, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        a = candidate(torch.from_numpy(log)).numpy().astype(np.float64)
        b = champion(torch.from_numpy(log)).numpy().astype(np.float64)
    sqnr = 10 * np.log10(np.sum(b ** 2) / np.sum((a - b) ** 2))
    return d, log, np.flatnonzero(a.argmax(1) != b.argmax(1)), sqnr


@pytest.mark.parametrize("form", ["npy", "npz", "folder"])
def test_shadow_disagreement_equals_a_direct_computation(two_models, tmp_path, form):
    from edgeopt.pipeline.shadow import shadow

    d, log, direct, sqnr = two_models
    if form == "npy":
        path = tmp_path / "log.npy"
        np.save(path, log)
    elif form == "npz":
        path = tmp_path / "log.npz"
        np.savez_compressed(path, x=log)
    else:
        path = tmp_path / "logs"
        path.mkdir()
        np.save(path / "a.npy", log[:100])
        for i in range(100, 300):       # one sample per file too
            np.save(path / f"b{i:04d}.npy", log[i])
    s = shadow(str(d / "candidate"), str(d / "champion"), path, out=tmp_path / "out", chunk=64)
    assert 0 < len(direct) < 300
    assert s["inputs"] == 300 and s["disagreements"] == len(direct)
    assert s["disagreement"] == pytest.approx(len(direct) / 300)
    saved = np.load(tmp_path / "out" / "disagreements.npy")
    np.testing.assert_array_equal(saved, log[direct])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "disagreements.npz")["index"], direct)
    assert s["sqnr_db"] == pytest.approx(sqnr, abs=0.01) and s["kl_mean"] > 0
    assert json.loads((tmp_path / "out" / "shadow.json").read_text())["disagreements"] == len(direct)


def test_shadow_cli_exit_codes(two_models, tmp_path):
    d, log, direct, sqnr = two_models
    np.save(tmp_path / "log.npy", log[:100])
    args = ("shadow", d / "candidate", "--champion", d / "champion", "--inputs", tmp_path / "log.npy",
            "--out", tmp_path / "out")
    r = edgeopt_cli(*args, "--max-disagreement", "0.0")
    assert r.returncode == 1 and "check failed: disagreement" in r.stderr
    assert (tmp_path / "out" / "disagreements.npy").is_file()
    r = edgeopt_cli(*args, "--max-disagreement", "1.0")
    assert r.returncode == 0 and "disagreement:" in r.stdout
    np.save(tmp_path / "bad.npy", np.zeros((5, 3), np.float32))
    r = edgeopt_cli("shadow", d / "candidate", "--champion", d / "champion", "--inputs", tmp_path / "bad.npy")
    assert r.returncode == 2 and "samples of shape (3,)" in r.stderr and len(r.stderr.splitlines()) == 1
    r = edgeopt_cli("shadow", d / "candidate", "--champion", d / "champion", "--inputs", tmp_path / "none.npy")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_unlabelled_and_regression_tasks(tmp_path):
    from edgeopt.pipeline.report_schema import make_report
    from edgeopt.pipeline.report_text import markdown
    from edgeopt.pipeline.tasks import load_task

    task = load_task("random", input_shape=(1, 1, 8, 8))          # no labels: agreement only
    w = np.random.default_rng(0).normal(size=(64, 4))
    fn = lambda x: x.reshape(len(x), -1) @ w  # noqa: E731
    e = ev.Evaluation(task, fn(task.test.x), fn, ev.EvaluateConfig(samples=8), out=tmp_path)
    fields = e.evaluate(fn(task.test.x) + 0.5 * np.random.default_rng(1).normal(size=(32, 4)), fn, "v/ort/cpu")
    assert "per_class" not in fields and "ece" not in fields
    assert fields["robustness"]["perturbations"]["noise"]["accuracy"] is None
    assert fields["exemplars"]["count"] == len(np.load(tmp_path / fields["exemplars"]["file"])["index"])
    entry = {"name": "v", "runtime": "ort", "target": "cpu", "latency_ms": {"median": 1.0}, "accuracy": None,
             "agreement": 0.9, **fields}
    assert "## Robustness" in markdown(make_report([entry], {}, None, None))
    # regression outputs (one value per input) get no evaluation fields
    reg = ev.Evaluation(task, fn(task.test.x)[:, :1], lambda x: fn(x)[:, :1], out=None)
    assert reg.evaluate(fn(task.test.x)[:, :1], fn, "r") == {}
