"""What every bench prints beside its numbers: the CPU, its vector / bf16 flags, the torch threads and the
precision the run computes in (the figures are only comparable on the same kind of machine).

Imported by the scripts of this folder as ``from _common import ...`` (``python bench/<x>.py`` puts
``bench/`` first on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: the CPU flags that decide which kernels oneDNN / ATen run (AVX2, AVX512, native bf16)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> str:
    """``"<model name>; avx2 avx512f ...; N cores"`` from ``/proc/cpuinfo`` (the platform string elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags")).split()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    except (OSError, StopIteration):
        return f"{platform.processor() or 'unknown CPU'}; flags unknown; {os.cpu_count()} cores"
    keep = [f for f in FLAGS if f in flags]
    return f"{model}; {' '.join(keep) or 'no avx2'}; {os.cpu_count()} cores"


def machine_line(precision: str) -> str:
    """One line: CPU, torch version and threads, the precision used, the load average now."""
    import torch

    from cxr.precision import cpu_has_bf16

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"CPU: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: "
            f"{cpu_has_bf16()}; precision: {precision}; load average {load:.1f}")


def training_precision(convolutional: bool = True) -> str:
    """What ``train.precision: auto`` picks for a CPU run here (cxr.precision.precision_for)."""
    from cxr.precision import precision_for

    return precision_for("auto", "cpu", convolutional=convolutional)


# ------------------------------------------------------------------ a trained default workspace, read only


class Workspace:
    """The inputs of a workspace after ``dvc repro`` (read only): tables, PNGs, features, model dirs, params."""

    def __init__(self, root: str | Path, params: str | Path | None = None):
        import pandas as pd

        from cxr.labelspace import label_names
        from cxr.params import load_section

        self.root = Path(root)
        self.params_file = Path(params) if params else self.root / "params.yaml"
        self.images_dir = self.root / "data/interim/images"
        self.images = pd.read_parquet(self.root / "data/interim/images.parquet")
        self.labels = pd.read_parquet(self.root / "data/interim/labels.parquet")
        self.splits = pd.read_parquet(self.root / "data/processed/splits.parquet")
        self.features_dir = self.root / "data/processed/features"
        self.coco_dir = self.root / "data/processed/coco"
        self.base = load_section("base", self.params_file)
        self.label = load_section("label", self.params_file)
        self.train = load_section("train", self.params_file)
        self.evaluate = load_section("evaluate", self.params_file)
        self.names = label_names(self.base.label_space)
        u = self.label.uncertainty
        self.uncertainty = {"policy": dict(u.per_class), "default": u.default, "blank": u.blank}

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def restrict(self, ids_by_split: dict[str, set[str] | None]):
        """The splits table with each split limited to the given image ids (None: the split as it is)."""
        import numpy as np

        keep = np.ones(len(self.splits), bool)
        for split, ids in ids_by_split.items():
            if ids is not None:
                keep &= ~((self.splits["split"] == split).to_numpy() & ~self.splits["image_id"].isin(ids).to_numpy())
        return self.splits[keep].reset_index(drop=True)


def train_eval(ws: Workspace, name: str, out_dir: Path, *, splits, test_splits=None, features_dir=None, params=None,
               unet_dir=None) -> dict:
    """Train ``name`` on TRAIN / VAL of ``splits`` (the workspace's params unless ``params``), then score it on
    the TEST rows of ``test_splits`` (default ``splits``) exactly as the evaluate stage does. Returns the
    metrics, plus ``seconds`` (training), ``train_images`` and ``precision``."""
    import time

    from cxr.train import train_model

    t0 = time.perf_counter()
    card = train_model(name, images=ws.images, labels=ws.labels, splits=splits, images_dir=ws.images_dir,
                       names=ws.names, uncertainty=ws.uncertainty, params=params or ws.train, seed=ws.base.seed,
                       out_dir=out_dir, log_dir=None, cache_dir=out_dir.parent / "cache", features_dir=features_dir,
                       unet_dir=unet_dir, progress=False)
    sec = time.perf_counter() - t0
    met = evaluate_dir(ws, out_dir, test_splits if test_splits is not None else splits, features_dir)
    met.update(seconds=sec, train_images=card["train"]["images"], precision=card["train"]["precision"],
               best_epoch=card["train"]["best_epoch"], epochs_run=card["train"]["epochs_run"])
    return met


def evaluate_dir(ws: Workspace, model_dir: Path, splits, features_dir=None) -> dict:
    """Test metrics of a model dir on the TEST rows of ``splits`` (evaluate stage rules and bootstrap)."""
    import tempfile

    from cxr.evaluate.classification import evaluate_model

    e = ws.evaluate
    with tempfile.TemporaryDirectory(prefix="cxr-bench-eval-") as tmp:
        met, *_ = evaluate_model(model_dir, images=ws.images, labels=ws.labels, splits=splits,
                                 images_dir=ws.images_dir, cache_dir=tmp, features_dir=features_dir,
                                 n_boot=e.bootstrap, ci=e.ci, ece_bins=e.ece_bins, seed=ws.base.seed, progress=False,
                                 min_positives=e.min_positives, truth=e.truth.model_dump())
    return met


def baselines(ws: Workspace, splits, cache_dir: Path) -> dict[str, dict]:
    """prevalence / pixels16 / metadata baselines (cxr.evaluate.baselines) trained on TRAIN / VAL and scored on the
    TEST rows of ``splits``."""
    from cxr.evaluate.baselines import run_baselines

    e, t = ws.evaluate, ws.train
    return run_baselines(images=ws.images, labels=ws.labels, splits=splits, images_dir=ws.images_dir, names=ws.names,
                         uncertainty=ws.uncertainty, frontal_only=t.frontal_only, datasets=t.datasets,
                         cache_dir=cache_dir, n_boot=e.bootstrap, ci=e.ci, ece_bins=e.ece_bins, seed=ws.base.seed,
                         min_positives=e.min_positives, truth=e.truth.model_dump())


def auroc_ci(met: dict) -> str:
    """``0.712 [0.650, 0.770]`` from a metrics dict (macro AUROC and its patient-bootstrap CI)."""
    v, lo, hi = met.get("macro_auroc"), met.get("macro_auroc_ci_low"), met.get("macro_auroc_ci_high")
    if v is None:
        return "-"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def print_table(head: tuple[str, ...], rows: list[tuple]) -> None:
    """A plain left-aligned text table (floats with 3 decimals)."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    width = [max(len(fmt(r[k])) for r in [head, *rows]) for k in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(fmt(v).ljust(w) for v, w in zip(r, width)).rstrip())
