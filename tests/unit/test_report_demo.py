"""Reports and the end-to-end demo."""

import json

import pytest

from edgeopt.pipeline.report import make_report, markdown, pareto_flags, text_table
from edgeopt.core.errors import InputError
from helpers import edgeopt_cli


def _variant(runtime, median, acc):
    return {"name": "fp32", "steps": [], "runtime": runtime, "target": "cpu", "size_bytes": 1000,
            "params": 10, "flops": 2_000_000, "accuracy": acc, "agreement": 1.0,
            "latency_ms": {"median": median, "p90": median, "min": median, "n": 3}}


def test_pareto_front():
    assert pareto_flags([(1.0, 0.9), (2.0, 0.95), (3.0, 0.9), (1.0, 0.8)]) == [True, True, False, False]


def test_make_report_ratios_against_reference():
    r = make_report([_variant("torch", 4.0, 0.98), _variant("onnxruntime", 2.0, 0.98)],
                    {"cpu": "x", "threads": 2, "versions": {}}, {"name": "digits", "metric": "top1"},
                    "fp32/onnxruntime")
    ratios = {v["runtime"]: v["latency_ratio"] for v in r["variants"]}
    assert ratios == {"torch": 2.0, "onnxruntime": 1.0}
    assert [v["pareto"] for v in r["variants"]] == [False, True]
    assert r["schema"] == 1
    assert "| fp32 | onnxruntime |" in markdown(r)
    assert text_table(r).splitlines()[2].split()[:2] == ["fp32", "onnxruntime"]
    with pytest.raises(InputError, match="reference variant 'fp32/tvm'"):
        make_report([_variant("torch", 1.0, 0.9)], {}, None, "fp32/tvm")


def _check_demo_report(out, min_accuracy: float) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == 1 and report["reference"] == "fp32/onnxruntime"
    assert report["machine"]["cpu"] and report["machine"]["versions"]["torch"].startswith("2.13")
    fp32 = {v["runtime"]: v for v in report["variants"] if v["name"] == "fp32"}
    assert set(fp32) == {"torch", "onnxruntime", "tvm"}
    for v in fp32.values():
        assert v["accuracy"] >= min_accuracy and v["agreement"] == 1.0
        assert v["size_bytes"] > 0 and v["flops"] > 0 and v["latency_ms"]["n"] == 10
    assert len({v["predictions_sha256"] for v in fp32.values()}) == 1
    assert fp32["onnxruntime"]["latency_ratio"] == 1.0
    names = {v["name"] for v in report["variants"]}
    assert names == {"fp32", "lowrank+kd", "pruned+kd", "int8", "pruned+kd+int8"}
    for f in ("report.md", "pareto.png", "index.html"):
        assert (out / f).stat().st_size > 0
    return report


def test_digits_demo_writes_the_full_study(tmp_path, capsys):
    from edgeopt.pipeline.demo import DIGITS_RECIPE, run_demo

    run_demo(out=tmp_path / "demo", warmup=2, repeat=10, recipe=DIGITS_RECIPE)
    assert "fp32 top-1 predictions identical across torch, onnxruntime, tvm: yes" in capsys.readouterr().out
    _check_demo_report(tmp_path / "demo", 0.97)


def test_demo_falls_back_to_digits_without_fashion_mnist(tmp_path):
    from edgeopt.pipeline.demo import DEMO_RECIPE, DIGITS_RECIPE, demo_recipe

    text, note = demo_recipe(data_dir=tmp_path)
    assert text == DIGITS_RECIPE and "dataset-fashion-mnist" in note and note.endswith("digits study instead.")
    if _fashion_installed():
        assert demo_recipe() == (DEMO_RECIPE, None)


def _fashion_installed() -> bool:
    from edgeopt.pipeline.tasks import fashion_mnist_files

    try:
        fashion_mnist_files()
        return True
    except InputError:
        return False


@pytest.mark.slow  # the Fashion-MNIST study: trains on 54,744 images and measures 10,000 (minutes)
@pytest.mark.skipif(not _fashion_installed(), reason="Fashion-MNIST is not installed (`make data`)")
def test_demo_cli_runs_the_fashion_mnist_study(tmp_path):
    r = edgeopt_cli("demo", "--out", tmp_path / "demo", "--warmup", "2", "--repeat", "10")
    assert r.returncode == 0, r.stderr
    assert "fp32 top-1 predictions identical across torch, onnxruntime, tvm: yes" in r.stdout
    report = _check_demo_report(tmp_path / "demo", 0.91)
    assert report["task"]["name"] == "fashion_mnist"
    # Compression shows: the variants do not all score the same.
    assert len({round(v["accuracy"], 4) for v in report["variants"]}) > 1
