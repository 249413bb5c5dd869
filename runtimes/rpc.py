"""Remote benchmarking over TVM RPC: one board (``--rpc HOST:PORT``) or a farm (``--tracker``).

The board runs TVM's own RPC server with a runtime-only TVM (docs/remote.md); edgeopt uploads the
artifact's library, runs it in a Relax VM on the board, times it there with ``time_evaluator``
(so network latency is not in the figure) and fetches the outputs for a parity check. The
tracker is TVM's too: servers register under a key, and a client asks the tracker for a free
one. Every result names the server (``host:port``) that produced it.

Every network step has a timeout: an address with nothing listening, a key with no devices, or a
board that stops answering is a clear error, never a hang. This module only connects to servers
and trackers; ``edgeopt.pipeline.farm`` starts a tracker and servers locally to try it out.

Example:
    >>> from edgeopt.runtimes.rpc import request_device, RpcRunner  # doctest: +SKIP
    >>> dev = request_device(tracker="127.0.0.1:9190", key="rasp4")  # doctest: +SKIP
    >>> r = RpcRunner(load_artifact("build/r18-arm"), dev, threads=4)  # doctest: +SKIP
    >>> r.benchmark(r.example_inputs(), repeat=50).machine["device"]  # doctest: +SKIP
    '10.0.0.17:9090'
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .artifact import Artifact
from .base import BenchmarkResult, Runner, example_inputs
from edgeopt.core.errors import InputError, last_line
from edgeopt.core.result import Progress, reporter
from .fingerprint import machine_fingerprint
from .timing import TimingStats, check_counts

DEFAULT_TIMEOUT_S = 10.0


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; raises ``InputError`` naming the expected form."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what} {text!r} is not HOST:PORT (e.g. 127.0.0.1:9190)")
    return host, int(port)


def check_listening(host: str, port: int, what: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Fail fast, with the reason, when nothing accepts connections at ``host:port``.

    TVM's own clients retry a refused connection for 60 s; probing first turns that into an
    immediate, named error."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = "connection refused" if isinstance(e, ConnectionRefusedError) else (
            "timed out" if isinstance(e, socket.timeout) else str(e) or type(e).__name__)
        raise InputError(f"nothing is listening for the {what} at {host}:{port} ({reason}); "
                         f"start it first (see docs/remote.md)") from None


@dataclass
class RemoteDevice:
    """An open RPC session and the server it is connected to."""

    session: Any
    name: str  # "host:port" of the RPC server

    def close(self) -> None:
        # Dropping the last reference closes the socket; the server then frees itself.
        self.session = None


def connect_server(address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> RemoteDevice:
    """Open a session on the RPC server at ``address`` (``HOST:PORT``)."""
    from tvm import rpc

    host, port = parse_address(address, "RPC server address")
    check_listening(host, port, "RPC server", timeout_s)
    try:
        return RemoteDevice(rpc.connect(host, port), f"{host}:{port}")
    except Exception as e:
        raise InputError(f"could not open an RPC session at {host}:{port}: {last_line(e)}") from None


def tracker_summary(tracker: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """The tracker's view: ``{"queue_info": {key: {"free": n, "pending": m}}, "server_info": [...]}``."""
    from tvm.rpc import base

    host, port = parse_address(tracker, "tracker address")
    check_listening(host, port, "RPC tracker", timeout_s)
    with _tracker_socket(host, port, timeout_s) as sock:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"the tracker at {tracker} refused a summary request: {value!r}")
    return value[1]


def registered_devices(tracker: str, key: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Servers registered under ``key`` (free or busy); raises when there are none."""
    summary = tracker_summary(tracker, timeout_s)
    servers = [s for s in summary.get("server_info", []) if s.get("key", "").split(":", 1)[-1] == key]
    if not servers:
        keys = sorted({s.get("key", "").split(":", 1)[-1] for s in summary.get("server_info", [])})
        raise InputError(f"no device is registered under key {key!r} at the tracker {tracker}; "
                         f"registered keys: {', '.join(keys) if keys else 'none'}")
    return len(servers)


def request_device(tracker: str, key: str, timeout_s: float = 60.0) -> RemoteDevice:
    """Ask the tracker for a free server under ``key`` and open a session on it.

    Raises ``InputError`` when nothing listens at ``tracker``, when no server is registered under
    ``key``, or when none becomes free within ``timeout_s`` (TVM's own request waits forever).
    """
    from tvm import rpc
    from tvm.rpc import base

    registered_devices(tracker, key, min(timeout_s, DEFAULT_TIMEOUT_S))
    host, port = parse_address(tracker, "tracker address")
    with _tracker_socket(host, port, timeout_s) as sock:
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        try:
            value = base.recvjson(sock)
        except socket.timeout:
            raise InputError(f"no device under key {key!r} became free within {timeout_s:.0f} s "
                             f"(tracker {tracker})") from None
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"the tracker at {tracker} refused the request: {value!r}")
    url, server_port, matchkey = value[1]
    try:
        session = rpc.connect(url, server_port, matchkey)
    except Exception as e:
        raise InputError(f"the tracker handed out {url}:{server_port}, but the session failed: "
                         f"{last_line(e)}") from None
    return RemoteDevice(session, f"{url}:{server_port}")


@contextlib.contextmanager
def _tracker_socket(host: str, port: int, timeout_s: float) -> Iterator[socket.socket]:
    from tvm.rpc import base

    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        try:
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        except (OSError, RuntimeError):
            magic = None
        if magic != base.RPC_TRACKER_MAGIC:
            raise InputError(f"{host}:{port} is not a TVM RPC tracker (wrong handshake)")
        yield sock
    finally:
        sock.close()


class RpcRunner(Runner):
    """Runs a TVM CPU artifact on a remote device through an RPC session.

    Args:
        artifact: a TVM artifact built for the remote device's CPU.
        device: from ``connect_server`` or ``request_device``.
        threads: the remote TVM thread pool size (``None``: the board's default).
    """

    runtime = "rpc"

    def __init__(self, artifact: Artifact, device: RemoteDevice, threads: int | None = None):
        from tvm.runtime.vm import VirtualMachine

        super().__init__(artifact.inputs, artifact.outputs, threads)
        if artifact.format != "tvm" or (artifact.manifest.get("target") or {}).get("kind") not in (None, "llvm"):
            raise InputError(f"RPC benchmarking runs TVM CPU artifacts; {str(artifact.path)!r} is not one")
        self.device = device
        sess = device.session
        remote_name = f"edgeopt-{artifact.manifest.get('sha256', {}).get(artifact.model_file.name, 'model')[:16]}.so"
        try:
            # kernel plugins first: loading one registers the functions the model calls
            self._plugins = []
            for name in artifact.manifest.get("plugins", []):
                digest = artifact.manifest.get("sha256", {}).get(name, "plugin")[:16]
                remote_plugin = f"edgeopt-{digest}-{name}"
                sess.upload(str(artifact.path / name), target=remote_plugin)
                self._plugins.append(sess.load_module(remote_plugin))
            sess.upload(str(artifact.model_file), target=remote_name)
            lib = sess.load_module(remote_name)
            if threads:
                sess.get_function("runtime.config_threadpool")(1, int(threads))
            self.dev = sess.cpu(0)
            self.vm = VirtualMachine(lib, self.dev)
        except Exception as e:
            raise InputError(f"{device.name} could not load {str(artifact.model_file)!r} (is it built for "
                             f"that device's CPU?): {last_line(e)}") from None

    def example_inputs(self, seed: int = 0) -> list[np.ndarray]:
        return example_inputs(self.inputs, seed)

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        import tvm

        bound = [tvm.runtime.tensor(a, device=self.dev) for a in arrays]  # copied to the device once
        self.vm.set_input("main", *bound)
        return bound

    def _call(self, bound: Any) -> Sequence[Any]:
        self.vm.invoke_stateful("main")
        out = self.vm.get_outputs("main")
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def _to_numpy(self, value: Any) -> np.ndarray:
        return value.numpy()

    def benchmark(self, inputs: Any, warmup: int = 10, repeat: int = 100) -> BenchmarkResult:
        """``repeat`` single runs timed on the device by ``time_evaluator`` after ``warmup``."""
        check_counts(warmup, repeat)
        bound = self._bind(self.prepare(inputs))
        try:
            for _ in range(warmup):
                self.vm.invoke_stateful("main")
            timer = self.vm.time_evaluator("invoke_stateful", self.dev, number=1, repeat=repeat)
            samples = [float(s) * 1e3 for s in timer("main").results]
            self.last_samples = samples
        except Exception as e:
            raise RuntimeError(f"device {self.device.name} failed during the benchmark: {last_line(e)}") from None
        del bound
        machine = machine_fingerprint(self.threads)
        machine = {"device": self.device.name, "via": "tvm rpc", "threads": self.threads,
                   "client": {k: machine[k] for k in ("cpu", "machine", "versions")}}
        return BenchmarkResult(f"rpc ({self.device.name})", TimingStats.from_samples(samples), machine)


# ---- fleet benchmarking: every free device under a key ---------------------------------------

@dataclass
class FleetResult:
    """Per-device results, the pooled latency over the devices that finished, and the lost ones."""

    key: str
    devices: dict  # name -> BenchmarkResult
    lost: dict  # name -> reason
    pooled: TimingStats | None
    outputs: dict  # name -> list of output arrays (first run)

    def to_dict(self) -> dict:
        return {"key": self.key,
                "devices": {n: r.to_dict() for n, r in self.devices.items()},
                "lost": dict(self.lost),
                "pooled_latency_ms": self.pooled.to_report() if self.pooled else None}


def benchmark_fleet(artifact: Artifact, tracker: str, key: str, inputs: Any = None, warmup: int = 10,
                    repeat: int = 100, threads: int | None = None, chunks: int = 5,
                    request_timeout_s: float = 60.0, on_chunk=None, progress: Progress = None) -> FleetResult:
    """Benchmark ``artifact`` on every free device under ``key``, all at once.

    Each device's ``repeat`` runs are timed in ``chunks`` pieces, so a device that stops
    answering mid-run is noticed, named in ``lost`` with the error, and the others go on. The
    pooled statistics combine the samples of the devices that finished. ``on_chunk(name,
    runs_done)`` is called after each chunk.
    """
    log = reporter(progress)
    import threading

    check_counts(warmup, repeat)
    registered_devices(tracker, key)
    free = tracker_summary(tracker)["queue_info"].get(key, {}).get("free", 0)
    if free < 1:
        raise InputError(f"every device under key {key!r} is busy (tracker {tracker}); try again later")
    devices = [request_device(tracker, key, request_timeout_s) for _ in range(free)]
    log(f"fleet: {len(devices)} device(s) under {key!r}: {', '.join(d.name for d in devices)}")
    results, lost, outputs, device_samples = {}, {}, {}, {}
    lock = threading.Lock()
    sizes = [repeat // chunks + (1 if i < repeat % chunks else 0) for i in range(chunks)]
    sizes = [s for s in sizes if s > 0]

    def work(dev: RemoteDevice) -> None:
        try:
            runner = RpcRunner(artifact, dev, threads=threads)
            x = inputs if inputs is not None else runner.example_inputs()
            first = runner.run(x)
            samples: list[float] = []
            for i, n in enumerate(sizes):
                r = runner.benchmark(x, warmup=warmup if i == 0 else 0, repeat=n)
                samples += runner.last_samples
                if on_chunk:
                    on_chunk(dev.name, len(samples))
            stats = TimingStats.from_samples(samples)
            with lock:
                results[dev.name] = BenchmarkResult(f"rpc ({dev.name})", stats, r.machine)
                outputs[dev.name] = first
                device_samples[dev.name] = samples
        except Exception as e:  # a lost device is a result, not a failure of the fleet run
            with lock:
                lost[dev.name] = last_line(e)
        finally:
            dev.close()

    workers = [threading.Thread(target=work, args=(d,), daemon=True) for d in devices]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    pooled_samples = [s for samples in device_samples.values() for s in samples]
    pooled = TimingStats.from_samples(pooled_samples) if pooled_samples else None
    for name, reason in lost.items():
        log(f"fleet: lost {name}: {reason}")
    return FleetResult(key, results, lost, pooled, outputs)

