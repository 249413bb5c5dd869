"""A new user's study: their own model file and their own data (an .npz, a task factory, an image
folder), run through `edgeopt run` from their own folder, scored with their labels."""

import json
import textwrap

import numpy as np
import pytest

from helpers import edgeopt_cli

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies

MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class TwoBranch(nn.Module):
        """Two conv branches joined by a concat, a squeeze-excitation gate, a residual add."""

        input_shape = (1, 3, 16, 16)

        def __init__(self, classes=4):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU())
            self.mix = nn.Conv2d(16, 16, 1)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4), nn.ReLU(),
                                      nn.Linear(4, 16), nn.Sigmoid())
            self.head = nn.Linear(16, classes)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)
            z = self.mix(y) * self.gate(y)[:, :, None, None] + y
            return self.head(z.mean(dim=(2, 3)))


    def make():
        return TwoBranch()


    def my_task(seed=0):
        import numpy as np
        from edgeopt.pipeline.task_sources import TaskData

        x, y = _data(seed)
        return TaskData(train=(x[:160], y[:160]), calib=x[160:176], test=(x[176:], y[176:]), metric="top1")


    def _data(seed):
        import numpy as np

        rng = np.random.default_rng(seed)
        y = rng.integers(0, 4, 240)
        x = rng.normal(0, 0.3, (240, 3, 16, 16)).astype("float32")
        for c in range(4):  # each class lights up one quadrant: learnable in a few epochs
            r, q = divmod(c, 2)
            x[y == c, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 2.0
        return x, y
''')

RECIPE = """\
model: mymodels:make
task: {task}
train: {{epochs: 20, lr: 0.01, shift: 0}}
variants:
  fp32: []
  pruned: [{{prune: {{amount: 0.5}}}}]
  int8: [{{quantize: {{method: minmax}}}}]
targets: [{{runtime: onnxruntime}}]
bench: {{warmup: 1, repeat: 3}}
evaluate: {{robustness: false}}
"""


def _write_data(folder, kind):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodels_for_data", folder / "mymodels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x, y = module._data(0)
    if kind == "npz":
        np.savez(folder / "mydata.npz", x=x, y=y)
        return "mydata.npz"
    if kind == "factory":
        return "mymodels:my_task"
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        d = folder / "images" / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.clip((img.transpose(1, 2, 0) + 1.0) * 100, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(d / f"{i}.png")
    return "images"


@pytest.mark.parametrize("kind", ["npz", "factory", "images"])
def test_own_model_and_own_data_run_end_to_end(tmp_path, kind):
    (tmp_path / "mymodels.py").write_text(MODEL)
    task = _write_data(tmp_path, kind)
    (tmp_path / "study.yaml").write_text(RECIPE.format(task=task))
    r = edgeopt_cli("run", "study.yaml", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {v["name"]: v for v in report["variants"]}
    assert set(rows) == {"fp32", "pruned", "int8"}
    assert report["task"]["metric"] == "top1"
    assert rows["fp32"]["accuracy"] > 0.5, "scored with the user's labels, after training on them"
    assert rows["fp32"]["agreement"] == 1.0
    assert rows["pruned"]["params"] < rows["fp32"]["params"]
    assert (tmp_path / "out" / "index.html").is_file()
