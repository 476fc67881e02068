"""The ``cxr`` command's argument tree: every verb described, every option explained, ``-o/--out``
where a verb writes files, ``--method`` limited to the heatmap methods, ``--version``."""

from __future__ import annotations

import argparse

import pytest

from cxr import __version__
from cxr.cli import get_args_parser

#: verbs without -o/--out, and why
NO_OUT = {"exp-run": "runs dvc exp run; the outputs are the ones dvc.yaml declares"}


def _verbs(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    """verb -> (its parser, its one-line help in `cxr --help`)."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out[name] = (sub, helps.get(name))
    return out


def _missing_help(parser: argparse.ArgumentParser, where: str) -> list[str]:
    bad = []
    if not (parser.description or "").strip():
        bad.append(f"{where}: no description")
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
            bad.append(f"{where} {'/'.join(action.option_strings) or action.dest}: no help")
    return bad


def test_every_verb_and_option_has_help():
    root = get_args_parser()
    verbs = _verbs(root)
    assert {"synth", "exp-run", "label", "predict", "segment", "plots"} <= set(verbs)
    bad = _missing_help(root, "cxr")
    for name, (sub, line) in verbs.items():
        if not (line or "").strip():
            bad.append(f"cxr {name}: no one-line help")
        bad += _missing_help(sub, f"cxr {name}")
    assert bad == []


def test_walk_would_catch_a_missing_help():
    p = argparse.ArgumentParser(prog="x", description="d")
    sub = p.add_subparsers()
    v = sub.add_parser("v", help="a verb")
    v.add_argument("--flag")
    assert _missing_help(v, "x v") == ["x v: no description", "x v --flag: no help"]


def test_every_verb_that_writes_has_out():
    for name, (sub, _) in _verbs(get_args_parser()).items():
        opts = {s for a in sub._actions for s in a.option_strings}
        assert name in NO_OUT or {"-o", "--out"} <= opts, name


def test_method_choices_are_the_heatmap_methods(capsys):
    from cxr.predict import HEATMAP_METHODS

    assert set(HEATMAP_METHODS) == {"cam", "gradcam", "gradcam++"}
    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args(["predict", "x.png", "--model", "m", "--method", "nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        get_args_parser().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"cxr-pipeline {__version__}"
