"""Run a CUDA artifact on the GPU and compare it with torch (skipped without a GPU)."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.device


def _gpu_available() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


@pytest.mark.skipif(not _gpu_available(), reason="no CUDA GPU and driver on this host")
def test_cuda_artifact_matches_torch(tmp_path):
    from edgeopt.compile import BuildConfig, ExportConfig, build, export
    from edgeopt.pipeline.zoo import create
    from edgeopt.runtimes import load

    model = create("resnet18")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    onnx = export(model, ExportConfig(), x, out=tmp_path / "r.onnx")
    art = build(onnx, BuildConfig(target="cuda"), out=tmp_path / "cuda").output
    runner = load(art)
    got = runner.run(x)[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-4
    stats = runner.benchmark(x, warmup=10, repeat=50).latency
    print(f"resnet18 cuda median {stats.median_ms:.3f} ms")
