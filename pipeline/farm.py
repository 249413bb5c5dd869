"""A local device farm: a TVM RPC tracker and servers as processes on 127.0.0.1.

Tooling for tests and for trying remote benchmarking without boards; it is not shipped to
devices (``edgeopt.runtimes.rpc`` only connects to servers and trackers that already run).
``start_local_farm`` starts ``python -m tvm.exec.rpc_tracker`` and the servers in their own
process groups, each logging to a file, and returns once the tracker lists them all.

Example:
    >>> from edgeopt.pipeline.farm import start_local_farm  # doctest: +SKIP
    >>> farm = start_local_farm(2, "test", "logs/")  # doctest: +SKIP
    >>> farm.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeopt.runtimes.rpc import tracker_summary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalFarm:
    """A TVM RPC tracker and servers on 127.0.0.1, started as subprocesses; ``stop()`` ends all."""

    tracker: str
    key: str
    servers: list  # (name "127.0.0.1:port", Popen)
    tracker_proc: subprocess.Popen
    log_dir: Path

    def stop_server(self, index: int) -> str:
        """End server ``index`` (and the sessions it forked); return its name."""
        name, proc = self.servers[index]
        _kill(proc)
        return name

    def stop(self) -> None:
        for _, proc in self.servers:
            _kill(proc)
        _kill(self.tracker_proc)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # The server forks a process per session; end the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


def start_local_farm(n_servers: int, key: str, log_dir: str | os.PathLike,
                     timeout_s: float = 120.0) -> LocalFarm:
    """Start ``python -m tvm.exec.rpc_tracker`` and ``n_servers`` ``rpc_server``\\ s under ``key``;
    return once the tracker lists them all. ``log_dir`` gets ``tracker.log`` and ``server<i>.log``.

    Raises:
        RuntimeError: the tracker or the servers did not come up within ``timeout_s`` (everything
            started so far is stopped first).
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    tport = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def spawn(args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            return subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)

    tracker_proc = spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tport),
                          "--port-end", str(tport + 1)], log_dir / "tracker.log")
    farm = LocalFarm(f"127.0.0.1:{tport}", key, [], tracker_proc, log_dir)
    try:
        _wait(lambda: _listening("127.0.0.1", tport), timeout_s, "the tracker to listen")
        for i in range(n_servers):
            port = free_port()
            proc = spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                          "--port-end", str(port + 1), "--tracker", farm.tracker, "--key", key],
                         log_dir / f"server{i}.log")
            farm.servers.append((f"127.0.0.1:{port}", proc))

        def all_registered() -> bool:
            info = tracker_summary(farm.tracker)["queue_info"].get(key, {})
            return info.get("free", 0) >= n_servers

        _wait(all_registered, timeout_s, f"{n_servers} servers to register under {key!r}")
    except BaseException:
        farm.stop()
        raise
    return farm


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)
