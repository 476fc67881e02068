"""Does each table stage grow linearly to MIMIC-CXR size? Time and peak RSS at N = 10k, 100k, 377k.

    python bench/scale.py                         # N = 10000, 100000, 377000; every stage
    python bench/scale.py --sizes 10000,50000 --stages split,evaluate

Each (stage, N) runs in a fresh process: it builds synthetic inputs of N images at MIMIC-CXR's
proportions (377k images, 227k reports, 65k patients; 20 % test), then times the stage's own
``cxr`` code on them. Peak RSS is the process's high-water mark (inputs included), ``input RSS``
what the inputs alone took. Per-item cost = stage seconds / N images (reports for ``label``). The
growth column divides the per-item cost at N by the one at the smallest N, measured in the same
run: the target is <= 1.5x at 377k. A (stage, N) whose predicted time exceeds ``--budget`` seconds is
not run; its row is extrapolated linearly from the largest measured N and marked ``extrap.``.

``retrieve`` is timed as two rows, because exact search of every test image against the database
is quadratic in N by definition (N/5 queries x 4N/5 items): the index build per database image, and
the search per query at a fixed number of queries (``--queries``, 2000), whose cost is what must not
grow with N. The index is the stage's default (``retrieve.index``): exact up to ``exact_max``
database images, HNSW above, recall-checked; the kind is printed per N.

No images are decoded: stages that need pixels (convert, train) are measured by bench/convert.py
and bench/train.py; here region features are random arrays of ``--feature-dim`` (2048 in the real
features stage with densenet121 and ``features.levels: 2``: RSS and disk scale with it, time of the alignment code does not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("label", "merge", "split", "coco", "features", "evaluate", "retrieve", "report")
#: MIMIC-CXR proportions per image.
REPORTS_PER_IMAGE = 227_835 / 377_110
IMAGES_PER_PATIENT = 377_110 / 65_379
NAMES = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
         "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
         "Support Devices"]
MIMIC_SIZE = 377_110


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    keep = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{model}; {' '.join(keep) or 'no avx2'}"


# ---------------------------------------------------------------------------------------- inputs


def ids(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """N images of N / 5.77 patients and N * 0.60 studies, MIMIC-style ids."""
    patients = max(2, round(n / IMAGES_PER_PATIENT))
    studies = max(1, round(n * REPORTS_PER_IMAGE))
    study = np.sort(rng.integers(0, studies, n))
    patient = (study * patients) // studies  # studies nested in patients
    return pd.DataFrame({
        "dataset": "mimic", "image_id": [f"d{i:07d}" for i in range(n)],
        "patient_id": [f"p{p:06d}" for p in patient], "study_id": [f"s{s:07d}" for s in study],
    })


def label_matrix(n: int, rng: np.random.Generator) -> np.ndarray:
    prev = np.linspace(0.02, 0.3, len(NAMES))
    v = np.where(rng.random((n, len(NAMES))) < prev, 1.0, np.nan)
    v[rng.random(v.shape) < 0.15] = 0.0
    v[rng.random(v.shape) < 0.05] = -1.0
    return v


def images_table(base: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(base)
    status = np.where(rng.random(n) < 0.01, "error", "ok")
    return base.assign(
        view=np.where(rng.random(n) < 0.7, "PA", "AP"), status=status,
        error=np.where(status == "error", "truncated pixel data", ""),
        source_path=[f"mimic-cxr/files/{i}.dcm" for i in base["image_id"]],
        png_path=[f"mimic/{i}.png" for i in base["image_id"]], out_rows=512, out_cols=512, scale=0.25,
        offset_x=0.0, offset_y=0.0)


def tiny_cohort(cache: Path) -> Path:
    root = cache / "raw"
    if not (root / "manifest.json").is_file():
        from cxr.params import SyntheticParams
        from cxr.synth import generate

        generate(root, profile="tiny", seed=7, params=SyntheticParams(workers=1), progress=False)
    return root


# ---------------------------------------------------------------------------------------- stages
# Each returns (inputs, run): inputs are built (untimed), then run() is timed.


def stage_label(n, rng, cache):
    from cxr.labeler import Labeler
    from cxr.sources.mimic import read_reports

    texts = read_reports(tiny_cohort(cache) / "mimic-cxr", progress=False)[0]["report"].tolist()
    k = max(1, round(n * REPORTS_PER_IMAGE))
    # distinct reports: the tiny cohort's, each with a different comparison date
    reports = [f"COMPARISON: {i % 28 + 1:02d}/{i // 28 % 12 + 1:02d}/{2100 + i // 336}.\n{texts[i % len(texts)]}"
               for i in range(k)]
    lab = Labeler("chexpert14")
    return k, lambda: lab.label_many(reports, progress=False)


def stage_merge(n, rng, cache):
    from cxr.labels import merge_sources, to_space

    base = ids(n, rng)
    native = base[["study_id"]].drop_duplicates().reset_index(drop=True)
    native = pd.concat([native, pd.DataFrame(label_matrix(len(native), rng), columns=NAMES)], axis=1)
    lab = pd.concat([base, pd.DataFrame(label_matrix(n, rng), columns=NAMES)], axis=1)
    graph = pd.concat([base, pd.DataFrame(label_matrix(n, rng), columns=NAMES)], axis=1).sample(frac=0.6, random_state=0)

    def run():
        mimic = base.merge(to_space(native, "chexpert14", "chexpert14", key="study_id"), on="study_id")
        return merge_sources({"mimic": mimic, "labeller": lab, "imagenome": graph}, NAMES,
                             ["mimic", "labeller", "imagenome"])
    return n, run


def stage_split(n, rng, cache):
    from cxr.split import make_splits

    base = ids(n, rng)
    images = images_table(base, rng)
    labels = pd.concat([base, pd.DataFrame(label_matrix(n, rng), columns=NAMES)], axis=1)
    return n, lambda: make_splits(images, labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)


def stage_coco(n, rng, cache):
    from cxr.anatomy.coco import build_coco
    from cxr.labels import load_map
    from cxr.sources.imagenome import read_scene_graph

    graph_dir = tiny_cohort(cache) / "chest-imagenome" / "silver_dataset" / "scene_graph"
    templates = [(f.name.removesuffix("_SceneGraph.json"), f.read_text()) for f in sorted(graph_dir.glob("*.json"))]
    base = ids(n, rng)
    images = images_table(base, rng)
    splits = base[["image_id"]].assign(split=rng.choice(["train", "val", "test"], n, p=[0.7, 0.1, 0.2]))
    docs = []
    for i, iid in enumerate(base["image_id"]):
        old, text = templates[i % len(templates)]
        docs.append((text.replace(old, iid).encode(), f"{iid}_SceneGraph.json"))
    known = set(load_map("imagenome")["term"])

    def run():
        graphs = [read_scene_graph(d, name, known=known, unknown="count") for d, name in docs]
        return build_coco(graphs, images, splits)
    return n, run


def stage_features(n, rng, cache, dim=32):
    from cxr.data import RegionDataset, RegionFeatures

    root = Path(tempfile.mkdtemp(dir=cache, prefix=f"features-{n}-"))
    r, f = 18, 9
    base = ids(n, rng)
    for name, shape, dtype in (("features", (n, r, dim), np.float16), ("boxes", (n, r, 4), np.float32),
                               ("labels", (n, r, f), np.float32)):
        a = np.lib.format.open_memmap(root / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        for s in range(0, n, 50_000):
            a[s:s + 50_000] = rng.standard_normal((min(50_000, n - s), *shape[1:])).astype(dtype)
        a.flush()
        del a
    np.save(root / "mask.npy", rng.random((n, r)) < 0.95)
    perm = rng.permutation(n)  # the index is in a different order from the label table
    base.iloc[perm][["image_id", "patient_id"]].assign(row=np.arange(n)).to_parquet(root / "index.parquet")
    meta = pd.concat([base, pd.DataFrame(label_matrix(n, rng), columns=NAMES)], axis=1)
    meta = meta.assign(split=rng.choice(["train", "val", "test"], n, p=[0.7, 0.1, 0.2]))

    def run():
        feats = RegionFeatures(root)
        out = 0
        for s in ("train", "val", "test"):
            ds = RegionDataset(meta[meta["split"] == s], NAMES, feats)
            for i in range(0, len(ds), max(1, len(ds) // 200)):  # 200 reads per split: the mmap access path
                out += int(ds[i]["presence"].sum())
        return out
    return n, run


def stage_evaluate(n, rng, cache):
    from cxr.evaluate.classification import classification_metrics

    base = ids(n, rng)
    test = base[rng.random(n) < 0.2].reset_index(drop=True)
    m = len(test)
    raw = label_matrix(m, rng)
    targets = (raw == 1).astype(np.float32)
    mask = raw != -1
    probs = np.clip(0.3 * targets + rng.random(targets.shape) * 0.7, 0, 1).astype(np.float32)
    return n, lambda: classification_metrics(probs, targets, mask, test["patient_id"].to_numpy(), NAMES,
                                             {c: 0.5 for c in NAMES}, n_boot=1000)


def stage_retrieve(n, rng, cache, queries=2000, dim=256):
    from cxr.retrieve.index import IndexConfig, SearchIndex
    from cxr.retrieve.metrics import retrieval_metrics

    base = ids(n, rng)
    split = rng.choice(["train", "val", "test"], n, p=[0.7, 0.1, 0.2])
    db = base[split != "test"].assign(split="train", png_path="x.png").reset_index(drop=True)
    q = base[split == "test"].reset_index(drop=True)
    centres = rng.standard_normal((64, dim)).astype(np.float32)  # clustered, like real embeddings
    def vecs(k):
        v = centres[rng.integers(0, 64, k)] + 0.5 * rng.standard_normal((k, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    v_db, v_q = vecs(len(db)), vecs(min(queries, len(q)))
    lab_db = (label_matrix(len(db), rng) == 1).astype(np.float32)
    lab_q = (label_matrix(len(v_q), rng) == 1).astype(np.float32)
    cfg = IndexConfig()

    def run():
        t0 = time.perf_counter()
        index = SearchIndex.build(v_db, db, config=cfg)
        t1 = time.perf_counter()
        _, rows = index.search(v_q, 10, exclude_patients=q["patient_id"].to_numpy()[:len(v_q)])
        retrieval_metrics(lab_q, lab_db, rows, NAMES, ks=(3, 5, 10))
        t2 = time.perf_counter()
        # the stage's time: the build + every test image queried at the measured per-query cost
        return {"seconds": (t1 - t0) + (t2 - t1) / len(v_q) * len(q), "build_s": t1 - t0,
                "query_us": (t2 - t1) / len(v_q) * 1e6, "kind": index.kind,
                # the search effort the recall check settled on (efSearch / nprobe) and the recall it measured
                "effort": (index.meta.get("recall") or {}).get("effort"),
                "recall": (index.meta.get("recall") or {}).get("recall")}
    return n, run, {"db": len(db), "queries": len(v_q), "test": len(q)}


def stage_report(n, rng, cache):
    from cxr.params import read_params_file
    from cxr.report.dag import load_dag
    from cxr.report.inputs import ReportInputs
    from cxr.report.render import to_html, to_markdown
    from cxr.report.sections import data_section, failures_section

    # the report reads declared outputs by their dvc.yaml paths: lay them out in a scratch project
    folder = Path(tempfile.mkdtemp(dir=cache, prefix=f"report-{n}-"))
    (folder / "data" / "interim").mkdir(parents=True)
    images_table(ids(n, rng), rng).to_parquet(folder / "data" / "interim" / "images.parquet")
    os.chdir(folder)
    params = read_params_file(ROOT / "params.yaml")
    dag = load_dag(ROOT / "dvc.yaml", params)
    missing = Path("absent")
    inputs = ReportInputs(params=ROOT / "params.yaml", dvc_yaml=ROOT / "dvc.yaml", raw=missing,
                          images=Path("data/interim/images.parquet"), label=missing, split=missing, coco=missing,
                          features=missing, detector=missing, unet=missing, evaluation=missing, models=missing,
                          localization=missing, retrieval=missing)

    def run():
        sections = [data_section(dag, inputs), failures_section(dag, inputs)]
        html = to_html("scale", sections)
        if "images with status error" not in html:
            raise RuntimeError("the report did not read the images table")
        return len(html) + len(to_markdown("scale", sections))
    return n, run


# ---------------------------------------------------------------------------------------- driver


def rss_at(measured: list[dict], n: int) -> float:
    """Peak RSS at ``n`` on the line through the two largest measured N (NaN with one point)."""
    if len(measured) < 2:
        return float("nan")
    a, b = sorted(measured, key=lambda r: r["n"])[-2:]
    slope = max(0.0, (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["n"] - a["n"]))
    return b["peak_rss_mb"] + slope * (n - b["n"])


def child(stage: str, n: int, cache: Path, feature_dim: int, queries: int = 2000) -> dict:
    rng = np.random.default_rng(n)
    kw = {"dim": feature_dim} if stage == "features" else {"queries": queries} if stage == "retrieve" else {}
    t0 = time.perf_counter()
    made = globals()[f"stage_{stage}"](n, rng, cache, **kw)
    items, run = made[0], made[1]
    extra = made[2] if len(made) > 2 else {}
    built, before = time.perf_counter() - t0, rss_mb()
    t0 = time.perf_counter()
    res = run()
    seconds = time.perf_counter() - t0
    timed = res if isinstance(res, dict) and "seconds" in res else {"seconds": seconds}
    return {"stage": stage, "n": n, "items": items, "input_s": built, "input_rss_mb": before,
            "peak_rss_mb": peak_mb(), **extra, **timed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,377000")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--budget", type=float, default=90, help="seconds a (stage, N) may be predicted to take")
    p.add_argument("--feature-dim", type=int, default=32)
    p.add_argument("--queries", type=int, default=2000, help="retrieve: queries timed at every N")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--child", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), Path(args.cache), args.feature_dim, args.queries)))
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-scale-") as cache:
        tiny_cohort(Path(cache))
        for stage in stages:
            measured: list[dict] = []
            for n in sizes:
                if measured:
                    last = measured[-1]
                    predicted = last["seconds"] * n / last["n"] + last["input_s"] * n / last["n"]
                    if predicted > args.budget:
                        rows.append({"stage": stage, "n": n, "extrapolated": True,
                                     "items": last["items"] * n / last["n"], "seconds": last["seconds"] * n / last["n"],
                                     "peak_rss_mb": rss_at(measured, n)})
                        continue
                out = subprocess.run([sys.executable, __file__, "--child", stage, str(n), "--cache", cache,
                                      "--feature-dim", str(args.feature_dim), "--queries", str(args.queries)],
                                     capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.stderr.write(out.stderr[-3000:])
                    raise SystemExit(f"{stage} at N={n} failed")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                measured.append(row)
                rows.append(row)
                print(f"  {stage:9s} N={n:>7,}: {row['seconds']:8.2f} s, peak {row['peak_rss_mb']:7.0f} MB", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; CPU: {cpu_flags()}; {os.cpu_count()} cores visible, 1 BLAS thread, float32/float16 arrays; "
          f"python {platform.python_version()}")
    print("Per-item cost (us per image; label: per report) and peak RSS of the process; growth = per-item cost / "
          f"per-item cost at N={sizes[0]:,} in this run; 'x' = extrapolated linearly, not run (RSS: on the line "
          "through the two largest measured N).\n")
    head = ["stage"] + [f"N={n:,} us/item" for n in sizes] + [f"growth {sizes[-1]:,}/{sizes[0]:,}"] \
        + [f"peak RSS MB N={n:,}" for n in sizes] + ["RSS at MIMIC size (GB)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    table = []
    for stage in stages:
        rs = {r["n"]: r for r in rows if r["stage"] == stage}
        if stage == "retrieve":  # build per database image and search per query (fixed count), not their sum
            table.append(("retrieve build (per database image)",
                          {n: {**r, "seconds": r.get("build_s", r["seconds"]), "items": r.get("db", r["items"])}
                           for n, r in rs.items()}))
            table.append((f"retrieve search (per query, {args.queries:,} queries)",
                          {n: {**r, "seconds": r.get("query_us", np.nan) * 1e-6, "items": 1} for n, r in rs.items()}))
        else:
            table.append((stage, rs))
    for stage, rs in table:
        per = {n: rs[n]["seconds"] / rs[n]["items"] * 1e6 for n in sizes if n in rs}
        mark = {n: "x" if rs[n].get("extrapolated") else "" for n in rs}
        big = max(rs)
        first_real = rs[big] if not rs[big].get("extrapolated") else None
        real = [r for r in rs.values() if not r.get("extrapolated")]
        mimic_gb = rss_at(real, MIMIC_SIZE) / 1024
        growth = per[big] / per[sizes[0]]
        cells = [stage] + [f"{per[n]:.1f}{mark[n]}" for n in sizes] + [f"{growth:.2f}{mark[big]}"] \
            + [f"{rs[n]['peak_rss_mb']:.0f}{mark[n]}" for n in sizes] \
            + [f"{mimic_gb:.1f}" + ("" if first_real is not None and big >= 0.99 * MIMIC_SIZE else " (extrap.)")
               if np.isfinite(mimic_gb) else "n/a"]
        print("| " + " | ".join(cells) + " |")
    print("(retrieve rows: the growth of the build compares different index kinds where the default switches "
          "from exact search to HNSW; the search row is the one whose growth must stay within 1.5x)")
    retr = [r for r in rows if r["stage"] == "retrieve" and not r.get("extrapolated")]
    for r in retr:
        print(f"retrieve N={r['n']:,}: {r['kind']} index over {r['db']:,} images, build {r['build_s']:.1f} s, "
              f"{r['query_us']:.0f} us per query ({r['queries']:,} timed; the stage time counts all {r['test']:,} "
              f"test images at that cost); effort {r.get('effort') or 'exact'}, recall@10 {r.get('recall')}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
