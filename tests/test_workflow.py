"""The DVC user's workflow without running the DAG: cross-section params checks, one device vocabulary,
params.yaml in DVC's own style, the headline metrics, the dvc.yaml declarations that keep them small."""

from __future__ import annotations

import logging
import shutil

import pytest
import yaml

from cxr.evaluate import headline
from cxr.params import ParamsError, check_consistency, load_sections, parse_section


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"train": {"models": ["resnet50"]}}, ["evaluate.reference = 'densenet121'", "train.models = ['resnet50']"]),
        ({"train": {"models": ["densenet121", "ath"]}, "retrieve": {"hashing": ["ath"]}},
         ["retrieve.hashing", "share ['ath']"]),
        ({"localize": {"select_iou": 0.3}}, ["localize.select_iou = 0.3", "localize.thresholds"]),
    ],
)
def test_cross_section_disagreements_are_named(raw, needles):
    with pytest.raises(ParamsError) as exc:
        check_consistency(raw)
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)


def test_every_stage_checks_consistency_before_work(tmp_path, caplog):
    # ingest reads neither train nor evaluate, but refuses a file whose sections disagree: the first stage
    # of a `dvc exp run -S train.models=[resnet50]` fails in a second, not evaluate@M minutes later
    p = tmp_path / "params.yaml"
    p.write_text("train: {models: [resnet50]}\n")
    log = logging.getLogger("consistency-test")
    with caplog.at_level(logging.ERROR, logger="consistency-test"):
        assert load_sections(p, "base", "ingest", log=log) is None
    assert "evaluate.reference" in caplog.text
    p.write_text("train: {models: [resnet50]}\nevaluate: {reference: resnet50}\n")
    assert load_sections(p, "base", "ingest", log=log) is not None


def test_retrieve_models_is_gone_with_a_pointer():
    with pytest.raises(ParamsError, match=r"retrieve.models was removed.*train.models"):
        parse_section("retrieve", {"models": ["densenet121"]})


@pytest.mark.parametrize("section", ["detector", "features", "unet", "train", "localize"])
def test_one_device_vocabulary(section):
    for value in ("auto", "cpu", "cuda", "mps"):
        assert parse_section(section, {"device": value}).device == value
    assert parse_section(section, {"device": "gpu"}).device == "cuda"
    assert parse_section(section, {"device": "GPU"}).device == "cuda"
    with pytest.raises(ParamsError, match=rf"{section}.device = 'tpu'.*'auto', 'cpu', 'cuda' or 'mps'"):
        parse_section(section, {"device": "tpu"})


def test_params_yaml_is_in_dvcs_style(repo_root, tmp_path):
    """`dvc exp run -S` rewrites params.yaml through ruamel; ours is a fixed point of that rewrite, so an
    -S change is a one-line diff and no comment is lost."""
    from dvc.utils.hydra import apply_overrides

    p = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", p)
    original = p.read_text()
    apply_overrides(str(p), ["base.seed=42"])  # the value it already has
    assert p.read_text() == original
    apply_overrides(str(p), ["train.loss=focal"])
    changed = [(a, b) for a, b in zip(original.splitlines(), p.read_text().splitlines()) if a != b]
    assert len(original.splitlines()) == len(p.read_text().splitlines())
    assert changed == [("  loss: bce                   # bce (masked) | focal",
                        "  loss: focal                 # bce (masked) | focal")]


def _eval(auc):
    return {"macro_auroc": auc, "macro_auroc_ci_low": auc - 0.1, "macro_auroc_ci_high": auc + 0.05,
            "macro_auprc": 0.3, "macro_f1": 0.2, "ece": 0.04, "per_class": {"A": {"auroc": 0.9}}}


def _loc(supported=True):
    iou = {"0.1": 0.5, "0.25": 0.25, "0.5": 0.1}
    return {"supported": supported, "architecture": "x", "test": {"macro": {"iou": iou, "iobb": {**iou, "0.25": 0.4}}}}


def _pointing():
    scores = {"iou": {"0.1": 0.3, "0.25": 0.1}, "iobb": {"0.1": 0.4, "0.25": 0.2}}
    return {"supported": True, "kind": "region", "pointing": {"scores": {"macro": scores}}}


def _ret(ap5):
    return {"k": [3, 5, 10], "metrics": {k: {"no_skip": {"class_average": {"ap": ap5 if k == "5" else 0.0}}}
                                         for k in ("3", "5", "10")}}


def test_headline_picks_the_few_numbers():
    out = headline.build(
        models={"densenet121": {"evaluate": _eval(0.81234567), "localize": _loc(), "retrieve": _ret(0.5)},
                "anaxnet": {"evaluate": _eval(0.7), "localize": _pointing(), "retrieve": _ret(0.6)},
        "segfusion_van_gcn": {"evaluate": _eval(0.7), "localize": _loc(False), "retrieve": _ret(0.6)}},
        hashing={"ath": {"retrieve": _ret(0.4)}},
        detector_metrics={"test": {"AP50": 0.9, "per_region": {}}, "val": {"AP50": 0.8}},
        unet_metrics={"not_applicable": "no organ masks"},
        label={"labeller": {"synthetic_truth": {"macro_f1": 0.95, "per_class": {}}}, "disagreement": {"x": 1}},
        select_iou=0.25, ks=[3, 5, 10],
    )
    assert out["models"]["densenet121"] == {
        "macro_auroc": 0.8123, "macro_auroc_ci_low": 0.7123, "macro_auroc_ci_high": 0.8623, "macro_auprc": 0.3,
        "macro_f1": 0.2, "ece": 0.04, "iou@0.25": 0.25, "iobb@0.25": 0.4, "ap@5": 0.5}
    assert out["models"]["anaxnet"]["iou@0.25"] == 0.1 and out["models"]["anaxnet"]["iobb@0.25"] == 0.2
    assert "iou@0.25" not in out["models"]["segfusion_van_gcn"]  # not supported: nothing, not a zero
    assert out["models"]["ath"] == {"ap@5": 0.4}
    assert out["detector"] == {"ap50": 0.9} and out["labeller"] == {"macro_f1": 0.95}
    assert "unet" not in out  # not applicable: left out
    assert headline.unet({"test": {"images": 0, "per_structure": {}}, "val": {"mean_dice": 0.5}}) == {}
    assert headline.unet({"test": {"images": 3, "mean_dice": 0.81234}}) == {"dice": 0.8123}
    assert headline.retrieval_k([1, 3, 10]) == 3


def test_headline_names_a_missing_number():
    with pytest.raises(headline.HeadlineError, match=r"evaluation/m/metrics.json: no 'ece'"):
        bad = _eval(0.8)
        del bad["ece"]
        headline.build(models={"m": {"evaluate": bad, "localize": _loc(), "retrieve": _ret(0.1)}}, hashing={},
                       detector_metrics={}, unet_metrics={}, label={}, select_iou=0.25, ks=[5])
    with pytest.raises(headline.HeadlineError, match=r"no accuracy at threshold 0.3"):
        headline.localization(_loc(), 0.3)


def test_dvc_yaml_declares_only_the_headline_as_metrics(repo_root):
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m for s in stages.values() for m in s.get("metrics", [])]
    assert metrics == ["reports/metrics.json"]
    # every list of models derives from train.models (the hashing models have their own matrix)
    for name in ("train", "evaluate", "localize", "retrieve"):
        assert stages[name]["matrix"] == {"model": "${train.models}"}, name
    for name in ("train_hash", "retrieve_hash"):
        assert stages[name]["matrix"] == {"model": "${retrieve.hashing}"}, name
    plots = {next(iter(p)): p[next(iter(p))] for p in stages["evaluate"]["plots"]}
    for path, spec in plots.items():
        template = repo_root / ".dvc/plots" / f"{spec['template']}.json"
        enc = yaml.safe_load(template.read_text())["encoding"]
        assert enc["color"]["field"] == "class" and enc["strokeDash"]["field"] == "rev", path


def test_progress_is_one_line_off_a_terminal(caplog, capsys, monkeypatch):
    from cxr import progress

    monkeypatch.setattr(progress, "interactive", lambda: False)  # as in a DVC log
    with caplog.at_level(logging.INFO, logger="cxr.progress"):
        assert list(progress.tqdm(range(7), desc="image cache 128px", unit="img")) == list(range(7))
        with progress.tqdm(total=5, desc="download", unit="file", disable=None) as bar:
            bar.update(2)
    lines = [r.getMessage() for r in caplog.records if r.name == "cxr.progress"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("image cache 128px: 7 img in ") and "img/s" in lines[0]
    assert lines[1].startswith("download: 2/5 file in ")
    assert "\r" not in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxr.progress"):
        assert list(progress.tqdm([1, 2], disable=True)) == [1, 2]
    assert not caplog.records  # disabled: silent


def test_quiet_drops_only_the_known_noise(caplog):
    import warnings

    from cxr.quiet import LIGHTNING_LOGGER, quiet

    @quiet
    def noisy():
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        logging.getLogger(LIGHTNING_LOGGER).info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        logging.getLogger(LIGHTNING_LOGGER).info("GPU available: False, used: False")
        return 3

    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO, logger=LIGHTNING_LOGGER):
        warnings.simplefilter("always")
        assert noisy() == 3
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        warnings.warn("`torch.jit.script` is deprecated.", FutureWarning, stacklevel=1)
    assert len(outside) == 1  # nothing global: outside the call it shows


def test_plots_template_inlines_local_vega(tmp_path):
    from cxr.plots import LIBRARIES, PlotsError, offline_template

    with pytest.raises(PlotsError, match=r"vega.min.js not found.*make vega"):
        offline_template(tmp_path)
    for name in LIBRARIES:
        (tmp_path / name).write_text(f"/* {name} */ var x = 1;" + " " * 20_000)
    page = offline_template(tmp_path)
    assert "{plot_divs}" in page and "{scripts}" not in page and "<script src" not in page
    assert all(f"/* {name} */" in page for name in LIBRARIES)
    (tmp_path / "vega.min.js").write_text("</script>" + " " * 20_000)
    with pytest.raises(PlotsError, match="not a minified Vega library build"):
        offline_template(tmp_path)


def test_cli_version_and_plots_verb(capsys):
    from cxr import __version__, cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"cxr-pipeline {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["plots", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
