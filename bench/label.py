"""Benchmark of the report labeller: quality on real expert-labelled reports, speed, and the
CheXpert labeller's own sample output - side by side with a keyword-only baseline.

Quality: OpenI / Indiana University reports (``../shared/realdata/openi``), labelled from
FINDINGS + IMPRESSION text only, against the expert labels in ``openi_gold_dev.csv``
(ChestX-ray14 findings + normal; all 3,080 are development reports). K-fold cross-validation
(``cxr.labeler.crossval``): on each split the mention phrases to keep are chosen on the training
folds (a phrase that asserted a finding >= 3 times with precision < 0.5 there is dropped) and
the held-out fold is labelled with what is left; per fold and mean micro / macro F1 of the
selected lists, of the fixed lists and of the keyword baseline, then the cross-validated F1 per
class (held-out folds pooled). The fixed lists are also shown by report-number half (even ids:
the half read while writing them). Scoring policy: a labeller -1 (uncertain) counts as not
positive (U-Zeros); U-Ones figures are printed too. Classes without any gold positive (Hernia)
are shown but left out of the macro average. The keyword baseline is the same vocabulary with
every mention positive (no negation, no uncertainty, no normality statements).

Speed: reports per second on one core over all OpenI reports (repeated to >= 10,000).

Synthetic: with ``--synthetic DIR`` (a generated raw dir with truth/truth.parquet), the
chexpert14 labeller is also scored against the cohort's true findings.

Usage: python bench/label.py [--realdata ../shared/realdata] [--synthetic data/raw]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.labeler import Labeler
from cxr.labeler.crossval import (
    PhraseIndex,
    asserted_phrases,
    fold_ids,
    labeller_from_spec,
    phrase_precision,
    prune_spec,
    select_phrases,
    vocabulary_spec,
)
from cxr.labeler.score import scores
from cxr.sources import openi
from cxr.sources.synthetic import read_synthetic, read_truth

log = logging.getLogger("bench.label")
GOLD_COLUMNS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
                "normal"]


def openi_gold(realdata: Path) -> tuple[pd.DataFrame, list[str]]:
    """Gold labels joined to report text (FINDINGS + IMPRESSION)."""
    t = openi.read_reports(realdata / "openi" / "NLMCXR_reports.tgz")
    gold = pd.read_csv(realdata / "openi" / "openi_gold_dev.csv")
    df = gold.merge(t.reports[["study_id", "report"]], left_on="filename", right_on="study_id", how="left")
    missing = int(df["report"].isna().sum())
    if missing:
        log.warning("%d gold rows have no report XML; scored as empty reports", missing)
    df["report"] = df["report"].fillna("")
    df["half"] = np.where(df["filename"].str[3:].astype(int) % 2 == 0, "dev", "held-out")
    return df, t.reports["report"].tolist()


def predict(labeller: Labeler, reports: list[str], uncertain_positive: bool) -> np.ndarray:
    lab = labeller.label_many(reports, progress=False).rename(columns={"No Finding": "normal"})
    v = lab[GOLD_COLUMNS].to_numpy()
    return (v == 1) | ((v == -1) & uncertain_positive)


def print_table(title: str, a: pd.DataFrame, b: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(f"{'class':20s} {'n_pos':>6s} | {'labeller P':>10s} {'R':>6s} {'F1':>6s} | {'keyword P':>10s} {'R':>6s} {'F1':>6s}")
    for name in a.index:
        if name == "micro":
            print("-" * 82)
        ra, rb = a.loc[name], b.loc[name]
        fa = "   n/a" if np.isnan(ra.F1) else f"{ra.F1:6.3f}"
        fb = "   n/a" if np.isnan(rb.F1) else f"{rb.F1:6.3f}"
        print(f"{name:20s} {int(ra.n_pos):6d} | {ra.P:10.3f} {ra.R:6.3f} {fa} | {rb.P:10.3f} {rb.R:6.3f} {fb}")


def _fold_line(name: str, a: pd.DataFrame) -> str:
    return f"{name} {a.loc['micro', 'F1']:.3f} / {a.loc['macro', 'F1']:.3f}"


def bench_openi(realdata: Path, k: int = 5, seed: int = 0, min_count: int = 3, min_precision: float = 0.5) -> dict:
    """K-fold cross-validation over the OpenI development reports (see cxr.labeler.crossval)."""
    df, all_reports = openi_gold(realdata)
    spec, source = vocabulary_spec("chestxray14")
    full, kw = Labeler("chestxray14"), Labeler("chestxray14", use_context=False)
    gold = df[GOLD_COLUMNS].to_numpy() == 1
    reports = df["report"].tolist()
    index = PhraseIndex.from_spec(spec)
    asserted = asserted_phrases(full, index, reports)
    obs_gold = {n: gold[:, j] for j, n in enumerate(GOLD_COLUMNS) if n != "normal"}
    helpers = [o.name for o in full.vocab.observations if not o.output]
    normal = gold[:, GOLD_COLUMNS.index("normal")]
    folds = fold_ids(len(df), k, seed)
    p_full, p_kw = predict(full, reports, False), predict(kw, reports, True)
    p_sel = np.zeros_like(gold)
    per_fold = []
    print(f"\nOpenI development reports ({len(df)}), {k}-fold cross-validation (seed {seed}); "
          f"phrases dropped on the training folds: asserted >= {min_count} times with precision < {min_precision}")
    print("fold  reports  dropped | micro / macro F1: selected lists    fixed lists    keyword")
    for f in range(k):
        tr, te = folds != f, folds == f
        stats = phrase_precision([asserted[i] for i in np.flatnonzero(tr)], {n: g[tr] for n, g in obs_gold.items()},
                                 helpers, normal[tr])
        drop = select_phrases(stats, min_count, min_precision)
        lab = labeller_from_spec(prune_spec(spec, drop), source)
        p_sel[te] = predict(lab, [reports[i] for i in np.flatnonzero(te)], False)
        a, b, c = (scores(p[te], gold[te], GOLD_COLUMNS) for p in (p_sel, p_full, p_kw))
        per_fold.append((a, b, c))
        print(f"{f:4d} {int(te.sum()):8d} {len(drop):8d} | {_fold_line('', a):>33s} {_fold_line('', b):>14s} "
              f"{_fold_line('', c):>14s}   dropped: {sorted(f'{o}: {p}' for o, p in drop)}")
    for name, j in (("selected lists", 0), ("fixed lists", 1), ("keyword", 2)):
        mi = np.array([x[j].loc["micro", "F1"] for x in per_fold])
        ma = np.array([x[j].loc["macro", "F1"] for x in per_fold])
        print(f"mean over folds, {name:15s}: micro {mi.mean():.3f} (sd {mi.std(ddof=1):.3f})  "
              f"macro {ma.mean():.3f} (sd {ma.std(ddof=1):.3f})")
    a, b = scores(p_sel, gold, GOLD_COLUMNS), scores(p_kw, gold, GOLD_COLUMNS)
    print_table(f"cross-validated per class (held-out folds pooled, {len(df)} reports), uncertain = U-Zeros: "
                "selected lists vs keyword baseline", a, b)
    out = {"folds": per_fold, "pooled": (a, b)}
    # The fixed lists by report-number half (the lists were written reading the even half).
    print("\nfixed lists by half (micro / macro F1)   labeller          keyword")
    for policy, unc in (("U-Zeros", False), ("U-Ones", True)):
        pc = predict(full, reports, unc)
        for half in ("dev", "held-out"):
            m = (df["half"] == half).to_numpy()
            x, y = scores(pc[m], gold[m], GOLD_COLUMNS), scores(p_kw[m], gold[m], GOLD_COLUMNS)
            print(f"  {policy:8s} {half:9s} ({int(m.sum())})   {x.loc['micro', 'F1']:.3f} / {x.loc['macro', 'F1']:.3f}"
                  f"     {y.loc['micro', 'F1']:.3f} / {y.loc['macro', 'F1']:.3f}")
    # Speed on one core: every OpenI report, repeated to at least 10,000.
    reps = (all_reports * (10_000 // max(len(all_reports), 1) + 1))[:max(10_000, len(all_reports))]
    for name, lab in (("labeller chexpert14", Labeler("chexpert14")), ("labeller chestxray14", full), ("keyword chestxray14", kw)):
        t0 = time.perf_counter()
        lab.label_many(reps, progress=False)
        dt = time.perf_counter() - t0
        print(f"speed {name:22s}: {len(reps) / dt:8.0f} reports/s ({len(reps)} reports, {dt:.2f} s, one core)")
    return out


def bench_chexpert_samples(realdata: Path) -> bool:
    d = realdata / "chexpert_labeler"
    reports = pd.read_csv(d / "sample_reports.csv", header=None, dtype=str, keep_default_na=False)[0].tolist()
    expected = pd.read_csv(d / "labeled_reports.csv")
    lab = Labeler("chexpert14")
    got = lab.label_many(reports, progress=False)
    ok = got.equals(expected[lab.labels].astype(float)) and expected["Reports"].tolist() == reports
    kw = Labeler("chexpert14", use_context=False).label_many(reports, progress=False)
    kw_ok = kw.equals(expected[lab.labels].astype(float))
    print(f"\nCheXpert labeller sample reports ({len(reports)}): labeller reproduces expected output exactly: {ok}; "
          f"keyword baseline: {kw_ok}")
    return ok


def bench_synthetic(raw: Path) -> None:
    tables = read_synthetic(raw)
    truth = read_truth(raw)
    rep = tables["mimic"].reports
    lab = Labeler("chexpert14")
    names = [n for n in lab.labels if n in truth.columns]
    study_truth = truth.groupby("study_id")[names].max()
    pred = lab.label_many(rep["report"].tolist(), progress=False)
    pred.index = rep["study_id"].to_numpy()
    kw = Labeler("chexpert14", use_context=False).label_many(rep["report"].tolist(), progress=False)
    kw.index = pred.index
    common = study_truth.index.intersection(pred.index)
    g = study_truth.loc[common, names].to_numpy() == 1
    for policy, unc in (("U-Ones", True), ("U-Zeros", False)):
        v = pred.loc[common, names].to_numpy()
        a = scores((v == 1) | ((v == -1) & unc), g, names)
        b = scores(kw.loc[common, names].to_numpy() == 1, g, names)
        print_table(f"synthetic cohort {raw} ({len(common)} MIMIC-style reports), uncertain = {policy}", a, b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--realdata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "realdata")
    p.add_argument("--synthetic", type=Path, default=None, help="synthetic raw dir with truth/truth.parquet")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold cross-validation (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    bench_openi(args.realdata, k=args.folds, seed=args.seed)
    ok = bench_chexpert_samples(args.realdata)
    if args.synthetic:
        bench_synthetic(args.synthetic)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
