"""pytest-benchmark micro-benchmarks of the hot paths (run by `make bench`, not by `make test`).

    .venv/bin/python -m pytest benchmarks/test_micro.py --benchmark-json build/bench/micro.json
"""

import numpy as np
import pytest

from edgeopt.compile import BuildConfig, ExportConfig, build, export
from edgeopt.compress import QuantizeConfig, quantize
from edgeopt.pipeline.zoo import create
from edgeopt.runtimes import load

X = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
CALIB = [np.random.default_rng(s).standard_normal((1, 1, 32, 32)).astype(np.float32) for s in range(16)]


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    return export(create("digits_cnn"), ExportConfig(), X, out=tmp_path_factory.mktemp("m") / "d.onnx").path


def test_export_digits_cnn_with_parity(benchmark, tmp_path):
    model = create("digits_cnn")
    benchmark.pedantic(lambda: export(model, ExportConfig(), X, out=tmp_path / "e.onnx"), rounds=3, iterations=1)


def test_quantize_step_minmax(benchmark, digits_onnx, tmp_path):
    cfg = QuantizeConfig(method="minmax")
    benchmark.pedantic(lambda: quantize(digits_onnx, cfg, CALIB, out=tmp_path / "q.onnx"), rounds=3, iterations=1)


def test_tvm_build_untuned(benchmark, digits_onnx, tmp_path):
    benchmark.pedantic(lambda: build(digits_onnx, BuildConfig(target="cpu"), out=tmp_path / "tvm"), rounds=3,
                       iterations=1)


@pytest.mark.parametrize("runtime", ["onnxruntime", "tvm"])
def test_runner_call_overhead(benchmark, digits_onnx, tmp_path, runtime):
    art = digits_onnx if runtime == "onnxruntime" else build(digits_onnx, BuildConfig(target="cpu"),
                                                             out=tmp_path / "tvm").output.path
    runner = load(art, threads=1)
    benchmark(runner.run, X)
