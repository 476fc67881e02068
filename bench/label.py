"""Benchmark of the report labeller: quality on real expert-labelled reports, speed, and the
CheXpert labeller's own sample output - side by side with a keyword-only baseline.

Quality: OpenI / Indiana University reports (``../shared/realdata/openi``), labelled from
FINDINGS + IMPRESSION text only, against the expert labels in ``openi_gold_dev.csv``
(ChestX-ray14 findings + normal). The gold set is split by report number into a *dev* half
(even ids; the only half whose reports were read while writing phrase lists) and a *held-out*
half (odd ids); both are printed. Scoring policy: a labeller -1 (uncertain) counts as not
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


def bench_openi(realdata: Path) -> dict:
    df, all_reports = openi_gold(realdata)
    ctx, kw = Labeler("chestxray14"), Labeler("chestxray14", use_context=False)
    gold = df[GOLD_COLUMNS].to_numpy() == 1
    reports = df["report"].tolist()
    out = {}
    pk = predict(kw, reports, uncertain_positive=True)
    for policy, unc in (("U-Zeros", False), ("U-Ones", True)):
        pc = predict(ctx, reports, unc)
        for half in ("dev", "held-out", "all"):
            m = np.ones(len(df), bool) if half == "all" else (df["half"] == half).to_numpy()
            a, b = scores(pc[m], gold[m], GOLD_COLUMNS), scores(pk[m], gold[m], GOLD_COLUMNS)
            out[(policy, half)] = (a, b)
            if policy == "U-Zeros":
                print_table(f"OpenI gold, {half} ({int(m.sum())} reports), uncertain = {policy}", a, b)
    print("\nsummary (micro / macro F1)      labeller          keyword")
    for (policy, half), (a, b) in out.items():
        print(f"  {policy:8s} {half:9s}          {a.loc['micro', 'F1']:.3f} / {a.loc['macro', 'F1']:.3f}"
              f"     {b.loc['micro', 'F1']:.3f} / {b.loc['macro', 'F1']:.3f}")
    # Speed on one core: every OpenI report, repeated to at least 10,000.
    reps = (all_reports * (10_000 // max(len(all_reports), 1) + 1))[:max(10_000, len(all_reports))]
    for name, lab in (("labeller chexpert14", Labeler("chexpert14")), ("labeller chestxray14", ctx), ("keyword chestxray14", kw)):
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    bench_openi(args.realdata)
    ok = bench_chexpert_samples(args.realdata)
    if args.synthetic:
        bench_synthetic(args.synthetic)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
