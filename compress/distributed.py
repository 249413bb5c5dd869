"""Distillation across processes with torch.distributed: the torchrun worker.

``distill(..., nproc=N)`` writes the job (student, teacher, data, config) to a temporary folder,
runs ``torchrun --standalone --nproc_per_node N -m edgeopt.compress.distributed JOB``, and loads
rank 0's trained model back (the launcher lives in ``edgeopt.compress.distill`` with the step;
this entry point sits above it, so the two never import each other). Each worker joins the
process group (gloo on CPU, nccl when every rank has a GPU), trains its shard with DistributedDataParallel, and rank 0 writes
the result, the checkpoints and the log lines. A user's own torchrun script can instead call
``distill`` after ``torch.distributed.init_process_group``; it then runs as one rank of that job.

Example:
    >>> import edgeopt.compress as ec  # doctest: +SKIP
    >>> r = ec.distill(pruned, ec.DistillConfig(epochs=10), task, teacher=teacher, nproc=2)  # doctest: +SKIP
    >>> r.metrics["processes"]  # doctest: +SKIP
    2
"""

from __future__ import annotations

import os
import sys

from .distill import DistillConfig, train_distill


def worker(job_path: str) -> None:
    """One torchrun rank: join the group, train, and (rank 0) save the result."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", 1)) \
        else "gloo"
    dist.init_process_group(backend)
    try:
        job = torch.load(job_path, map_location="cpu", weights_only=False)  # written by distill(nproc=N)
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
