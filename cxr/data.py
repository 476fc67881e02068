"""Datasets of the classifier zoo and the compact image cache they read from.

Dataset contract (after torchxrayvision's ``Dataset``): ``names`` (label names in model output
order), ``meta`` (row-aligned table: image_id, patient_id, split, ...), ``raw`` (``[N, C]`` stored
labels 1 / 0 / -1 / NaN), ``targets`` / ``mask`` (training targets in {0, 1} and the loss mask,
from :func:`cxr.labels.apply_uncertainty`), and samples as dicts with fixed keys:

* :class:`ImageDataset`: ``image`` uint8 ``[1, S, S]``, ``targets`` float ``[C]``, ``mask`` bool
  ``[C]``, ``index`` int.
* :class:`RegionDataset`: ``features`` float16 ``[R, D]`` (0 where missing), ``presence`` bool ``[R]``, ``boxes``
  ``[R, 4]``, ``region_targets`` float ``[R, F]``, ``region_mask`` bool ``[R, F]`` + the above
  targets / mask / index.

Images are decoded once into :class:`ImageCache`, a uint8 memory-mapped ``[N, S, S]`` array (a
600-image cohort at 224 px is 30 MB), so epochs after the first never open a PNG. Intensity
normalisation happens on the batch (on the device) with :func:`normalise`; its constants go into
the model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from cxr import shards
from cxr.io import write_json, write_parquet
from cxr.labels import apply_uncertainty
from cxr.errors import DataError
from cxr.intensity import NORMALISATION, normalise  # noqa: F401  (re-exported: the image models' input)
from cxr.progress import tqdm

log = logging.getLogger(__name__)

def load_png_square(path: str | Path | IO[bytes], size: int) -> np.ndarray:
    """Decode a grey PNG (8 or 16 bit), pad it centred to a square and resize to ``size``: uint8 ``[S, S]``.

    ``path``: a file, a member of a shard folder named by its path (:func:`cxr.shards.open_image`),
    or an open binary stream.
    """
    with (Image.open(path) if hasattr(path, "read") else shards.open_image(path)) as im:
        im.load()
        arr = np.asarray(im)
    return png_square(arr, size)


def png_square(arr: np.ndarray, size: int) -> np.ndarray:
    """A decoded grey PNG array (8 / 16 bit, or RGB) -> the square uint8 ``[S, S]`` :func:`load_png_square` gives."""
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    if arr.dtype == np.uint16 or arr.max() > 255:
        arr = arr.astype(np.float32) / 257.0
    arr = np.asarray(arr, dtype=np.uint8) if arr.dtype != np.uint8 else arr
    h, w = arr.shape
    if h != w:
        side = max(h, w)
        sq = np.zeros((side, side), np.uint8)
        sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = arr
        arr = sq
    if arr.shape[0] != size:
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return arr


class ImageCache:
    """uint8 ``[N, S, S]`` memory-mapped images, one row per ``image_id``.

    Layout of ``root``: ``images.npy`` (``np.load(mmap_mode="r")``), ``index.parquet`` (image_id,
    row) and ``meta.json`` (size, count, key = hash of the inputs). :meth:`build` reuses an existing
    cache whose key matches and otherwise writes a new one (atomically: a tmp file renamed). The
    PNGs may be files or members of a shard folder (``convert.storage: shards``, :mod:`cxr.shards`):
    the same images give the same array either way.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.root}: not an image cache (no meta.json); build it with ImageCache.build")
        self.meta = json.loads(meta_path.read_text())
        self.size = int(self.meta["size"])
        self.array = np.load(self.root / "images.npy", mmap_mode="r")
        index = pd.read_parquet(self.root / "index.parquet")
        self.rows = dict(zip(index["image_id"], index["row"]))

    @staticmethod
    def key(paths: Sequence[Path], size: int) -> str:
        h = hashlib.sha256(f"v1 {size}".encode())
        for p in paths:
            size_, mtime = shards.fingerprint(p)  # a file's, or a shard member's (its shard's mtime)
            h.update(f"{p}|{size_}|{mtime}".encode())
        return h.hexdigest()[:16]

    @classmethod
    def build(cls, image_ids: Sequence[str], paths: Sequence[str | Path], size: int, root: str | Path,
              progress: bool = True) -> ImageCache:
        """Decode every PNG once into ``root`` (skipped when an identical cache is already there)."""
        root = Path(root)
        paths = [Path(p) for p in paths]
        missing = [str(p) for p in paths if not shards.exists(p)]
        if missing:
            raise DataError(f"{len(missing)} image(s) not found, e.g. {missing[:3]} (run the convert stage)")
        key = cls.key(paths, size)
        if (root / "meta.json").is_file():
            old = json.loads((root / "meta.json").read_text())
            if old.get("key") == key:
                return cls(root)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / "images.npy.tmp"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
        for i, p in enumerate(tqdm(paths, desc=f"image cache {size}px", unit="img", disable=not progress)):
            arr[i] = load_png_square(p, size)
        arr.flush()
        del arr
        tmp.replace(root / "images.npy")
        write_parquet(root / "index.parquet", pd.DataFrame({"image_id": list(image_ids), "row": np.arange(len(paths))}))
        write_json(root / "meta.json", {"size": size, "count": len(paths), "key": key})
        return cls(root)

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self.array[self.rows[image_id]]


def join_split(images: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, names: Sequence[str],
               split: str | Sequence[str], frontal_only: bool = True,
               datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of ``split`` (``ok`` images only) with image metadata, patient and label columns, in a stable order.

    ``patient_key`` is ``dataset:patient_id`` (as in :mod:`cxr.split`) when ``splits`` has a dataset column.
    ``datasets``: keep only images of these datasets (``train.datasets``; None = all).
    """
    want = [split] if isinstance(split, str) else list(split)
    missing = [n for n in names if n not in labels.columns]
    if missing:
        raise DataError(f"labels table lacks label column(s) {missing}; was the label stage run with this base.label_space?")
    df = splits.loc[splits["split"].isin(want), ["image_id", "patient_id", "split"]].copy()
    # The cluster of every patient-level statistic (bootstrap, retrieval exclusion) is the split's
    # key: patient ids are only unique within their dataset (NIH patient 1 is not MIMIC patient 1).
    pid = splits.loc[df.index, "patient_id"].astype(str)
    df["patient_key"] = (splits.loc[df.index, "dataset"].astype(str) + ":" + pid) if "dataset" in splits.columns else pid
    ok = images["status"] == "ok"
    if datasets:
        unknown = sorted(set(datasets) - set(images["dataset"].dropna()))
        if unknown:
            raise DataError(f"train.datasets lists {unknown}, which the images table does not hold "
                            f"(datasets present: {sorted(set(images['dataset'].dropna()))})")
        ok &= images["dataset"].isin(list(datasets))
    img = images.loc[ok, ["image_id", "png_path", "view"]]
    df = df.merge(img, on="image_id", how="inner").merge(labels[["image_id", *names]], on="image_id", how="inner")
    if frontal_only:
        df = df[~df["view"].fillna("").str.upper().str.contains("LAT")]
    if df.empty:
        raise DataError(f"no usable images in split(s) {want} (after status/view filters)")
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


class ImageDataset(Dataset):
    """Cached images + targets of one split.

    Args:
        meta: rows from :func:`join_split` (must hold ``image_id`` and the label columns).
        names: label columns in model output order.
        cache: an :class:`ImageCache` holding every ``image_id`` of ``meta``.
        uncertainty: keyword arguments of :func:`cxr.labels.apply_uncertainty` (policy, default, blank).
    """

    def __init__(self, meta: pd.DataFrame, names: Sequence[str], cache: ImageCache, uncertainty: dict | None = None):
        self.meta, self.names, self.cache = meta.reset_index(drop=True), list(names), cache
        absent = [i for i in self.meta["image_id"] if i not in cache.rows]
        if absent:
            raise DataError(f"{len(absent)} image(s) missing from the cache, e.g. {absent[:3]}")
        self.raw = self.meta[self.names].to_numpy(dtype=np.float64, na_value=np.nan)
        self.targets, self.mask = apply_uncertainty(self.meta, self.names, **(uncertainty or {}))
        self._rows = np.array([cache.rows[i] for i in self.meta["image_id"]])

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.from_numpy(np.array(self.cache.array[self._rows[i]])).unsqueeze(0),
            "targets": torch.from_numpy(self.targets[i]),
            "mask": torch.from_numpy(self.mask[i]),
            "index": i,
        }


class RegionFeatures:
    """Region features of the ``features`` stage (contract: docstring of ``cxr.anatomy.features``).

    A folder whose arrays are aligned row by row with ``index.parquet`` (image_id, ...):
    ``features.npy`` float16 ``[N, R, D]`` (NaN where a region is missing), ``mask.npy`` bool
    ``[N, R]`` (region present), ``boxes.npy`` ``[N, R, 4]``, ``labels.npy`` ``[N, R, F]`` (region
    findings 1 / 0 / NaN) and ``meta.json`` (``regions``, ``findings``). Arrays are memory-mapped.
    """

    FILES = {"features": "features", "presence": "mask", "boxes": "boxes", "region_labels": "labels"}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        missing = [f"{f}.npy" for f in self.FILES.values() if not (self.root / f"{f}.npy").is_file()]
        missing += [f for f in ("index.parquet",) if not (self.root / f).is_file()]
        if missing:
            raise DataError(f"{self.root}: not a region feature folder (features stage); missing {missing}")
        self.index = pd.read_parquet(self.root / "index.parquet")
        for attr, f in self.FILES.items():
            setattr(self, attr, np.load(self.root / f"{f}.npy", mmap_mode="r"))
        n = len(self.index)
        bad = {f: getattr(self, a).shape for a, f in self.FILES.items() if getattr(self, a).shape[0] != n}
        if bad:
            raise DataError(f"{self.root}: arrays not aligned with index.parquet ({n} rows): {bad}")
        meta_path = self.root / "meta.json"
        self.meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.region_names = list(self.meta.get("regions", [str(r) for r in range(self.features.shape[1])]))
        self.finding_names = list(self.meta.get("findings", [str(f) for f in range(self.region_labels.shape[2])]))
        self.rows = dict(zip(self.index["image_id"], range(n)))


def region_inputs(features: np.ndarray, presence: np.ndarray, boxes: np.ndarray) -> dict[str, torch.Tensor]:
    """The model inputs of one image's region features ``[R, D]``, presence ``[R]`` and boxes ``[R, 4]``:
    float16 features and float32 boxes with missing (NaN) regions zeroed; the presence mask carries the absence."""
    feats = np.nan_to_num(np.array(features, dtype=np.float16), nan=0.0, posinf=0.0, neginf=0.0)
    return {"features": torch.from_numpy(feats), "presence": torch.from_numpy(np.array(presence, dtype=bool)),
            "boxes": torch.from_numpy(np.nan_to_num(np.array(boxes, dtype=np.float32)))}


class RegionDataset(Dataset):
    """Region features + image targets (+ region targets) of one split; same contract as ImageDataset."""

    def __init__(self, meta: pd.DataFrame, names: Sequence[str], feats: RegionFeatures, uncertainty: dict | None = None):
        meta = meta[meta["image_id"].isin(feats.rows)].reset_index(drop=True)
        if meta.empty:
            raise DataError("no image of this split has region features")
        self.meta, self.names, self.feats = meta, list(names), feats
        self.raw = meta[self.names].to_numpy(dtype=np.float64, na_value=np.nan)
        self.targets, self.mask = apply_uncertainty(meta, self.names, **(uncertainty or {}))
        self._rows = np.array([feats.rows[i] for i in meta["image_id"]])

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict:
        r = self._rows[i]
        rl = np.asarray(self.feats.region_labels[r], dtype=np.float32)
        return {
            **region_inputs(self.feats.features[r], self.feats.presence[r], self.feats.boxes[r]),
            "region_targets": torch.from_numpy((rl == 1).astype(np.float32)),
            "region_mask": torch.from_numpy(~np.isnan(rl)),
            "targets": torch.from_numpy(self.targets[i]),
            "mask": torch.from_numpy(self.mask[i]),
            "index": i,
        }
