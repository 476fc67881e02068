"""Multi-process (DDP) helpers for the training engines: whole-split validation, rank-0 writes.

Under DDP each rank validates its own shard of the validation split (Lightning's
``DistributedSampler``, which also pads the shards to equal length by repeating samples). Early
stopping, the best epoch and the validation thresholds must see the WHOLE split, once per sample:
:func:`gather_by_index` collects every rank's rows, drops the padding repeats by dataset index and
returns them in dataset order, so the macro AUROC is the one a single process computes. Without
an initialised process group (one process) it returns its inputs unchanged.

Plain ``torch.distributed`` calls (gloo on CPU, NCCL on GPU), no Lightning: any engine can call them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    """True in the process that writes model dirs, logs and reports."""
    return world()[0] == 0


def init_from_env(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Join the process group a launcher (``torchrun``, SLURM via its env) describes, if any and not yet
    joined: gloo on CPU, NCCL on CUDA. For work outside Lightning (feature extraction); returns :func:`world`."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return world()


def _all_gather_rows(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (first dimensions may differ between ranks)."""
    _, size = world()
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = t.to(dev)
    n = torch.tensor([t.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    pad = torch.zeros((longest - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=dev)
    parts = [torch.empty((longest, *t.shape[1:]), dtype=t.dtype, device=dev) for _ in range(size)]
    dist.all_gather(parts, torch.cat([t, pad]))
    return [p[: int(s.item())].cpu() for p, s in zip(parts, sizes)]


def gather_by_index(index: torch.Tensor, *arrays: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The rows of every rank, once per dataset index, in index order.

    Args:
        index: ``[n]`` dataset indices of this rank's rows (the ``index`` key of every sample).
        arrays: ``[n, ...]`` tensors aligned with ``index`` (probabilities, targets, mask).

    Returns:
        ``(index, *arrays)`` as numpy arrays over the union of all ranks' rows.
    """
    _, size = world()
    index = index.long().cpu()
    arrays = tuple(a.cpu() for a in arrays)
    if size > 1:
        index = torch.cat(_all_gather_rows(index))
        # bool and float16 do not travel through every backend: send as uint8 / float32 (exact)
        wire = {torch.bool: torch.uint8, torch.float16: torch.float32}
        arrays = tuple(torch.cat(_all_gather_rows(a.to(wire.get(a.dtype, a.dtype)))).to(a.dtype) for a in arrays)
    idx = index.numpy()
    uniq, first = np.unique(idx, return_index=True)  # sorted; padding repeats dropped
    return (uniq, *(a.numpy()[first] for a in arrays))


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (batch-norm running statistics), in place.

    DDP all-reduces gradients, so the parameters of every rank stay equal, but each rank updates its
    batch-norm running mean / variance from its own batch; DDP copies rank 0's buffers to the others
    only at the start of the next forward. After the last training step they differ, so a fit with no
    validation pass after it (the detector, the UNet) must take rank 0's before the ranks compare
    weights, as DDP itself would. No-op in one process.
    """
    _, size = world()
    if size == 1:
        return
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    with torch.no_grad():
        for b in module.buffers():
            t = b.detach().to(dev)
            dist.broadcast(t, src)
            b.copy_(t.to(b.device))


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state_dict (to check that every rank holds the same weights)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def digests_agree(module: torch.nn.Module) -> bool:
    """True when every rank's :func:`state_digest` is the same (always True in one process)."""
    _, size = world()
    mine = state_digest(module)
    if size == 1:
        return True
    got: list[str | None] = [None] * size
    dist.all_gather_object(got, mine)
    return all(g == mine for g in got)
