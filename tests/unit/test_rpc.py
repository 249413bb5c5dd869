"""Remote benchmarking over TVM RPC: a tracker and two servers on 127.0.0.1, direct servers,
fleet runs with a device lost mid-run, tuning measured on the farm, and every bad address."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from edgeopt.compile import BuildConfig, ExportConfig, TuneConfig, build, export
from edgeopt.runtimes import load
from edgeopt.core.errors import InputError
from edgeopt.pipeline.farm import free_port, start_local_farm
from edgeopt.runtimes.rpc import benchmark_fleet, request_device
from helpers import edgeopt_cli, example_inputs, tiny_conv_net

pytestmark = pytest.mark.integration  # subprocesses, builds, servers or whole studies

KEY = "edgeopt-test"

pytest.importorskip("tornado")


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = start_local_farm(2, KEY, tmp_path_factory.mktemp("farm"))
    yield farm
    farm.stop()
    assert all(p.poll() is not None for _, p in farm.servers) and farm.tracker_proc.poll() is not None


@pytest.fixture(scope="module")
def cpu_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("rpc-art")
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=d / "m.onnx").path
    return build(onnx_path, BuildConfig(target="cpu"), out=d / "cpu").output


def test_bench_through_the_tracker_names_the_server(farm, cpu_artifact, tmp_path):
    r = edgeopt_cli("bench", cpu_artifact.path, "--tracker", farm.tracker, "--key", KEY, "--repeat", "10",
                    "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    servers = [name for name, _ in farm.servers]
    assert result["machine"]["device"] in servers and result["latency_ms"]["n"] == 10
    assert "parity" in r.stdout and "max rel 0.00e+00" in r.stdout


def test_two_requests_get_two_different_servers(farm):
    a = request_device(farm.tracker, KEY)
    b = request_device(farm.tracker, KEY)
    try:
        assert {a.name, b.name} == {name for name, _ in farm.servers}
        with pytest.raises(InputError, match="became free within"):
            request_device(farm.tracker, KEY, timeout_s=2)  # both busy: a clear error, not a hang
    finally:
        a.close()
        b.close()


def test_direct_rpc_server(cpu_artifact, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                             str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        r = edgeopt_cli("bench", cpu_artifact.path, "--rpc", f"127.0.0.1:{port}", "--repeat", "5")
        assert r.returncode == 0, r.stderr
        assert f"127.0.0.1:{port}" in r.stdout
    finally:
        # the whole session: TVM's server runs in a popen_worker child that proc.kill() would orphan
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_nothing_listening_is_a_quick_clear_error(cpu_artifact):
    port = free_port()
    for flags, what in ((["--rpc", f"127.0.0.1:{port}"], "RPC server"),
                        (["--tracker", f"127.0.0.1:{port}", "--key", KEY], "RPC tracker")):
        t0 = time.monotonic()
        r = edgeopt_cli("bench", cpu_artifact.path, *flags)
        assert r.returncode == 2 and f"nothing is listening for the {what} at 127.0.0.1:{port}" in r.stderr, r.stderr
        assert time.monotonic() - t0 < 30
    r = edgeopt_cli("bench", cpu_artifact.path, "--rpc", "no-port-here")
    assert r.returncode == 2 and "is not HOST:PORT" in r.stderr


def test_a_key_with_no_devices(farm, cpu_artifact):
    r = edgeopt_cli("bench", cpu_artifact.path, "--tracker", farm.tracker, "--key", "nobody")
    assert r.returncode == 2 and "no device is registered under key 'nobody'" in r.stderr
    assert KEY in r.stderr, "the error lists the keys that do exist"


def test_fleet_reports_every_device_and_pooled_figures(farm, cpu_artifact, tmp_path):
    r = edgeopt_cli("bench", cpu_artifact.path, "--tracker", farm.tracker, "--key", KEY, "--all",
                    "--repeat", "10", "--json", tmp_path / "fleet.json")
    assert r.returncode == 0, r.stderr
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    assert set(fleet["devices"]) == {name for name, _ in farm.servers} and not fleet["lost"]
    assert fleet["pooled_latency_ms"]["n"] == 20


def test_fleet_survives_a_device_lost_mid_run(cpu_artifact, tmp_path):
    farm = start_local_farm(2, "edgeopt-drop", tmp_path / "logs")
    try:
        victim = farm.servers[1][0]
        killed = []

        def on_chunk(name, done):
            if name == victim and not killed:
                killed.append(farm.stop_server(1))

        result = benchmark_fleet(cpu_artifact, farm.tracker, "edgeopt-drop", warmup=1, repeat=200,
                                 chunks=4, on_chunk=on_chunk)
    finally:
        farm.stop()
    survivor = farm.servers[0][0]
    assert killed == [victim]
    assert list(result.devices) == [survivor] and list(result.lost) == [victim]
    assert result.lost[victim], "the reason is reported"
    assert result.pooled.n == 200 == result.devices[survivor].latency.n


@pytest.mark.slow  # MetaSchedule measuring on the farm's servers: over a minute on 2 cores
def test_tuning_measured_on_the_farm(farm, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    onnx_path = export(model, ExportConfig(), x, out=tmp_path / "mlp.onnx").path
    before = {name: _loads(farm, i) for i, (name, _) in enumerate(farm.servers)}
    cfg = TuneConfig(trials=16, db=str(tmp_path / "db"), cost_model="random", trials_per_iter=4,
                     tracker=farm.tracker, key=KEY)
    art = build(onnx_path, BuildConfig(target="cpu", tune=cfg), out=tmp_path / "tuned").output
    assert art.history[-1]["metrics"]["tuning"]["trials_after"] >= 8
    after = {name: _loads(farm, i) for i, (name, _) in enumerate(farm.servers)}
    assert all(after[n] > before[n] for n in after), f"candidates measured on every server: {before} -> {after}"
    np.testing.assert_allclose(load(art).run(x)[0], load(onnx_path).run(x)[0], rtol=1e-5, atol=1e-6)


def _loads(farm, index) -> int:
    """Modules the server loaded so far (one per measured candidate batch), from its log."""
    return (farm.log_dir / f"server{index}.log").read_text().count("load_module")


def test_tracker_tuning_errors(tmp_path):
    with pytest.raises(InputError, match="tracker and key go together"):
        TuneConfig(trials=4, tracker="127.0.0.1:9190")
    onnx_path = export(tiny_conv_net(), ExportConfig(), example_inputs(), out=tmp_path / "m.onnx").path
    port = free_port()
    r = edgeopt_cli("compile", onnx_path, "--out", tmp_path / "a", "--tune-trials", "4",
                    "--tune-tracker", f"127.0.0.1:{port}", "--tune-key", KEY)
    assert r.returncode == 2 and "nothing is listening for the RPC tracker" in r.stderr, r.stderr
    assert not (tmp_path / "a").exists()
