"""Chest ImaGenome scene graphs -> COCO: schema, geometry, one annotation per region, splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO

from cxr.anatomy.coco import SPLITS, build_coco, read_graphs, to_png
from cxr.anatomy.common import AnatomyError
from cxr.params import ParamsError, parse_section
from cxr.sources.imagenome import REGIONS18
from cxr.synth.render import REGIONS
from stages import coco as coco_stage


def test_regions_match_the_synthetic_cohort():
    assert tuple(REGIONS) == REGIONS18


def test_to_png_applies_the_convert_geometry_and_clips():
    assert to_png((10, 20, 110, 220), 0.5, 3, 7, 512, 512) == [8.0, 17.0, 58.0, 117.0]
    assert to_png((-50, 0, 2000, 100), 0.5, 0, 0, 512, 512) == [0.0, 0.0, 512.0, 50.0]
    assert to_png((2000, 0, 2100, 100), 0.5, 0, 0, 512, 512) is None


def test_stage_writes_loadable_coco_with_boxes_from_the_scene_graph(anatomy_data, tmp_path):
    d = anatomy_data
    coco_dir = d["coco"]
    summary = json.loads(d["coco_metrics"].read_text())
    assert summary["regions"] == 18 and sum(summary["images"].values()) > 0
    images = pd.read_parquet(d["images"]).set_index("image_id")
    splits = pd.read_parquet(d["splits"]).set_index("image_id")["split"]
    seen = set()
    for split in SPLITS:
        c = COCO(str(coco_dir / f"{split}.json"))
        assert [c.cats[i]["name"] for i in sorted(c.cats)] == list(REGIONS18)
        for img in c.dataset["images"]:
            assert img["id"] not in seen  # ids unique across the three files
            seen.add(img["id"])
            assert splits[img["name"]] == split
            row = images.loc[img["name"]]
            assert (img["width"], img["height"]) == (row["out_cols"], row["out_rows"])
            assert img["file_name"] == row["png_path"]
            anns = c.loadAnns(c.getAnnIds(imgIds=[img["id"]]))
            cats = [a["category_id"] for a in anns]
            assert len(cats) == len(set(cats)), "a region was duplicated"
            assert all(len(a["attributes"]) == 9 and a["iscrowd"] == 0 for a in anns)
    # boxes against the raw scene graph of one image, through the recorded geometry
    c = COCO(str(coco_dir / "train.json"))
    img = c.dataset["images"][0]
    graph = json.loads((d["raw"] / "chest-imagenome/silver_dataset/scene_graph" /
                        f"{img['name']}_SceneGraph.json").read_text())
    row = images.loc[img["name"]]
    by_name = {c.cats[a["category_id"]]["name"]: a for a in c.loadAnns(c.getAnnIds(imgIds=[img["id"]]))}
    for o in graph["objects"]:
        x, y, w, h = by_name[o["bbox_name"]]["bbox"]
        exp = np.array([o["original_x1"], o["original_y1"], o["original_x2"], o["original_y2"]]) * row["scale"]
        exp += [row["offset_x"], row["offset_y"], row["offset_x"], row["offset_y"]]
        assert np.allclose([x, y, x + w, y + h], np.clip(exp, 0, [row["out_cols"], row["out_rows"]] * 2), atol=0.01)


def test_region_listed_in_several_attribute_entries_is_one_annotation(anatomy_data, tmp_path):
    d = anatomy_data
    src = d["raw"] / "chest-imagenome/silver_dataset/scene_graph"
    first = sorted(src.glob("*_SceneGraph.json"))[0]
    g = json.loads(first.read_text())
    # the reference converter's defect: one annotation per attribute entry
    g["attributes"].append({"bbox_name": "right lung", "attributes": [["anatomicalfinding|yes|atelectasis"]]})
    g["attributes"].append({"bbox_name": "right lung", "attributes": [["anatomicalfinding|yes|lung opacity"]]})
    g["objects"].append(dict(g["objects"][0]))  # and a duplicated object
    (tmp_path / "sg").mkdir()
    (tmp_path / "sg" / first.name).write_text(json.dumps(g))
    graphs, bad = read_graphs(tmp_path / "sg", progress=False)
    images = pd.read_parquet(d["images"])
    iid = graphs[0]["image_id"]
    splits = pd.DataFrame({"image_id": [iid], "split": ["train"]})
    cocos, summary = build_coco(graphs, images, splits)
    anns = cocos["train"]["annotations"]
    assert len(anns) == len({a["category_id"] for a in anns}) == len(g["objects"]) - 1
    rl = next(a for a in anns if a["category_id"] == 1)
    findings = cocos["train"]["info"]["findings"]
    assert rl["attributes"][findings.index("atelectasis")] == 1.0
    assert rl["attributes"][findings.index("lung opacity")] == 1.0
    assert summary["images"] == {"train": 1, "val": 0, "test": 0}


def test_unknown_findings_are_counted_with_count(anatomy_data, tmp_path):
    """Before: coco.unknown_findings: count dropped the terms and reports/coco.json showed "skipped": {}."""
    d = anatomy_data
    src = sorted((d["raw"] / "chest-imagenome/silver_dataset/scene_graph").glob("*_SceneGraph.json"))[0]
    g = json.loads(src.read_text())
    g["attributes"].append({"bbox_name": "right lung", "attributes": [["anatomicalfinding|yes|zebra sign"]]})
    g["attributes"].append({"bbox_name": "left lung", "attributes": [["anatomicalfinding|yes|zebra sign",
                                                                       "disease|yes|unicorn disease"]]})
    (tmp_path / "sg").mkdir()
    (tmp_path / "sg" / src.name).write_text(json.dumps(g))
    with pytest.raises(AnatomyError, match="unknown ImaGenome finding.*coco.unknown_findings: count"):
        read_graphs(tmp_path / "sg", unknown="error", progress=False)
    graphs, _ = read_graphs(tmp_path / "sg", unknown="count", progress=False)
    splits = pd.DataFrame({"image_id": [graphs[0]["image_id"]], "split": ["train"]})
    _, summary = build_coco(graphs, pd.read_parquet(d["images"]), splits)
    assert summary["skipped"]["unknown_finding"] == 3
    assert summary["unknown_findings"] == {"unicorn disease": 1, "zebra sign": 2}
    # and the stage writes the count to its metrics file
    out = tmp_path / "m.json"
    assert coco_stage.main(["--params", str(d["params"]), "--scene-graphs", str(tmp_path / "sg"), "--images",
                            str(d["images"]), "--splits", str(d["splits"]), "--out", str(tmp_path / "coco"),
                            "--metrics", str(out)]) == 0
    assert json.loads(out.read_text())["skipped"]["unknown_finding"] == 3


def test_missing_regions_are_counted_and_all_regions_on_request(anatomy_data, tmp_path):
    d = anatomy_data
    src = sorted((d["raw"] / "chest-imagenome/silver_dataset/scene_graph").glob("*_SceneGraph.json"))[0]
    g = json.loads(src.read_text())
    g["objects"] = [o for o in g["objects"] if o["bbox_name"] != "trachea"]
    g["objects"].append({**g["objects"][0], "bbox_name": "svc"})
    (tmp_path / "sg").mkdir()
    (tmp_path / "sg" / src.name).write_text(json.dumps(g))
    graphs, _ = read_graphs(tmp_path / "sg", progress=False)
    splits = pd.DataFrame({"image_id": [graphs[0]["image_id"]], "split": ["val"]})
    images = pd.read_parquet(d["images"])
    cocos, summary = build_coco(graphs, images, splits)
    assert summary["images_missing_regions"]["val"] == 1
    assert summary["missing_per_region"] == {"trachea": 1}
    cocos, summary = build_coco(graphs, images, splits, regions="all")
    names = [c["name"] for c in cocos["val"]["categories"]]
    assert names[-1] == "svc" and "trachea" not in names and names[0] == "right lung"


def test_errors_name_the_problem(anatomy_data, tmp_path):
    with pytest.raises(AnatomyError, match="no \\*_SceneGraph.json"):
        read_graphs(tmp_path)
    with pytest.raises(ParamsError, match="coco.regions"):
        parse_section("coco", {"regions": "lungs"})
    with pytest.raises(ParamsError, match="coco.findings"):
        parse_section("coco", {"findings": "nih"})
    graphs, _ = read_graphs(anatomy_data["raw"] / "chest-imagenome", progress=False)
    images = pd.read_parquet(anatomy_data["images"])
    with pytest.raises(AnatomyError, match="no scene graph matched"):
        build_coco(graphs, images, pd.DataFrame({"image_id": ["nope"], "split": ["train"]}))
    with pytest.raises(AnatomyError, match="scale"):
        build_coco(graphs, images.drop(columns=["scale"]), pd.read_parquet(anatomy_data["splits"]))
    assert coco_stage.main(["--params", str(tmp_path / "missing.yaml"), "--scene-graphs", ".", "--images", "x",
                            "--splits", "x", "--out", str(tmp_path), "--metrics", str(tmp_path / "m.json")]) == 2
