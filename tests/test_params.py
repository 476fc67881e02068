"""params.yaml schema: defaults load, and every kind of bad value fails with a helpful message."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.params import ParamsError, load_all, load_section, load_sections, parse_section


def test_repository_params_load(repo_root):
    sections = load_all(repo_root / "params.yaml")
    assert sections["base"].seed >= 0
    assert sections["ingest"].source == "synthetic://default"


@pytest.mark.parametrize(
    ("section", "raw", "needles"),
    [
        ("base", {"seed": "abc"}, ["base.seed", "'abc'", "integer"]),
        ("base", {"seed": -1}, ["base.seed", "-1", ">= 0"]),
        ("base", {"sed": 1}, ["unknown key base.sed", "known keys: seed, label_space"]),
        ("base", {"label_space": "foo"}, ["base.label_space", "'foo'", "chexpert14"]),
        ("base", {"image_size": 256}, ["unknown key base.image_size"]),  # removed: no stage read it
        ("ingest", {"synthetic": {"signal": -0.5}}, ["ingest.synthetic.signal", "-0.5", ">= 0"]),
        ("ingest", {"synthetic": {"bogus": 1}}, ["unknown key ingest.synthetic.bogus", "known keys: signal"]),
        ("ingest", {"synthetic": {"broken_fraction": 0.9}}, ["ingest.synthetic.broken_fraction", "0.9", "<= 0.5"]),
        ("ingest", {"source": "ftp://host/x"}, ["ingest.source", "unsupported source scheme 'ftp'", "gs://"]),
        ("ingest", {"source": "synthetic://huge"}, ["unknown synthetic profile 'huge'", "tiny"]),
        ("ingest", {"source": "gs://"}, ["ingest.source", "malformed GCS URL"]),
        ("ingest", "not-a-mapping", ["section 'ingest' must be a mapping"]),
        ("nosuch", {}, ["unknown section 'nosuch'", "known sections"]),
    ],
)
def test_bad_values_are_named(section, raw, needles):
    with pytest.raises(ParamsError) as exc:
        parse_section(section, raw)
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_sections_are_frozen():
    base = parse_section("base", {"seed": 3})
    with pytest.raises(Exception):
        base.seed = 4  # type: ignore[misc]


def test_file_level_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="not found"):
        load_section("base", missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_section("base", bad)
    extra = tmp_path / "extra.yaml"
    extra.write_text("base: {seed: 1}\ntrian: {lr: 0.1}\n")
    with pytest.raises(ParamsError, match=r"unknown section\(s\) \['trian'\]"):
        load_section("base", extra)


def test_load_sections_for_stage_scripts(tmp_path, caplog):
    import logging

    good = tmp_path / "good.yaml"
    good.write_text("base: {seed: 7}\nsplit: {train: 0.6, val: 0.2, test: 0.2}\n")
    log = logging.getLogger("stage-test")
    base, split = load_sections(good, "base", "split", log=log)
    assert base.seed == 7 and split.train == 0.6
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {seed: -1}\n")
    with caplog.at_level(logging.ERROR, logger="stage-test"):
        assert load_sections(bad, "base", "split", log=log) is None  # the script exits with status 2
    assert "base.seed" in caplog.text


def test_duplicate_keys_are_refused(tmp_path):
    """Before: a second `base:` silently replaced the first (PyYAML keeps the last key)."""
    p = tmp_path / "params.yaml"
    p.write_text("base:\n  seed: 1\nconvert:\n  size: 64\nbase:\n  seed: 2\n")
    with pytest.raises(ParamsError, match=r"duplicate key 'base' \(first at line 1, again at line 5\)"):
        load_section("base", p)
    p.write_text("train:\n  epochs: 2\n  epochs: 3\n")  # also inside a section
    with pytest.raises(ParamsError, match="duplicate key 'epochs'"):
        load_section("train", p)


@pytest.mark.parametrize(
    ("section", "raw", "needles"),
    [
        ("train", {"epochs": True}, ["train.epochs = True", "valid integer"]),
        ("convert", {"size": True}, ["convert.size = True", "valid integer", ">= 16"]),
        ("convert", {"max_failure_fraction": False}, ["convert.max_failure_fraction = False", "valid number"]),
        ("convert", {"size": "512"}, ["convert.size = '512'", "valid integer"]),
        ("convert", {"size": 512.0}, ["convert.size = 512.0", "valid integer"]),
        ("convert", {"draft": 1}, ["convert.draft = 1", "valid boolean"]),
    ],
)
def test_types_are_strict(section, raw, needles):
    """Before: booleans were taken as integers (train.epochs: true -> 1)."""
    with pytest.raises(ParamsError) as exc:
        parse_section(section, raw)
    for needle in needles:
        assert needle in str(exc.value), f"{needle!r} not in {exc.value}"


def test_numbers_still_load_as_written(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  lr: 1e-3\n  weight_decay: 0\n  epochs: 2\n")  # 1e-3 is a float (YAML 1.2, as DVC reads it)
    t = load_section("train", p)
    assert t.lr == 0.001 and t.weight_decay == 0.0 and t.epochs == 2


def test_params_yaml_holds_exactly_the_schema_defaults():
    """One source of truth: the schema's defaults; params.yaml spells every one of them out, and no other value."""
    import yaml

    from cxr.params import SECTIONS

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert set(raw) == set(SECTIONS)
    for name in SECTIONS:
        assert parse_section(name, raw[name]).model_dump() == parse_section(name, {}).model_dump(), name
