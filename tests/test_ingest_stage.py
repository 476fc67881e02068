"""The ingest stage script and the source switch."""

from __future__ import annotations

import json

import pytest

from cxr.ingest import ingest, split_source
from cxr.params import IngestParams


def _params_file(tmp_path, source: str, extra: str = "") -> str:
    p = tmp_path / "params.yaml"
    p.write_text(f"base: {{seed: 5}}\ningest:\n  source: {source}\n  synthetic: {{workers: 1{extra}}}\n")
    return str(p)


def test_stage_generates_synthetic_source(tmp_path):
    import stages.ingest as stage  # noqa: F401  (stages/ is a plain folder of scripts)

    rc = stage.main(["--params", _params_file(tmp_path, "synthetic://tiny"), "--out", str(tmp_path / "raw")])
    assert rc == 0
    manifest = json.loads((tmp_path / "raw/manifest.json").read_text())
    assert manifest["source"] == "synthetic://tiny" and manifest["seed"] == 5
    assert manifest["counts"]["images"] > 25


def test_stage_rejects_bad_params_without_writing(tmp_path, caplog):
    import stages.ingest as stage

    rc = stage.main(["--params", _params_file(tmp_path, "synthetic://tiny", ", signal: high"), "--out", str(tmp_path / "raw")])
    assert rc == 2
    assert "ingest.synthetic.signal = 'high'" in caplog.text
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("synthetic://tiny", ("synthetic", "tiny")),
        ("gs://bucket/some/prefix", ("gs", "bucket/some/prefix")),
        ("/data/mimic", ("file", "/data/mimic")),
        ("file:///data/mimic", ("file", "/data/mimic")),
    ],
)
def test_split_source(source, expected):
    assert split_source(source) == expected


def test_unknown_scheme_lists_supported(tmp_path):
    params = IngestParams.model_construct(source="s3://b/p")  # bypass validation on purpose
    with pytest.raises(ValueError, match=r"no handler for scheme 's3'.*synthetic://"):
        ingest("s3://b/p", tmp_path / "raw", params, seed=0)
