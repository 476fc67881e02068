"""The ``label`` stage: dataset adapters (:mod:`cxr.sources`) -> report labeller
(:mod:`cxr.labeler`) -> the configured label space (:mod:`cxr.labels`) -> one merged table.

:mod:`cxr.labels` holds the vocabulary (label spaces, maps, uncertainty policy, merge rules) that
the adapters themselves use; this module sits above both and runs them in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxr.executor import default_workers, make_executor
from cxr.labeler import Labeler
from cxr.labeler.labeler import label_parallel
from cxr.labeler.score import score_synthetic
from cxr.labels import LabelError, disagreement, label_names, merge_sources, nan_to_none, to_space
from cxr.sources import read_raw

log = logging.getLogger(__name__)

#: Default precedence: expert / dataset label tables first, our labeller, then scene graphs.
DEFAULT_PRECEDENCE = ("chexpert", "nih", "padchest", "mimic", "labeller", "imagenome", "jsrt")
#: Datasets whose native labels list every finding (a term not listed is absent).
EXHAUSTIVE = {"nih": True, "padchest": True, "chexpert": False, "mimic": False, "imagenome": False, "jsrt": False}


def _label_counts(df: pd.DataFrame, names: Sequence[str]) -> dict:
    out = {}
    for n in names:
        v = df[n]
        out[n] = {"pos": int((v == 1).sum()), "neg": int((v == 0).sum()), "unc": int((v == -1).sum()),
                  "blank": int(v.isna().sum())}
    return out


def build_labels(
    raw_dir,
    space: str = "chexpert14",
    vocabulary: str = "chexpert14",
    sections: Sequence[str] = ("findings", "impression"),
    precedence: Sequence[str] = DEFAULT_PRECEDENCE,
    unknown: str = "error",
    progress: bool = True,
    workers: int = 1,
    scheduler: str | None = None,
    chunk_size: int = 2000,
) -> tuple[pd.DataFrame, dict]:
    """Everything the ``label`` stage does: adapters -> labeller -> label space -> merge.

    Args:
        raw_dir: the raw data directory (ingest output).
        space: target label space (:data:`LABEL_SPACES`).
        vocabulary: labeller vocabulary for free-text reports (chexpert14 or chestxray14).
        sections: report sections the labeller reads.
        precedence: label sources, strongest first (see :func:`merge_sources`).
        unknown: unknown label strings in dataset files: ``error`` or ``count``.
        progress: progress bars.
        workers: labeller processes (0 = one per core, 1 = in this process); below two chunks of
            reports the labeller runs in this process.
        scheduler: a Dask scheduler address: label on that cluster (``workers`` is ignored).
        chunk_size: reports per task sent to a worker.

    Returns:
        ``(labels, summary)``: labels.parquet content (dataset, image_id, patient_id, study_id,
        the labels of ``space``, label_source), and the content of reports/label.json.

    Raises:
        LabelError / SourceError: bad input, named in the message.
    """
    names = label_names(space)
    tables = read_raw(raw_dir, unknown=unknown, progress=progress)
    candidates: dict[str, pd.DataFrame] = {}
    summary: dict = {"space": space, "labels": names, "sources": {}, "issues": {}, "labeller": None}
    images_by_ds: dict[str, pd.DataFrame] = {}
    for name, t in tables.items():
        summary["issues"][name] = {"count": len(t.issues), "examples": [vars(i) for i in t.issues[:5]]}
        if len(t.images):
            images_by_ds.setdefault(t.dataset, t.images)
    ids = ["dataset", "image_id", "patient_id", "study_id"]

    # Native label tables.
    for name, t in tables.items():
        if t.labels is None or not len(t.labels):
            continue
        key = "study_id" if t.label_level == "study" else "image_id"
        mapped = to_space(t.labels, t.label_vocab, space, key=key, exhaustive=EXHAUSTIVE.get(name, False))
        imgs = images_by_ds.get(t.dataset)
        if imgs is None:
            log.warning("%s labels have no image table; skipped", name)
            continue
        if key == "study_id":
            rows = imgs[ids].merge(mapped, on="study_id", how="inner")
        else:
            rows = imgs[ids].merge(mapped, on="image_id", how="inner")
        unmatched = int(len(mapped) - mapped[key].isin(imgs[key]).sum())
        if unmatched:
            summary["issues"].setdefault(name, {"count": 0, "examples": []})
            summary["issues"][name]["labels_without_image"] = unmatched
        candidates[name] = rows

    # Free-text reports -> labeller.
    reports = [(t.dataset, t.reports) for t in tables.values() if t.reports is not None and len(t.reports)]
    if reports:
        labeller = Labeler(vocabulary, sections=sections)
        labelled: dict[str, pd.DataFrame] = {}
        rows = []
        n_reports, seconds = 0, 0.0
        total = sum(len(rep) for _, rep in reports)
        n_workers = default_workers() if workers == 0 else workers
        parallel = scheduler is not None or (n_workers > 1 and total >= 2 * chunk_size)
        executor = make_executor(workers=n_workers, scheduler=scheduler) if parallel else None
        try:
            for dataset, rep in reports:
                t0 = time.perf_counter()
                if executor is None:
                    lab = labeller.label_many(rep["report"].tolist(), progress=progress)
                else:
                    lab = label_parallel(rep["report"].tolist(), vocabulary, sections, executor, chunk_size)
                seconds += time.perf_counter() - t0
                n_reports += len(rep)
                lab.insert(0, "study_id", rep["study_id"].to_numpy())
                labelled[dataset] = lab
        finally:
            if executor is not None:
                executor.close()
        for dataset, lab in labelled.items():
            lab = lab.drop_duplicates("study_id")
            mapped = to_space(lab, vocabulary, space, key="study_id")
            imgs = images_by_ds.get(dataset)
            if imgs is not None:
                rows.append(imgs[ids].merge(mapped, on="study_id", how="inner"))
        if rows:
            candidates["labeller"] = pd.concat(rows, ignore_index=True)
        summary["labeller"] = {
            "vocabulary": vocabulary,
            "sections": list(sections),
            "executor": "dask" if scheduler else (f"{n_workers} processes" if parallel else "in process"),
            "reports": n_reports,
            "seconds": round(seconds, 3),
            "reports_per_s": round(n_reports / seconds, 1) if seconds > 0 else None,
        }
        truth = Path(raw_dir) / "truth" / "truth.parquet"
        mimic = next((rep for dataset, rep in reports if dataset == "mimic"), None)
        if truth.is_file() and mimic is not None:
            # A synthetic cohort: score the labeller against the true findings (comparison only;
            # labels.parquet never takes a value from the truth table).
            summary["labeller"]["synthetic_truth"] = score_synthetic(raw_dir, mimic, labeller, labelled["mimic"])

    for name, df in candidates.items():
        summary["sources"][name] = {"images": int(len(df)), "counts": _label_counts(df, names)}
    merged, disagreements = merge_sources(candidates, names, precedence)
    merged = merged[["dataset", "image_id", "patient_id", "study_id", *names, "label_source"]]
    merged = merged.sort_values(["dataset", "image_id"], kind="stable").reset_index(drop=True)
    for n in names:
        merged[n] = merged[n].astype("float32")
    all_images = sum(len(df) for df in images_by_ds.values())
    summary["merged"] = {
        "images": int(len(merged)),
        "images_without_labels": int(all_images - len(merged)),
        "per_source": {k: int(v) for k, v in merged["label_source"].value_counts().sort_index().items()},
        "counts": _label_counts(merged, names),
    }
    summary["disagreement"] = disagreements
    return merged, nan_to_none(summary)
