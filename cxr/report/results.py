"""Report sections for the per-model explanation stages: weak localisation and retrieval.

Both read the per-model output dirs of a matrix stage (``data/processed/localization/<M>/``,
``data/processed/retrieval/<M>/``) found through the DAG, so only models the pipeline declares
are shown and every one of them must have its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr.report.blocks import Gallery, Image, Section, Text, fmt, table
from cxr.report.charts import thumbnail
from cxr.report.dag import Dag
from cxr.report.errors import ReportError
from cxr.report.inputs import ReportInputs, get, read_json, read_parquet
from cxr.report.sections import absent_note, matrix_outputs

Failure = tuple[str, str, Any, str]
EXAMPLE_K = 5  # results shown per example query (cxr.retrieve.run keeps the top 5)


def _read_png(path: Path, stage: str) -> bytes:
    if not path.is_file():
        raise ReportError(f"{path}: missing (declared output of stage {stage}); run `dvc repro {stage}`")
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ReportError(f"{path}: not a PNG file (stage {stage})")
    return data


def _accuracy_columns(scores: dict, path: Path) -> list[str]:
    per = get(scores, "per_class", path, dict)
    first = next((v for v in per.values() if isinstance(v, dict)), None) or get(scores, "micro", path, dict)
    return list(get(first, "iou", path, dict))


def _accuracy_row(entry: dict, ts: list[str]) -> list:
    iou, iobb = entry.get("iou") or {}, entry.get("iobb") or {}
    afp = (entry.get("afp") or {}).get("iobb") or {}
    return [*[iou.get(t) for t in ts], *[iobb.get(t) for t in ts], entry.get("mean_iou"), entry.get("mean_iobb"),
            *[afp.get(t) for t in ts]]


def _scores_of(loc: dict, path: Path) -> dict:
    """The box scores of a localization.json: ``test`` (heatmap models) or ``pointing.scores`` (region models)."""
    kind = get(loc, "kind", path, str)
    if kind == "heatmap":
        return get(loc, "test", path, dict)
    if kind == "region":
        return get(loc, "pointing.scores", path, dict)
    raise ReportError(f"{path}: unknown localisation kind {kind!r} (expected heatmap or region)")


def _baselines_of(loc: dict) -> dict:
    """The no-model baselines of a localization.json scored on that model's test pairs (may be empty)."""
    where = loc if loc.get("kind") == "heatmap" else (loc.get("pointing") or {})
    return where.get("baselines") or {}


BASELINE_NAMES = {"prior_box": "baseline: prior box (mean train box per class)",
                  "lung_box": "baseline: whole-lung box (UNet)"}


def localization_section(dag: Dag, inputs: ReportInputs) -> tuple[Section, list[Failure]]:
    """Localisation accuracy at T(IoU) / T(IoBB) per model and class, region AUROC of anatomy models, and the
    gallery of heatmaps with predicted and ground-truth boxes (``localization.json`` + ``gallery.png`` of localize@M).
    """
    title = "Weak localisation"
    if absent := absent_note(dag, inputs.localization, "localisation result"):
        return Section("localization", title, absent=absent), []
    loaded = []
    for stage, m, d in matrix_outputs(dag, inputs.localization):
        path = d / "localization.json"
        loaded.append((stage, m, d, path, read_json(path, dag)))
    if not loaded:
        return Section("localization", title, (Text("No localize@M stage declares an output dir."),)), []
    supported = [(st, m, d, p, loc) for st, m, d, p, loc in loaded if get(loc, "supported", p, bool)]
    blocks: list = [Text(
        "Ground truth: finding boxes in BBox_List_2017 format on the test split. Each GT box is matched to one "
        "predicted box of its image and class (the best by IoU) and is localised at T(IoU) = t / T(IoBB) = t when "
        "that box's IoU / IoBB is >= t; IoBB = intersection / predicted box area (ChestX-ray8). Heatmap models: "
        "CAM-family heatmap -> threshold chosen on validation boxes -> boxes. Region models: the box of the "
        "top-scoring region for the finding (pointing). Baselines without a finding model, on the same test boxes: "
        "the prior box (per class, the mean train GT box) and the whole-lung box of the organ UNet. AFP: false "
        "positives per (image, class) pair, i.e. predicted boxes that reach T(IoBB) = t with no GT box (ChestX-ray8).")]
    ts: list[str] = []
    if supported:
        ts = _accuracy_columns(_scores_of(supported[0][4], supported[0][3]), supported[0][3])
    acc_cols = (*[f"T(IoU) {t}" for t in ts], *[f"T(IoBB) {t}" for t in ts], "mean IoU", "mean IoBB",
                *[f"AFP T(IoBB) {t}" for t in ts])
    rows = []
    for st, m, d, p, loc in loaded:
        if not loc["supported"]:
            rows.append((m, "not applicable", "-", "-", *["-"] * len(acc_cols)))
            continue
        sc = _scores_of(loc, p)
        micro = get(sc, "micro", p, dict)
        how = (f"{loc.get('method', 'n/a')}, threshold {fmt(loc.get('heatmap_threshold'), 2)}"
               if loc["kind"] == "heatmap" else "top region")
        # test images with GT boxes (a region model's own test_images counts every test image it scored)
        n_img = loc.get("test_images") if loc["kind"] == "heatmap" else (loc.get("pointing") or {}).get("test_images")
        rows.append((m, loc["kind"], how, f"{fmt(micro.get('n_boxes'))} / {fmt(n_img)}",
                     *_accuracy_row(micro, ts)))
    seen: set = set()
    for st, m, d, p, loc in supported:
        for name, b in _baselines_of(loc).items():
            label = BASELINE_NAMES.get(name, f"baseline: {name}")
            if "not_applicable" in b:
                key = (name, "n/a")
                if key not in seen:
                    seen.add(key)
                    rows.append((label, "baseline", f"not applicable: {b['not_applicable']}", "-", *["-"] * len(acc_cols)))
                continue
            micro = get(b, "test.micro", p, dict)
            key = (name, micro.get("n_boxes"), micro.get("n_pairs"))
            if key in seen:
                continue
            seen.add(key)
            rows.append((label, "baseline", f"test boxes of {m}", f"{fmt(micro.get('n_boxes'))} / -",
                         *_accuracy_row(micro, ts)))
    blocks.append(table("localization", "Localisation accuracy on the test split, all GT boxes pooled (micro)",
                        ("model", "kind", "boxes from", "GT boxes / test images", *acc_cols), rows))
    gt0 = next((loc["ground_truth"] for *_, loc in supported if isinstance(loc.get("ground_truth"), dict)), None)
    if gt0 and isinstance(gt0.get("gt_boxes_per_split"), dict):
        boxes, imgs = gt0["gt_boxes_per_split"], gt0.get("gt_images_per_split") or {}
        blocks.append(table("localization_gt", f"Ground-truth finding boxes ({fmt(gt0.get('boxes_read'))} read) in the "
                                               "label space of the first model", ("split", "boxes", "images"),
                            [(sp, n, imgs.get(sp)) for sp, n in boxes.items()]))
    failures: dict[tuple[str, Any, str], list[str]] = {}
    for st, m, d, p, loc in loaded:
        if not loc["supported"]:
            blocks.append(Text(f"{m}: localisation not applicable: {loc.get('reason', 'no reason recorded')}"))
            continue
        sc = _scores_of(loc, p)
        per = get(sc, "per_class", p, dict)
        macro = sc.get("macro") or {}
        prows = [(c, v.get("n_boxes"), *_accuracy_row(v, ts)) for c, v in per.items()]
        prows.append(("macro (classes with boxes)", macro.get("n_classes"), *_accuracy_row(macro, ts)))
        blocks.append(table(f"localization_{m}", f"{m}: accuracy per class ({loc['kind']})", ("class", "GT boxes", *acc_cols),
                            prows))
        if loc["kind"] == "heatmap" and loc.get("threshold_search"):
            search = get(loc, "threshold_search", p, dict)
            cols = list(next(iter(search.values())))
            if loc.get("threshold_rule"):
                blocks.append(Text(f"{m}: {loc['threshold_rule']}."))
            blocks.append(table(f"localization_{m}_threshold", f"{m}: heatmap threshold search on validation boxes",
                                ("threshold", *cols), [(t, *[v.get(c) for c in cols]) for t, v in search.items()]))
        if loc["kind"] == "region":
            ra = get(loc, "region_auroc", p, dict)
            pf = get(ra, "per_finding", p, dict)
            blocks.append(table(f"localization_{m}_regions", f"{m}: per-region finding AUROC against the region labels "
                                                             f"(macro {fmt(ra.get('macro'))})",
                                ("finding", "AUROC", "regions", "positive regions"),
                                [(f, v.get("auroc"), v.get("n_regions"), v.get("n_positive")) for f, v in pf.items()]))
        gt = loc.get("ground_truth") or {}
        for what, n in (("GT boxes without a usable image or split", gt.get("boxes_without_usable_image")),
                        ("malformed box rows", gt.get("malformed_rows"))):
            if n:
                failures.setdefault((what, n, "-"), []).append(st)
        for term, n in sorted((gt.get("unmapped_terms") or {}).items()):
            failures.setdefault((f"box label not in the model's label space: {term}", n, "not scored"), []).append(st)
        if loc.get("gallery"):
            what = ("heatmaps with predicted (red) and ground-truth (green) boxes" if loc["kind"] == "heatmap"
                    else "box of the top-scoring region (red) and ground-truth boxes (green)")
            blocks.append(Image(f"gallery_{m}", f"{m}: {what}, fixed test sample", _read_png(d / "gallery.png", st),
                                f"{m} localisation gallery"))
    extra = [(", ".join(st), what, n, detail) for (what, n, detail), st in failures.items()]
    return Section("localization", title, tuple(blocks)), extra


def _thumb(image_dir: Path, png_path: str, size: int, stage: str) -> bytes:
    path = Path(image_dir) / str(png_path)
    if not path.is_file():
        raise ReportError(f"{path}: converted image of a retrieval example is missing (stage {stage} "
                          f"lists it; is --image-dir the convert output dir?)")
    return thumbnail(path, size)


RET_METRICS = (("ap", "AP"), ("precision", "precision"), ("hit", "hit"), ("rr", "RR"))  # cxr.retrieve.metrics.METRICS


def _avg(block: dict | None, which: str) -> dict:
    """``class_average`` / ``query_weighted`` of a no_skip / skip / chance block ({} when null: no query)."""
    return (block or {}).get(which) or {}


def _check_retrieval(ret: dict, path: Path) -> list[int]:
    """The k values of a full retrieval.json, after checking every key the section reads."""
    ks = [int(k) for k in get(ret, "k", path, list)]
    if not ks:
        raise ReportError(f"{path}: 'k' is empty")
    get(ret, "summary", path, dict)
    for k in ks:
        for key in ("no_skip", "skip", "per_class"):
            get(ret, f"metrics.{k}.{key}", path, dict)
        get(ret, f"metrics.{k}.no_relevant_in_top_k", path, int)
        get(ret, f"chance.{k}", path, dict)
        for m, _ in RET_METRICS:
            get(ret, f"summary.{m}@{k}", path, (int, float))
    return ks


def _embedding(r: dict) -> str:
    emb = r.get("embedding") or {}
    code = f"{emb.get('dim')} bits, Hamming" if emb.get("binary") else f"{emb.get('dim')}-d, inner product"
    return f"{code}, {(r.get('index') or {}).get('kind', 'n/a')} index"


def _index_row(r: dict) -> tuple[str, str, str, str, str]:
    """index kind, effort, recall@k (sample size), trials and note of a retrieval.json's ``index`` block."""
    idx = r.get("index") or {}
    rec = idx.get("recall") or {}
    kind = str(idx.get("kind", "n/a"))
    if kind == "ivf" and (idx.get("config") or {}).get("ivf_codec", "flat") != "flat":
        kind += f" ({idx['config']['ivf_codec']})"
    effort = ", ".join(f"{k} {v}" for k, v in (idx.get("effort") or {}).items()) or "-"
    if not rec:
        return kind, effort, "n/a", "-", "no recall check recorded"
    if rec.get("exact") and not rec.get("trials"):
        return kind, effort, "1 (exact search)", "-", str(rec.get("note", ""))
    knob = next((key for key in ("nprobe", "ef_search") if rec["trials"] and key in rec["trials"][0]), "")
    trials = "; ".join(f"{t.get(knob)}: {fmt(t.get('recall'))}" for t in rec.get("trials", []))
    best = (f"; best {rec['fallback_from']} {fmt(max(float(t.get('recall') or 0) for t in rec['trials']))}"
            if rec.get("fallback_from") else "")
    return (kind, effort, f"{fmt(rec.get('recall'))} @{rec.get('k')} ({fmt(rec.get('queries'))} queries, min "
            f"{fmt(rec.get('min_recall'))}{best})", f"{knob}: {trials}", str(rec.get("note", "")))


def retrieval_section(dag: Dag, inputs: ReportInputs, image_dir: Path | None = None,
                      thumb_size: int = 96) -> tuple[Section, list[Failure]]:
    """Retrieval (CheXtriev definitions): a cross-model comparison, the index each model used with its measured
    recall against exact search, per model the summary metrics beside the random-ranking chance level and the
    queries without a relevant result, per class AP / hit, and example queries with their top 5.

    Reads ``retrieval.json`` (the full tree, see ``cxr.retrieve.run``) and ``examples.parquet`` of every
    retrieve@M output dir; thumbnails come from the converted PNGs in ``image_dir`` (captions only when None).
    """
    title = "Retrieval"
    if absent := absent_note(dag, inputs.retrieval, "retrieval result"):
        return Section("retrieval", title, absent=absent), []
    results: dict[str, tuple[str, Path, dict, list[int]]] = {}
    for stage, m, d in matrix_outputs(dag, inputs.retrieval):
        path = d / "retrieval.json"
        ret = read_json(path, dag)
        results[m] = (stage, d, ret, _check_retrieval(ret, path))
    if not results:
        return Section("retrieval", title, (Text("No retrieve@M stage declares an output dir."),)), []
    all_ks = [k for *_, ks in results.values() for k in ks]
    km = 5 if 5 in all_ks else sorted(set(all_ks))[len(set(all_ks)) // 2]
    first = next(iter(results.values()))[2]
    chance_def = first.get("chance_definition") or "no-skip averages of a seeded random ranking of the same database"
    blocks: list = [Text(
        "Queries are the test images; each query's own patient is excluded from its results. Per class c the queries "
        "are the images positive for c, and a result is relevant if it is positive for c. AP@k: mean precision at the "
        "ranks of relevant results; precision@k: relevant / k (CheXtriev's HR); hit@k: any relevant in the top k; "
        "RR@k: reciprocal rank of the first relevant. Class average: mean over the classes with queries; "
        "query-weighted: mean over all (query, class) pairs. No-skip counts every query, skip leaves out queries "
        f"without a relevant result in the top k. Chance: {chance_def}; it is the level a model must beat. "
        "Metadata: a ranking by view and sex only (same view and sex first); an embedding that does not beat it "
        "has learnt no more than those.")]
    rows, failures = [], []
    for m, (stage, _, r, ks) in results.items():
        s = r["summary"]
        ch = _avg(r["chance"].get(str(km)), "class_average")
        md = _avg((r.get("metadata") or {}).get(str(km)), "class_average")
        rows.append((m, _embedding(r), *[s.get(f"{x}@{km}") for x, _ in RET_METRICS], ch.get("ap"), md.get("ap"),
                     f"{fmt((r.get('queries') or {}).get('images'))} / {fmt((r.get('database') or {}).get('images'))}"))
        main = r["metrics"].get(str(km)) or r["metrics"][str(ks[0])]
        if main.get("no_relevant_in_database"):
            failures.append((stage, "query-class pairs with no relevant image in the database",
                             main["no_relevant_in_database"], "counted as 0 in no-skip, left out in skip"))
    blocks.append(table("retrieval", f"Retrieval comparison at k = {km} (class averages, no-skip) and the chance "
                                     "level of a random ranking and of a metadata-only (view, sex) ranking",
                        ("model", "embedding, index", *[f"{lab}@{km}" for _, lab in RET_METRICS], f"chance AP@{km}",
                         f"metadata AP@{km}", "test queries / database images"), rows))
    blocks.append(table("retrieval_index", "Search index used per model and its recall against exact search "
                                           "(measured on a seeded sample of the test queries whenever an approximate "
                                           "index is built; the metrics above are those of this index)",
                        ("model", "index", "search effort", "recall vs exact", "efforts tried (recall)", "note"),
                        [(m, *_index_row(r)) for m, (_, _, r, _) in results.items()]))
    for m, (stage, _, r, ks) in results.items():
        met, chance = r["metrics"], r["chance"]
        mrows = []
        for k in ks:
            ns, sk, ch = met[str(k)]["no_skip"], met[str(k)]["skip"], chance[str(k)]
            for x, lab in RET_METRICS:
                mrows.append((f"{lab}@{k}", r["summary"][f"{x}@{k}"], _avg(ch, "class_average").get(x),
                              _avg(sk, "class_average").get(x), _avg(ns, "query_weighted").get(x),
                              _avg(ch, "query_weighted").get(x), _avg(sk, "query_weighted").get(x)))
        q, db = r.get("queries") or {}, r.get("database") or {}
        blocks.append(table(f"retrieval_{m}", f"{m}: retrieval metrics beside chance ({fmt(q.get('images'))} test "
                                              f"queries, {fmt(db.get('images'))} database images from "
                                              f"{fmt(db.get('splits'))}; {_embedding(r)})",
                            ("metric", "class avg no-skip", "chance class avg", "class avg skip",
                             "query-weighted no-skip", "chance query-weighted", "query-weighted skip"), mrows))
        crows = []
        for k in ks:
            e = met[str(k)]
            crows.append((k, f"{fmt(e['no_relevant_in_top_k'])} / {fmt(e['no_skip'].get('query_class_pairs'))}",
                          e.get("no_relevant_in_database"),
                          f"{fmt(e['no_skip'].get('query_class_pairs'))} / {fmt(e['no_skip'].get('classes'))}",
                          f"{fmt(e['skip'].get('query_class_pairs'))} / {fmt(e['skip'].get('classes'))}"))
        blocks.append(table(f"retrieval_{m}_queries", f"{m}: queries without a relevant result, per k "
                                                      "(counted per query-class pair)",
                            ("k", "no relevant in top k / query-class pairs", "no relevant in database",
                             "no-skip: pairs / classes", "skip: pairs / classes"), crows))
    classes: list[str] = []
    for _, _, r, _ in results.values():
        classes += [c for c in (r["metrics"].get(str(km)) or {}).get("per_class", {}) if c not in classes]
    models = list(results)

    def cell(m: str, c: str) -> str:
        e = ((results[m][2]["metrics"].get(str(km)) or {}).get("per_class") or {}).get(c)
        if not e:
            return "n/a"
        ns = e.get("no_skip") or {}
        return f"{fmt(ns.get('ap'))} / {fmt(ns.get('hit'))} ({fmt(e.get('queries'))})"

    blocks.append(table("retrieval_per_class", f"AP@{km} / hit@{km} per class, no-skip (queries)", ("class", *models),
                        [(c, *[cell(m, c) for m in models]) for c in classes]))
    for m, (stage, d, _, _) in results.items():
        path = d / "examples.parquet"
        ex = read_parquet(path, dag, ("query_image_id", "rank", "image_id", "png_path", "labels", "score", "relevant"))
        if not len(ex):
            blocks.append(Text(f"{m}: no example query (retrieve.examples = 0 or no test image with a positive label)."))
            continue
        gallery_rows = []
        for q, grp in ex.groupby("query_image_id", sort=False):
            grp = grp.sort_values("rank", kind="stable")
            row = []
            for e in grp.itertuples():
                labels = e.labels if isinstance(e.labels, str) and e.labels else "no positive label"
                if int(e.rank) == 0:
                    cap = f"query\n{labels}"
                else:
                    mark = "relevant" if bool(e.relevant) else "not relevant"
                    cap = f"#{int(e.rank)} {mark}, score {fmt(float(e.score))}\n{labels}"
                png = _thumb(image_dir, e.png_path, thumb_size, stage) if image_dir is not None else None
                row.append((cap, png, str(e.image_id)))
            gallery_rows.append(tuple(row))
        if image_dir is None:
            blocks.append(table(f"retrieval_examples_{m}", f"{m}: example queries and their top {EXAMPLE_K}",
                                ("query", *[f"#{i}" for i in range(1, EXAMPLE_K + 1)]),
                                [tuple(f"{name}: {c}".replace("\n", ": ") for c, _, name in r)
                                 + ("",) * (EXAMPLE_K + 1 - len(r)) for r in gallery_rows]))
        else:
            blocks.append(Gallery(f"retrieval_examples_{m}", f"{m}: example test queries (first, framed) and their "
                                                            f"top {EXAMPLE_K} results", tuple(gallery_rows)))
    return Section("retrieval", title, tuple(blocks)), failures
