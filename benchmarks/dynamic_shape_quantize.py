"""Peak memory, time and working-directory litter of `quantize` on a dynamic-shape ONNX model.

An OCR-like conv net (11 MB of fp32 weights, nine convs, a bilinear resize to a quarter of the
input's height and width) is exported with a dynamic batch, height and width, then quantized with
32 calibration samples of 1x3x48x320 in a child process whose peak RSS is read with os.wait4.
Usage: python benchmarks/dynamic_shape_quantize.py [--no-shape]
(--no-shape: the call edgeopt made before input shapes existed, for the "before" figure; it needs
a checkout from before them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (1, 3, 48, 320)


def export(path: Path) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class OcrLike(nn.Module):
        def __init__(self):
            super().__init__()
            c = [3, 32, 64, 128, 256, 256]
            self.convs = nn.ModuleList(nn.Conv2d(c[i], c[i + 1], 3, padding=1) for i in range(5))
            self.extra = nn.ModuleList(nn.Conv2d(256, 256, 3, padding=1) for _ in range(3))
            self.head = nn.Conv2d(256, 96, 1)

        def forward(self, x):
            h, w = x.shape[2], x.shape[3]
            for i, conv in enumerate(self.convs):
                x = F.relu(conv(x))
                if i in (1, 2):
                    x = F.max_pool2d(x, 2)
            for conv in self.extra:
                x = F.relu(conv(x)) + x
            x = F.interpolate(self.head(x), size=(h // 4, w // 4), mode="bilinear")
            return x.mean(2)

    torch.manual_seed(0)
    torch.onnx.export(OcrLike().eval(), (torch.randn(*SHAPE),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}}, dynamo=False)


def quantize(model: str, out: str, with_shape: bool) -> None:
    import numpy as np

    from edgeopt.compress import QuantizeConfig, quantize

    calib = np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    options = {"input_shape": SHAPE} if with_shape else {}
    t0 = time.perf_counter()
    r = quantize(model, QuantizeConfig(), calib, out=out, **options)
    m = r.record["metrics"]
    print(f"quantize: {time.perf_counter() - t0:.0f} s, {m['calibration_samples']} calibration samples, "
          f"{m['compute_nodes_quantized']} compute nodes int8")


def main() -> None:
    if sys.argv[1:2] == ["--child-export"]:
        return export(Path(sys.argv[2]))
    if sys.argv[1:2] == ["--child-quantize"]:
        return quantize(sys.argv[2], sys.argv[3], sys.argv[4] == "shape")
    with_shape = "--no-shape" not in sys.argv
    with tempfile.TemporaryDirectory(prefix="dynamic-shape-") as tmp:
        tmp = Path(tmp)
        model, cwd = tmp / "ocr.onnx", tmp / "cwd"
        cwd.mkdir()
        subprocess.run([sys.executable, __file__, "--child-export", str(model)], check=True,
                       stderr=subprocess.DEVNULL)
        print(f"model: {model.stat().st_size / 1e6:.1f} MB, input x: batch, 3, height, width")
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child-quantize", str(model),
                                  str(tmp / "int8"), "shape" if with_shape else "none"], cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}, peak RSS {usage.ru_maxrss / 1024:.0f} MB, "
              f"CPU {usage.ru_utime + usage.ru_stime:.0f} s; left in the working directory: "
              f"{sorted(p.name for p in cwd.iterdir()) or 'nothing'}")


if __name__ == "__main__":
    main()
