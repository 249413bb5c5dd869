"""Distillation across processes with torch.distributed: the torchrun launcher and worker.

``distill(..., nproc=N)`` calls ``launch``: it writes the job (student, teacher, data, config) to a
temporary folder, runs ``torchrun --standalone --nproc_per_node N -m edgeopt.compress.distributed
JOB``, and loads rank 0's trained model back. Each worker joins the process group (gloo on CPU,
nccl when every rank has a GPU), trains its shard with DistributedDataParallel, and rank 0 writes
the result, the checkpoints and the log lines. A user's own torchrun script can instead call
``distill`` after ``torch.distributed.init_process_group``; it then runs as one rank of that job.

Example:
    >>> import edgeopt.compress as ec  # doctest: +SKIP
    >>> r = ec.distill(pruned, ec.DistillConfig(epochs=10), task, teacher=teacher, nproc=2)  # doctest: +SKIP
    >>> r.metrics["processes"]  # doctest: +SKIP
    2
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from edgeopt.core.errors import InputError


#: A distributed run that takes longer than this is stopped (seconds).
TIMEOUT_S = 6 * 3600


def launch(student, teacher, data, config, val, nproc: int, checkpoint_dir, progress: bool):
    """Run ``train_distill`` on ``nproc`` processes under torchrun; return ``(model, record)``."""
    import torch

    from .distill import _training_data, _xy, check_split, data_metric

    train_x, train_y, batches = _training_data(data)
    check_split(config, len(train_x) if batches is None else None, nproc)
    if val is None and hasattr(data, "val"):
        val = data.val
    val_xy = _xy(val) if val is not None else None
    with tempfile.TemporaryDirectory(prefix="edgeopt-distill-") as tmp:
        job = Path(tmp) / "job.pt"
        # the metric travels with the arrays: float targets alone cannot say mae or cosine
        torch.save({"student": student, "teacher": teacher, "train": (train_x, train_y), "val": val_xy,
                    "metric": data_metric(data),
                    "config": asdict(config), "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
                    "progress": progress, "result": str(Path(tmp) / "result.pt")}, job)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "edgeopt.compress.distributed", str(job)]
        # One compute thread per worker unless told otherwise: N workers share the machine's cores.
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
        r = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, env=env, timeout=TIMEOUT_S)
        if r.returncode != 0:
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "InputError" in ln]
            if errors:
                raise InputError(errors[-1].split("InputError:", 1)[-1].strip())
            raise RuntimeError(f"distributed distillation failed (torchrun exit {r.returncode}):\n"
                               + "\n".join(lines[-15:]))
        result = torch.load(Path(tmp) / "result.pt", map_location="cpu", weights_only=False)
    model = copy.deepcopy(student)
    model.load_state_dict(result["state"])
    model.eval()
    return model, result["record"]


def worker(job_path: str) -> None:
    """One torchrun rank: join the group, train, and (rank 0) save the result."""
    import torch
    import torch.distributed as dist

    from .distill import DistillConfig, train_distill

    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", 1)) \
        else "gloo"
    dist.init_process_group(backend)
    try:
        job = torch.load(job_path, map_location="cpu", weights_only=False)  # written by launch()
        config = DistillConfig(**{**job["config"], "features": tuple(tuple(p) for p in job["config"]["features"])})
        model, record = train_distill(job["student"], job["teacher"], job["train"], config, val=job["val"],
                                      progress=job["progress"], checkpoint_dir=job["checkpoint_dir"],
                                      metric=job.get("metric"))
        if dist.get_rank() == 0:
            torch.save({"state": model.state_dict(), "record": record}, job["result"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
