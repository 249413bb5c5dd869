"""The runner interface over torch, onnxruntime and TVM."""

import numpy as np
import pytest
import torch

import edgeopt.runtimes as ert
from edgeopt.compile import ExportConfig, export
from edgeopt.compile.tvm_build import BuildConfig, build
from edgeopt.pipeline.measure import save_torch_artifact
from edgeopt.core.errors import InputError
from edgeopt.runtimes.timing import TimingStats
from helpers import example_inputs, tiny_conv_net


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtimes")
    model = tiny_conv_net()
    x = example_inputs()
    onnx_art = export(model, ExportConfig(), x, out=d / "onnx").artifact
    return {
        "model": model, "x": x,
        "onnxruntime": onnx_art,
        "torch": save_torch_artifact(model, x, d / "torch"),
        "tvm": build(onnx_art.model_file, BuildConfig(target="cpu"), out=d / "tvm").output,
    }


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "tvm"])
def test_each_runtime_matches_torch_and_reports_stats(artifacts, runtime):
    runner = ert.load(artifacts[runtime].path, threads=1)
    assert runner.runtime == runtime
    x = artifacts["x"]
    got = runner.run(x)[0]
    with torch.inference_mode():
        ref = artifacts["model"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    result = runner.benchmark(x, warmup=1, repeat=5)
    lat = result.latency
    assert lat.n == 5 and 0 < lat.min_ms <= lat.median_ms <= lat.p90_ms
    assert lat.stdev_ms >= 0
    assert result.machine["threads"] == 1 and result.machine["cpu"]
    assert "onnxruntime" in result.machine["versions"]


def test_inputs_by_name_and_wrong_shape_or_dtype(artifacts):
    runner = ert.load(artifacts["onnxruntime"].path)
    x = artifacts["x"]
    assert runner.run({"input": x})[0].shape == (1, 3)
    with pytest.raises(InputError, match=r"input 'input' has shape \(1, 3, 8, 8\); the model expects \(1, 1, 8, 8\)"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="has dtype float64; the model expects float32"):
        runner.run(x.astype(np.float64))
    with pytest.raises(InputError, match="unknown: \\['bogus'\\]"):
        runner.run({"input": x, "bogus": x})


def test_unknown_runtime_and_format_mismatch(artifacts):
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'; expected one of torch, onnxruntime, openvino, executorch, tvm"):
        ert.load(artifacts["onnxruntime"].path, runtime="tensorrt")
    with pytest.raises(InputError, match="compile it first"):
        ert.load(artifacts["onnxruntime"].path, runtime="tvm")


def test_bare_onnx_file_and_missing_file(artifacts, tmp_path):
    runner = ert.load(artifacts["onnxruntime"].model_file)
    assert [s.name for s in runner.inputs] == ["input"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ert.load(tmp_path / "missing.onnx")


def test_truncated_onnx_is_reported(artifacts, tmp_path):
    data = artifacts["onnxruntime"].model_file.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a valid ONNX model"):
        ert.load(bad)


def test_pickle_is_never_loaded(tmp_path):
    from edgeopt.runtimes.torch_runner import TorchRunner

    p = tmp_path / "model.pt"
    p.write_bytes(b"not even a pickle")
    with pytest.raises(InputError, match="never unpickled"):
        TorchRunner(p)


def test_timing_stats_from_samples():
    s = TimingStats.from_samples([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert (s.min_ms, s.median_ms, s.p90_ms, s.n) == (1.0, 5.5, 9.0, 10)
    with pytest.raises(InputError, match="repeat"):
        ert.measure(lambda: None, warmup=0, repeat=0)


def test_a_tvm_runner_gets_the_threads_it_asks_for(artifacts):
    """TVM sizes its pool once per process, by default from half the logical CPUs: the runner
    must set the size before the pool exists (a fresh process here), not only reconfigure it."""
    import subprocess
    import sys

    code = ("import os; os.environ.pop('TVM_NUM_THREADS', None); os.environ.pop('OMP_NUM_THREADS', None)\n"
            "import numpy as np, tvm, edgeopt.runtimes as ert\n"
            f"r = ert.load({str(artifacts['tvm'].path)!r}, threads=3)\n"
            f"r.run(np.zeros({tuple(artifacts['x'].shape)}, np.float32))\n"
            "print(tvm.get_global_func('runtime.NumThreads')())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3"
