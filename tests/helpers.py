"""Tiny models and inputs shared by the tests (kept small so the unit tier runs in minutes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def example_inputs(shape=(1, 1, 8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class TinyConvNet(torch.nn.Module):
    """Conv-BN-ReLU, pool, linear: the smallest model that exercises the usual ops."""

    input_shape = (1, 1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def tiny_conv_net():
    return TinyConvNet().eval()


class Unexportable(torch.nn.Module):
    """Calls an op (eigenvalues) that has no ONNX conversion."""

    input_shape = (1, 1, 4, 4)

    def __init__(self):
        super().__init__()
        self.inner = EigInner()

    def forward(self, x):
        return self.inner(x)


class EigInner(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x[0, 0]).real


def unexportable():
    return Unexportable().eval()


_CALLS = [0]


class DriftingModel(torch.nn.Module):
    """Scales its output by a process-wide call counter: the traced ONNX freezes one value, so
    torch and ONNX disagree on every later call (a deliberate parity failure). The counter is a
    global, not a module attribute, so the exporter cannot restore it after tracing."""

    input_shape = (1, 4)

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        _CALLS[0] += 1
        return self.fc(x) * float(_CALLS[0])


def drifting_model():
    return DriftingModel().eval()


def edgeopt_cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the installed ``edgeopt`` console script; tests/ is on PYTHONPATH for factories."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    exe = Path(sys.executable).with_name("edgeopt")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def edgeopt_without(package: str, *args, timeout=300) -> subprocess.CompletedProcess:
    """Run ``edgeopt ARGS`` in a Python where ``import PACKAGE`` finds nothing (a ``None`` entry
    in ``sys.modules`` hides it): what a user without an optional extra sees."""
    code = (f"import sys\nsys.modules[{package!r}] = None\n"
            "from edgeopt.pipeline.cli import main\n"
            f"sys.exit(main({[str(a) for a in args]!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def listing(path: Path) -> list[str]:
    """Every file and folder under ``path`` (hidden ones included), for 'nothing left' checks."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


class OutlierMLP(torch.nn.Module):
    """An MLP whose last input feature carries rare huge values. Per-tensor uint8 quantization
    of the input then spends its whole range on the outlier and crushes the other features, so
    plain int8 disagrees with fp32 on many samples; keeping the first layer in float fixes it.
    """

    input_shape = (1, 8)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(16, 8, generator=g))
            self.fc1.weight[:, 7] = 1e-4  # the outlier feature barely matters for the output
            self.fc2.weight.copy_(torch.randn(4, 16, generator=g))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def outlier_samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8)).astype(np.float32)
    x[::4, 0, 7] = 1000.0
    return x


def needs_args(width):
    """A factory that needs an argument: refused with the argument's name."""
    return torch.nn.Linear(width, 2)


def raises():
    """A factory that raises: the CLI reports it in one line."""
    raise RuntimeError("weights server unreachable")


def not_a_module():
    return "a string"


def tiny_image_task(seed: int = 0):
    """Three classes of 8x8 one-channel images (a bright square in one of three places, plus
    noise), with a ``groups`` array on the test split: the smallest image task with slices."""
    from edgeopt.pipeline.task_sources import TaskData

    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.normal(0.0, 0.5, (n, 1, 8, 8)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, 0, 1 + 2 * c:4 + 2 * c, 2:6] += 2.0
        return x, y.astype(np.int64)

    test = make(60)
    return TaskData(train=make(240), calib=make(16)[0], test=test, val=make(30),
                    classes=("top", "middle", "bottom"),
                    groups=np.where(np.arange(60) % 2 == 0, "even", "odd"))


def search_latency(runner, artifact, target) -> float:
    """A deterministic stand-in for timing in search tests: ms from the artifact's size and
    whether it is quantized (real timings are noisy, and the tests compare two runs exactly)."""
    quantized = any(r.get("name") in ("quantize", "qat") for r in artifact.history)
    return round(artifact.size_bytes() / 1e4 * (0.6 if quantized else 1.0), 6)
