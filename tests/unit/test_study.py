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
    - quantize: {calibration: minmax}
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
    (SMALL.replace("{calibration: minmax}", "{calibration: minmax, bits: 4}"),
     "line 12: step 'quantize' of variant 'pruned\\+kd\\+int8': unknown parameter\\(s\\) \\['bits'\\]"),
    ("model: zoo:digits_cnn\nvariants: {fp32: []}\n", "missing key 'task'"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_malformed_recipes_name_key_and_line(text, message):
    with pytest.raises(InputError, match=message):
        parse_recipe(text, "r.yaml")


def test_quantize_must_come_last():
    text = SMALL.replace("    - quantize: {calibration: minmax}\n", "").replace(
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
    from edgeopt.pipeline.recipe import load_recipe

    for name in ("digits", "fashion", "resnet18", "mobilenetv2", "tiny_vit"):
        assert load_recipe(REPO / "benchmarks" / f"{name}.yaml").variants["fp32"] == []


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
    assert "pareto.png" in (out / "index.html").read_text()
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
