"""Reproducible studies: a user's factory model is seeded like a zoo model, so the same recipe
gives the same model, sizes, accuracies and per-sample predictions in every run (issue 29)."""

import json
import subprocess
import sys

import pytest
import torch

from edgeopt.pipeline.models import load_model
from helpers import edgeopt_cli

FACTORY = '''
import torch


class Net(torch.nn.Module):
    input_shape = (1, 1, 32, 32)

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2)
        self.fc = torch.nn.Linear(4 * 15 * 15, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def net():
    return Net()
'''

RECIPE = """model: repro_models:net
task: digits
train: {epochs: 1}
variants:
  fp32: []
  int8: [{quantize: {method: minmax}}]
targets: [{runtime: onnxruntime}]
bench: {warmup: 1, repeat: 5, threads: 1}
"""


@pytest.fixture()
def factory(tmp_path, monkeypatch):
    (tmp_path / "repro_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_factory_model_is_seeded(factory):
    torch.manual_seed(123)  # whatever state the caller's RNG is in
    a = load_model("repro_models:net", seed=0).module.state_dict()
    b = load_model("repro_models:net", seed=0).module.state_dict()
    c = load_model("repro_models:net", seed=1).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    state = torch.random.get_rng_state()
    load_model("repro_models:net", seed=0)
    assert torch.equal(state, torch.random.get_rng_state()), "the caller's RNG was disturbed"
    # ... and the same in another process.
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from edgeopt.pipeline.models import load_model; "
            "print(float(load_model('repro_models:net', seed=0).module.fc.weight.double().sum()))")
    other = subprocess.run([sys.executable, "-c", code, str(factory)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    assert float(other.stdout) == float(a["fc.weight"].double().sum())


@pytest.mark.integration
def test_same_recipe_twice_gives_the_same_study(factory):
    (factory / "r.yaml").write_text(RECIPE)
    reports = []
    for out in ("one", "two"):
        r = edgeopt_cli("run", "r.yaml", "--out", out, cwd=factory)
        assert r.returncode == 0, r.stdout + r.stderr
        reports.append(json.loads((factory / out / "report.json").read_text()))
    fields = ("size_bytes", "accuracy", "agreement", "predictions_sha256", "samples", "outcomes")
    one, two = ([{f: v[f] for f in fields} for v in rep["variants"]] for rep in reports)
    assert one == two
    assert all(v["samples"] == 360 and v["outcomes"] for v in one)
