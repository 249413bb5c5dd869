"""MetaSchedule tuning into a persisted database, and its reuse by a later build."""

import time

import numpy as np
import pytest
import torch

from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from helpers import edgeopt_cli

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies


def test_tuned_build_then_warm_database_build(tmp_path):
    # a first layer above onednn_offload.MIN_FLOPS, so the oneDNN build has a oneDNN call to time
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4)).eval()
    x = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32)
    onnx_path = export(model, ExportConfig(), x, out=tmp_path / "mlp.onnx").path
    cfg = TuneConfig(trials=4, db=str(tmp_path / "db"), cost_model="random")
    first = build(onnx_path, BuildConfig(target="cpu", tune=cfg), out=tmp_path / "a").output
    metrics = first.history[-1]["metrics"]
    t = metrics["tuning"]
    assert t["trials_before"] == 0 and t["trials_after"] >= 4 and t["rounds"] >= 1
    from edgeopt.compile.native_build import onednn_available

    if onednn_available() is None:  # kernels "auto", tuned: both builds timed, the faster kept
        assert set(metrics["kernel_times_ms"]) == {"tvm", "onednn"}
        assert metrics["kernels"] == min(metrics["kernel_times_ms"], key=metrics["kernel_times_ms"].get)
        assert "faster on this host" in metrics["kernels_why"]
    assert (tmp_path / "db" / "database_tuning_record.json").exists()
    import psutil

    workers = [c for c in psutil.Process().children(recursive=True) if "tvm.exec.popen_worker" in c.cmdline()]
    assert not workers, "tuning leaves no builder or runner worker behind"
    np.testing.assert_allclose(load(first).run(x)[0], load(onnx_path).run(x)[0], rtol=1e-5, atol=1e-6)

    # the warm rebuild's speed is a benchmark figure (RESULTS.md), not a test assertion
    r = edgeopt_cli("compile", onnx_path, "--tune-trials", "4", "--tune-db", tmp_path / "db",
                    "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    second = load(tmp_path / "b")
    np.testing.assert_allclose(second.run(x)[0], load(onnx_path).run(x)[0], rtol=1e-5, atol=1e-6)
    import json

    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["history"][-1]["metrics"]["tuning"]["rounds"] == 0, "no new tuning with a warm database"


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": -1}, "trials must be an integer >= 0"),
    ({"trials": 8, "timeout_s": 0}, "timeout_s must be > 0"),
    ({"trials": 8, "cost_model": "gbdt"}, "cost_model must be one of xgb, random"),
])
def test_tune_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        TuneConfig(**kwargs)


def test_structure_key_ignores_weights_and_depends_on_target():
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgeopt.compile.targets import resolve_target
    from edgeopt.compile.tune import structure_key

    def kernels(seed, tmp):
        torch.manual_seed(seed)
        m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
        path = export(m, ExportConfig(), np.zeros((1, 8), np.float32), out=tmp / f"m{seed}.onnx").path
        mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
        with tvm.target.Target(resolve_target("cpu")):
            return relax.get_pipeline("zero")(mod)

    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    a, b = kernels(0, tmp), kernels(1, tmp)
    cpu, arm = resolve_target("cpu"), resolve_target("arm")
    assert structure_key(a, cpu) == structure_key(b, cpu), "same architecture, other weights: same key"
    assert structure_key(a, cpu) != structure_key(a, arm)


# A tuning that cannot finish on its own: once 4 records are in the database, a measure callback
# (after TVM's own, which store the records) touches the "held" file and waits there for Ctrl-C.
# So the test interrupts a tuning mid-round however fast the machine tunes.
INTERRUPTED_TUNING = """
import sys, time
from pathlib import Path
import edgeopt.compile.tune as tune_module
from edgeopt.compile import BuildConfig, TuneConfig, build
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

onnx_path, out, db, held = sys.argv[1:5]


@derived_object
class HoldAtFourRecords(PyMeasureCallback):
    def apply(self, *args):
        if tune_module.records_in(Path(db)) >= 4:
            Path(held).touch()
            while True:
                time.sleep(0.1)


callbacks = tune_module.stop_at_deadline
tune_module.stop_at_deadline = lambda deadline: [*callbacks(deadline), HoldAtFourRecords()]
tune = TuneConfig(trials=400, db=db, cost_model="random", trials_per_round=4, trials_per_iter=4)
build(onnx_path, BuildConfig(target="cpu", tune=tune), out=out)
"""


@pytest.mark.slow  # a tuning build interrupted, then a resumed one: minutes on 2 cores
def test_interrupted_tuning_keeps_its_rounds_and_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from edgeopt.compile.tune import records_in

    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    onnx_path = export(model, ExportConfig(), x, out=tmp_path / "mlp.onnx").path
    db = tmp_path / "db"
    held, stderr = tmp_path / "held", tmp_path / "stderr.txt"
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_TUNING, str(onnx_path), str(tmp_path / "killed"),
                                 str(db), str(held)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        # the wait ends when the tuning is held (or has failed); 900 s only guards against a hang
        t0 = time.monotonic()
        while not held.exists() and proc.poll() is None and time.monotonic() - t0 < 900:
            time.sleep(0.5)
        assert held.exists(), f"the tuning never held at 4 records (exit {proc.poll()}): {stderr.read_text()}"
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = stderr.read_text()
    assert proc.returncode == 130 and "interrupted in tuning round" in said, said
    assert not (tmp_path / "killed").exists(), "no half-written artifact"
    kept = records_in(db)
    assert kept >= 4
    tune = TuneConfig(trials=kept + 4, db=str(db), cost_model="random", trials_per_round=4, trials_per_iter=4)
    art = build(onnx_path, BuildConfig(target="cpu", tune=tune), out=tmp_path / "resumed").output
    t = art.history[-1]["metrics"]["tuning"]
    assert t["trials_before"] == kept and t["trials_after"] >= kept + 4
    np.testing.assert_allclose(load(art).run(x)[0], load(onnx_path).run(x)[0], rtol=1e-5, atol=1e-6)
