"""The one training engine (Lightning) behind every trained model: classifiers (:mod:`cxr.train`),
the region detector (:mod:`cxr.anatomy.detector`) and the organ UNet (:mod:`cxr.anatomy.unet`).

Each task keeps only its small ``LightningModule`` (its loss and what it logs); the trainer, the
DVCLive logger, the AdamW + schedule recipes and the non-finite-loss check are here, once. After
torchvision's ``references/detection/engine.py``: the architecture differs, the loop does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cxr.distributed import broadcast_buffers, digests_agree
from cxr.errors import TrainError
from cxr.progress import interactive
from cxr.quiet import quiet

__all__ = ["OneCycleModule", "TrainError", "adamw_onecycle", "check_finite", "fit_module", "make_logger",
           "rank_zero_writes", "shard_loader"]


def make_logger(log_dir: str | Path | None, hparams: Mapping[str, Any] | None = None, dvcyaml: Any = False):
    """A DVCLive logger writing into ``log_dir`` (no git / DVC side effects), or False for none.

    ``dvcyaml`` False / None: plots are declared in the project's dvc.yaml, DVCLive must not edit it.
    """
    if log_dir is None:
        return False
    # dvclive is imported here, not at the top: only runs that log need it, and it pulls in git/DVC machinery
    from dvclive.lightning import DVCLiveLogger

    lg = DVCLiveLogger(dir=str(log_dir), dvcyaml=dvcyaml, save_dvc_exp=False, report=None)
    if hparams:
        lg.log_hyperparams(dict(hparams))
    return lg


def check_finite(loss: torch.Tensor, what: str, step: int, fix: str | Callable[[], str]) -> None:
    """Stop the run on a NaN / inf loss (the message names the step and the fix; a callable ``fix`` is
    built only then, so a message that reads tensors costs no device sync per step).

    Raises:
        TrainError: ``loss`` is not finite.
    """
    if not torch.isfinite(loss):
        raise TrainError(f"non-finite {what} loss {float(loss)} at step {step}; {fix() if callable(fix) else fix}")


def adamw_onecycle(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, total_steps: int,
                   pct_start: float = 0.15) -> dict[str, Any]:
    """AdamW with a one-cycle LR stepped per batch (Lightning's ``configure_optimizers`` return value)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total_steps), pct_start=pct_start)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def shard_loader(data: Dataset, batch_size: int, *, seed: int, world_size: int = 1, workers: int = 0,
                 collate_fn: Callable | None = None) -> DataLoader:
    """The shuffled, seeded training loader of one of ``world_size`` processes.

    ``batch_size`` is per process (as ``train.batch_size``): under DDP Lightning swaps in a
    ``DistributedSampler``, each rank loads ``ceil(len(data) / world_size)`` samples a pass, and a step
    sees ``batch_size x world_size`` images. The last incomplete batch is dropped only when this
    process's shard holds more than one batch (else a small shard would train on nothing).
    """
    shard = math.ceil(len(data) / max(1, world_size))
    return DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=collate_fn, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
                      drop_last=shard > batch_size)


class OneCycleModule(L.LightningModule):
    """A task module trained with AdamW + one-cycle over the steps this process actually takes.

    It builds its own training loader in ``train_dataloader`` (:func:`shard_loader`), once the trainer
    knows the number of processes, and sizes the schedule with Lightning's
    ``estimated_stepping_batches`` (per-rank batches x epochs, capped by ``max_steps``): under DDP the
    cycle then spans the same steps as one process with the same global batch, not twice as many.
    Subclasses keep their model in ``self.model`` and write ``training_step``.
    """

    def __init__(self, train_set: Dataset, batch_size: int, lr: float, weight_decay: float, *, seed: int,
                 workers: int = 0, collate_fn: Callable | None = None):
        super().__init__()
        self.train_set, self.batch_size, self.seed, self.workers = train_set, batch_size, seed, workers
        self.collate_fn = collate_fn
        self.lr, self.weight_decay = lr, weight_decay

    def train_dataloader(self) -> DataLoader:
        return shard_loader(self.train_set, self.batch_size, seed=self.seed, world_size=self.trainer.world_size,
                            workers=self.workers, collate_fn=self.collate_fn)

    def configure_optimizers(self):
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        return adamw_onecycle(self.model.parameters(), self.lr, self.weight_decay, steps)


@quiet
def fit_module(module: L.LightningModule, train: DataLoader | None, val: DataLoader | None = None, *, epochs: int,
               max_steps: int = -1, accelerator: str = "auto", devices: str | int = 1, strategy: str = "auto",
               num_nodes: int = 1, precision: str = "32-true", deterministic: bool | str = False, logger: Any = False,
               callbacks: list[L.Callback] | None = None, progress: bool = True) -> tuple[L.Trainer, float]:
    """Run Lightning's fit loop on ``module``; returns the trainer and the wall time in seconds.

    ``train`` None: the module's own ``train_dataloader`` (:class:`OneCycleModule`). ``val`` None: no
    validation loop (the detector and the UNet are scored after training).
    """
    trainer = L.Trainer(
        max_epochs=epochs, max_steps=max_steps, accelerator=accelerator, devices=devices, strategy=strategy,
        num_nodes=num_nodes, precision=precision, deterministic=deterministic, logger=logger, callbacks=callbacks or [],
        enable_checkpointing=False, enable_progress_bar=progress and interactive(), enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, limit_val_batches=0 if val is None else None,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train, val)
    return trainer, time.perf_counter() - t0


def rank_zero_writes(trainer: L.Trainer, model: torch.nn.Module, what: str) -> bool:
    """After a fit: True in the one process that scores and writes (rank 0, or the only process).

    Under DDP every rank must call it (collectives): every rank first takes rank 0's buffers (batch-norm
    running statistics, which each rank updated from its own last batch; :func:`~cxr.distributed.broadcast_buffers`),
    then the weight digests are compared. Ranks > 0 get False and write nothing; validation after
    training then runs on rank 0 over the whole splits.

    Raises:
        TrainError: on rank 0, when the ranks ended with different weights.
    """
    if trainer.world_size <= 1:
        return True
    broadcast_buffers(model)
    agree = digests_agree(model)
    if trainer.global_rank != 0:
        return False
    if not agree:
        raise TrainError(f"the {trainer.world_size} DDP ranks ended with different {what} weights; not saving")
    return True
