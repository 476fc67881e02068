"""Does the ranking of the methods change with more training? Longer runs beside the default models.

The default DAG trains every classifier for ``train.epochs`` (3) at ``train.image_size`` (128 px), a
CPU budget. This bench takes a trained default workspace (read only), scores its default models on
TEST, then retrains each model with a larger budget (more epochs, and 224 px for the image models;
the region models read detector features, so only their epochs change) on the same data and split,
with the same params otherwise, and scores those the same way (macro AUROC, patient-bootstrap CI,
the evaluate stage's code). Early stopping gets ``patience = epochs`` so a long run is not cut
short by one flat epoch; the best validation epoch is kept, as in the stage. It prints one table
per budget and the rank of every model in each, beside the prevalence / metadata baselines.

There is no larger synthetic profile than ``default`` (about 600 images): generating, converting and
running the detector on a larger one costs more than this bench's budget on a CPU, so the data stay
the default cohort's; only training changes.

    python bench/convergence.py --root /path/to/workspace            # full: 224 px x 12 epochs, region x 40
    python bench/convergence.py --root /path/to/workspace --quick    # 224 px x 6 epochs, region x 20, no segfusion

Writes nothing into the workspace (temporary dirs only).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import Workspace, auroc_ci, baselines, evaluate_dir, machine_line, print_table, train_eval, \
    training_precision
from cxr.models.zoo import input_kind

IMAGE_MODELS = ("densenet121", "segfusion_van_gcn")
REGION_MODELS = ("anaxnet", "graph_transformer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="trained default workspace (read only)")
    ap.add_argument("--quick", action="store_true", help="smaller budget: 6 image epochs, 20 region epochs, "
                    "no segfusion_van_gcn retraining (about 15 min on 2 shared cores)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--image-epochs", type=int, default=None, help="epochs of the image models (12; --quick 6)")
    ap.add_argument("--region-epochs", type=int, default=None, help="epochs of the region models (40; --quick 20)")
    ap.add_argument("--models", nargs="+", default=None, help="models to retrain (default: all of train.models "
                    "among densenet121, segfusion_van_gcn, anaxnet, graph_transformer; --quick drops segfusion)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder (kept) instead of a temporary one")
    args = ap.parse_args()
    ws = Workspace(args.root)
    image_epochs = args.image_epochs or (6 if args.quick else 12)
    region_epochs = args.region_epochs or (20 if args.quick else 40)
    models = args.models or [m for m in ws.train.models if m in IMAGE_MODELS + REGION_MODELS
                             and not (args.quick and m == "segfusion_van_gcn")]
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="cxr-bench-convergence-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(machine_line(f"retraining in {training_precision(True)} (CNNs) / {training_precision(False)} (region "
                       "models); the default models' own precision is in their row"))
    print(f"workspace {ws.root}; default budget: {ws.train.epochs} epochs (patience {ws.train.patience}) at "
          f"{ws.train.image_size} px; longer: image models {image_epochs} epochs at {args.image_size} px, region "
          f"models {region_epochs} epochs (patience = epochs); bootstrap {ws.evaluate.bootstrap}; "
          f"{'--quick' if args.quick else 'full'}")

    base = baselines(ws, ws.splits, tmp / "cache")
    results: dict[str, list[tuple]] = {"default": [], "longer": []}
    for m in models:
        d = ws.model(m)
        feats = ws.features_dir if input_kind(m) == "region_features" else None
        if d.is_dir():
            import json

            card = json.loads((d / "card.json").read_text())
            met = evaluate_dir(ws, d, ws.splits, feats)
            tr = card["train"]
            results["default"].append((m, f"{card['params']['epochs']} ep"
                                       + (f" @ {card['input']['size']} px" if "size" in card["input"] else ""),
                                       tr.get("precision", "?"), f"{tr['best_epoch'] + 1}/{tr['epochs_run']}",
                                       met, None))
            print(f"  default {m}: {auroc_ci(met)}", flush=True)
        epochs = region_epochs if feats is not None else image_epochs
        params = ws.train.model_copy(update={"epochs": epochs, "patience": epochs,
                                             **({} if feats is not None else {"image_size": args.image_size})})
        met = train_eval(ws, m, tmp / f"m_{m}", splits=ws.splits, features_dir=feats, params=params,
                         unet_dir=ws.model("unet") if m == "segfusion_van_gcn" else None)
        results["longer"].append((m, f"{epochs} ep" + ("" if feats is not None else f" @ {args.image_size} px"),
                                  met["precision"], f"{met['best_epoch'] + 1}/{met['epochs_run']}", met,
                                  met["seconds"]))
        print(f"  longer {m}: {auroc_ci(met)} ({met['seconds']:.0f} s)", flush=True)

    rank = {}
    for budget, rs in results.items():
        order = sorted(rs, key=lambda r: -(r[4]["macro_auroc"] or 0))
        rank[budget] = {r[0]: k + 1 for k, r in enumerate(order)}
    print()
    rows = [(f"baseline: {b}", "-", "-", "-", auroc_ci(base[b]), "-", "-", "-", "-") for b in ("prevalence", "metadata")]
    for budget, rs in results.items():
        for m, setting, prec, best, met, sec in rs:
            other = "longer" if budget == "default" else "default"
            rows.append((m, f"{budget}: {setting}", prec, best, auroc_ci(met),
                         f"{met['macro_auroc_common']:.3f}" if met.get("macro_auroc_common") is not None else "-",
                         str(rank[budget][m]), str(rank[other].get(m, "-")), f"{sec:.0f}" if sec else "-"))
    print_table(("model", "budget", "precision", "best/run epochs", f"macro AUROC [{ws.evaluate.ci:.0%} CI]",
                 f"common (>={ws.evaluate.min_positives} pos)", "rank here", "rank other budget", "train s"), rows)
    same = [m for m in rank["default"] if m in rank["longer"] and rank["default"][m] == rank["longer"][m]]
    print(f"\nranking {'unchanged' if len(same) == len(rank['longer']) == len(rank['default']) else 'CHANGED'} "
          f"between the budgets (default: {sorted(rank['default'], key=rank['default'].get)}; longer: "
          f"{sorted(rank['longer'], key=rank['longer'].get)}); TEST images: all frontal test images; "
          f"total {time.perf_counter() - t_start:.0f} s")
    if args.keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
