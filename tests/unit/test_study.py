"""Recipes, the resumable study runner, the report files and the CI gate."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt.pipeline.recipe import parse_recipe
from edgeopt.core.errors import InputError
from helpers import REPO, edgeopt_cli

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies

SMALL = """\
model: zoo:digits_cnn
task: digits
train: {epochs: 3}
variants:
  fp32: []
  pruned+kd:
    - prune: {amount: 0.5, scope: local}
    - distill: {epochs: 3, patience: null}
  pruned+kd+int8:
    - prune: {amount: 0.5, scope: local}
    - distill: {epochs: 3, patience: null}
    - quantize: {method: minmax}
targets:
  - runtime: onnxruntime
bench: {warmup: 1, repeat: 5}
"""


@pytest.mark.parametrize("text, message", [
    (SMALL + "colour: blue\n", "line 16: unknown key 'colour'"),
    (SMALL.replace("prune: {amount: 0.5, scope: local}\n    - distill",
                   "shrink: {amount: 0.5}\n    - distill", 1), "line 7: unknown step 'shrink'"),
    (SMALL.replace("amount: 0.5, scope: local}\n    - distill: {epochs: 3, patience: null}\n  pruned+kd+int8",
                   "amount: 1.5}\n    - distill: {epochs: 3, patience: null}\n  pruned+kd+int8"),
     "line 7: step 'prune' of variant 'pruned\\+kd': amount must be in \\[0, 1\\), got 1.5"),
    (SMALL.replace("repeat: 5", "repeat: many"), "line 15: 'bench.repeat' must be an integer, got 'many'"),
    (SMALL.replace("task: digits", "task: [digits]"), "line 2: 'task' must be a string"),
    (SMALL.replace("- runtime: onnxruntime", "- runtime: tflite"), "line 14: unknown runtime 'tflite'"),
    (SMALL.replace("{method: minmax}", "{method: minmax, bits: 4}"),
     "line 12: step 'quantize' of variant 'pruned\\+kd\\+int8': unknown parameter\\(s\\) \\['bits'\\]"),
    ("model: zoo:digits_cnn\nvariants: {fp32: []}\n", "missing key 'task'"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_malformed_recipes_name_key_and_line(text, message):
    with pytest.raises(InputError, match=message):
        parse_recipe(text, "r.yaml")


def test_tvm_targets_take_precision_and_cuda_graph():
    text = SMALL.replace("- runtime: onnxruntime",
                         "- runtime: tvm\n    target: cuda\n    precision: fp16\n    cuda_graph: false")
    build = parse_recipe(text, "r.yaml").targets[0].build
    assert (build.precision, build.cuda_graph) == ("fp16", False)
    with pytest.raises(InputError, match="line 15: precision 'fp16' on a CPU"):
        parse_recipe(SMALL.replace("- runtime: onnxruntime", "- runtime: tvm\n    precision: fp16"), "r.yaml")
    with pytest.raises(InputError, match="line 15: cuda_graph must be true or false, got 3"):
        parse_recipe(SMALL.replace("- runtime: onnxruntime", "- runtime: tvm\n    cuda_graph: 3"), "r.yaml")


def test_quantize_must_come_last():
    text = SMALL.replace("    - quantize: {method: minmax}\n", "").replace(
        "  pruned+kd+int8:\n", "  pruned+kd+int8:\n    - quantize: {}\n")
    with pytest.raises(InputError, match="comes after quantize"):
        parse_recipe(text, "r.yaml")


def test_run_cli_bad_recipe_exits_2_without_output(tmp_path):
    (tmp_path / "bad.yaml").write_text(SMALL + "colour: blue\n")
    r = edgeopt_cli("run", tmp_path / "bad.yaml", "--out", tmp_path / "out")
    assert r.returncode == 2 and "bad.yaml line 16: unknown key 'colour'" in r.stderr
    assert not (tmp_path / "out").exists()


def test_demo_recipes_match_the_benchmark_files():
    from edgeopt.pipeline.demo import DEMO_RECIPE, DIGITS_RECIPE

    assert (REPO / "benchmarks" / "fashion.yaml").read_text() == DEMO_RECIPE
    assert (REPO / "benchmarks" / "digits.yaml").read_text() == DIGITS_RECIPE


def test_reference_recipes_are_valid():
    from edgeopt.core.errors import InputError
    from edgeopt.pipeline.recipe import load_recipe
    from edgeopt.pipeline.tasks import FASHION_MNIST_PACKAGE, fashion_mnist_files

    try:
        fashion_mnist_files()
        fashion = True
    except InputError:  # `make data` could not install it: the recipe must say how to get it
        fashion = False
    for name in ("digits", "fashion", "resnet18", "mobilenetv2", "tiny_vit", "ci"):
        path = REPO / "benchmarks" / f"{name}.yaml"
        if name == "fashion" and not fashion:
            with pytest.raises(InputError, match=f"install the Debian package {FASHION_MNIST_PACKAGE}"):
                load_recipe(path)
            continue
        assert load_recipe(path).variants["fp32"] == []


def _wait_for_state(path: Path, proc, timeout: float = 300) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists():
            try:
                done = json.loads(path.read_text())["done"]
            except (json.JSONDecodeError, KeyError):
                done = {}
            if done:
                return done
        if proc.poll() is not None:
            raise AssertionError("the run ended before it could be interrupted")
        time.sleep(0.05)
    raise AssertionError("no variant finished in time")


def test_killed_run_resumes_without_redoing_finished_variants(tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(SMALL)
    out = tmp_path / "study"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    exe = Path(sys.executable).with_name("edgeopt")
    proc = subprocess.Popen([str(exe), "run", str(recipe), "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first = _wait_for_state(out / "state.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # killed mid-way, no chance to clean up
    proc.wait()
    assert not (out / "report.json").exists()
    finished = dict(first)

    r = edgeopt_cli("run", recipe, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    for key in finished:
        assert f"{key}: finished in an earlier run, kept" in r.stdout
    report = json.loads((out / "report.json").read_text())
    names = {f"{v['name']}/{v['runtime']}" for v in report["variants"]}
    assert names == {"fp32/onnxruntime", "pruned+kd/onnxruntime", "pruned+kd+int8/onnxruntime"}
    for key, entry in finished.items():
        again = next(v for v in report["variants"] if f"{v['name']}/onnxruntime" == key)
        assert again["latency_ms"] == entry["latency_ms"], "a finished variant was not redone"
    for f in ("report.md", "pareto.png", "index.html"):
        assert (out / f).stat().st_size > 0
    assert "data:image/png;base64," in (out / "index.html").read_text()  # the plot, embedded
    assert any(v["pareto"] for v in report["variants"])


# -- the gate --------------------------------------------------------------------------------

def _report(ratio=0.5, size=1000, acc=0.98, names=("fp32", "int8")):
    return {"schema": 1, "machine": {}, "task": None, "reference": "fp32/onnxruntime",
            "variants": [{"name": n, "runtime": "onnxruntime", "target": "cpu",
                          "latency_ratio": 1.0 if n == "fp32" else ratio, "size_bytes": size,
                          "accuracy": acc, "latency_ms": {"median": 1.0}} for n in names]}


@pytest.mark.parametrize("new, code, words", [
    (_report(), 0, "no regression"),
    (_report(ratio=0.6), 1, "REGRESSION: latency"),
    (_report(size=1100), 1, "REGRESSION: size"),
    (_report(acc=0.97), 1, "REGRESSION: accuracy"),
    (_report(ratio=0.54, size=1005, acc=0.976), 0, "no regression"),
])
def test_check_gate_exit_codes(tmp_path, new, code, words):
    (tmp_path / "base.json").write_text(json.dumps(_report()))
    (tmp_path / "new.json").write_text(json.dumps(new))
    r = edgeopt_cli("check", tmp_path / "new.json", "--baseline", tmp_path / "base.json")
    assert r.returncode == code, r.stdout + r.stderr
    assert words in r.stdout


def test_check_gate_bad_inputs_exit_2(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(_report()))
    (tmp_path / "other.json").write_text(json.dumps({**_report(), "schema": 2}))
    (tmp_path / "fewer.json").write_text(json.dumps(_report(names=("fp32",))))
    r = edgeopt_cli("check", tmp_path / "other.json", "--baseline", tmp_path / "base.json")
    assert r.returncode == 2 and "has schema 2; expected 1" in r.stderr
    r = edgeopt_cli("check", tmp_path / "fewer.json", "--baseline", tmp_path / "base.json")
    assert r.returncode == 2 and "only in the baseline: ['int8/onnxruntime/cpu']" in r.stderr
    r = edgeopt_cli("check", tmp_path / "missing.json", "--baseline", tmp_path / "base.json")
    assert r.returncode == 2 and "does not exist" in r.stderr


def _gate_rows(new, base, **limits):
    from edgeopt.pipeline.gate import Thresholds, compare

    return {r["variant"].split("/")[0]: r for r in compare(new, base, Thresholds(**limits))}


def _unlabelled(agreement=0.99):
    r = _report(acc=None)
    for v in r["variants"]:
        v["agreement"] = 1.0 if v["name"] == "fp32" else agreement
    return r


def test_gate_agreement_gated_by_default_only_without_labels():
    rows = _gate_rows(_unlabelled(0.984), _unlabelled(0.99))
    assert rows["int8"]["regressions"] == ["agreement"] and rows["fp32"]["regressions"] == []
    assert rows["int8"]["limits"]["agreement"] == 0.005
    assert _gate_rows(_unlabelled(0.986), _unlabelled(0.99))["int8"]["regressions"] == []
    labelled_new, labelled_old = _report(), _report()
    labelled_new["variants"][1]["agreement"], labelled_old["variants"][1]["agreement"] = 0.90, 0.99
    assert _gate_rows(labelled_new, labelled_old)["int8"]["regressions"] == []  # labels: shown only
    rows = _gate_rows(labelled_new, labelled_old, max_agreement_drop=0.05)
    assert rows["int8"]["regressions"] == ["agreement"]
    assert abs(rows["int8"]["agreement_drop"] - 0.09) < 1e-9


@pytest.mark.parametrize("metric, higher, old, new, regressed", [
    ("top1", None, 0.98, 0.965, True),
    ("top1", None, 0.98, 0.979, False),
    ("mse", None, 0.10, 0.12, True),   # lower is better: a rise is a regression
    ("mse", None, 0.10, 0.08, False),
    ("psnr", None, 30.0, 29.99, False),
    ("score", True, 5.0, 4.9, True),   # unknown name, direction given by the task
    ("score", False, 5.0, 4.9, False),
])
def test_gate_any_task_metric(metric, higher, old, new, regressed):
    def rep(value):
        r = _report()
        r["task"] = {"name": "t", "metric": metric, **({} if higher is None else {"higher_is_better": higher})}
        r["variants"][1]["metric_value"] = value
        r["variants"][0]["metric_value"] = old
        return r

    row = _gate_rows(rep(new), rep(old), max_metric_drop=0.01)["int8"]
    assert ("metric" in row["regressions"]) == regressed
    assert abs(row["metric_change"] - (new - old)) < 1e-9


def test_gate_metric_errors_and_accuracy_fallback():
    r = _report(acc=0.96)
    r["task"] = {"name": "digits", "metric": "top1"}
    base = {**_report(), "task": {"name": "digits", "metric": "top1"}}
    assert "metric" in _gate_rows(r, base, max_metric_drop=0.01)["int8"]["regressions"]  # from accuracy
    with pytest.raises(InputError, match="unknown whether higher is better"):
        _gate_rows({**r, "task": {"metric": "score"}}, {**base, "task": {"metric": "score"}}, max_metric_drop=0.01)
    with pytest.raises(InputError, match="scored on 'mse', the baseline on 'top1'"):
        _gate_rows({**r, "task": {"metric": "mse"}}, base)
    with pytest.raises(InputError, match="names no task metric"):
        _gate_rows(_report(), _report(), max_metric_drop=0.01)
    from edgeopt.pipeline.gate import Thresholds

    for bad in (-0.1, "0.1", True, float("nan")):
        with pytest.raises(InputError, match="max_metric_drop must be a finite number"):
            Thresholds(max_metric_drop=bad)


def _with_failed(report, name, error="TVM build failed"):
    for v in report["variants"]:
        if v["name"] == name:
            for k in ("latency_ratio", "size_bytes", "accuracy", "latency_ms"):
                v.pop(k)
            v.update(status="failed", error=error)
    return report


def test_gate_failed_variants():
    from edgeopt.pipeline.gate import Thresholds, format_rows

    rows = _gate_rows(_with_failed(_report(), "int8"), _report())
    assert rows["int8"]["status"] == "failed" and rows["int8"]["regressions"] == ["failed"]
    rows = _gate_rows(_with_failed(_report(), "int8"), _with_failed(_report(), "int8", "old reason"))
    assert rows["int8"]["status"] == "failed in both" and rows["int8"]["regressions"] == []
    assert "failed in both (not a regression): TVM build failed" in format_rows(list(rows.values()), Thresholds())
    rows = _gate_rows(_report(), _with_failed(_report(), "int8"))
    assert rows["int8"]["status"] == "recovered" and rows["int8"]["regressions"] == []
    text = format_rows(list(_gate_rows(_unlabelled(0.98), _unlabelled()).values()), Thresholds())
    assert "agreement -0.50 pt (no labels)" in text and "REGRESSION: agreement" in text


def test_check_cli_failed_variant_exits_1(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(_report()))
    (tmp_path / "new.json").write_text(json.dumps(_with_failed(_report(), "int8", "export failed: opset")))
    r = edgeopt_cli("check", tmp_path / "new.json", "--baseline", tmp_path / "base.json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REGRESSION: failed: export failed: opset" in r.stdout


def test_ci_gate_doc_commands_work_from_a_checkout(tmp_path):
    """docs/ci-gate.md: every file it names exists, the committed baseline is a real report of
    the CI recipe, and each `edgeopt check` command it shows runs (on the baseline itself)."""
    import re
    import shlex

    from edgeopt.pipeline.gate import load_report
    from edgeopt.pipeline.recipe import load_recipe

    doc = (REPO / "docs" / "ci-gate.md").read_text()
    for path in set(re.findall(r"\b(?:benchmarks|requirements|docs)/[\w./-]+\.\w+", doc)):
        assert (REPO / path).is_file(), path
    recipe = load_recipe(REPO / "benchmarks" / "ci.yaml")
    baseline = load_report(REPO / "benchmarks" / "ci-baseline.json")
    assert {f"{v['name']}/{v['runtime']}" for v in baseline["variants"]} == \
        {f"{n}/{t.runtime}" for n in recipe.variants for t in recipe.targets}
    assert all(v["latency_ms"]["n"] == recipe.bench["repeat"] for v in baseline["variants"])
    report = tmp_path / "report.json"
    report.write_text(json.dumps(baseline))
    code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", doc, re.S))
    commands = [c for c in re.sub(r"\\\n\s*", " ", code).splitlines() if "edgeopt check " in c]
    assert len(commands) >= 2
    for line in commands:
        args = shlex.split(line[line.index("edgeopt check ") + len("edgeopt "):])
        args = [str(report) if a in ("build/ci/report.json", "build/ci-base/report.json") else a for a in args]
        r = edgeopt_cli(*args, cwd=REPO)
        assert r.returncode == 0 and "no regression in 3 variants" in r.stdout, (line, r.stdout + r.stderr)
    assert "build/ci/index.html" in doc.split("upload-artifact")[1]
