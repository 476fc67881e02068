"""``dvc plots show`` / ``dvc plots diff`` without a network: an HTML template with the Vega libraries inlined.

DVC's default plots page loads vega, vega-lite and vega-embed from a CDN, so on an offline machine (a hospital
enclave) it renders blank. ``--html-template`` replaces that page; the template here carries the three
libraries inside it, read from a local copy that ``make vega`` installs from the npm registry at setup time
(pinned versions in the Makefile) into ``<venv>/share/vega``; nothing is fetched when plots are drawn.

    cxr plots show                         # = dvc plots show --html-template .dvc/tmp/plots-offline.html
    cxr plots diff HEAD workspace          # any dvc plots arguments after show / diff
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cxr.io import write_text

LIBRARIES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
ENV = "CXR_VEGA_DIR"
DEFAULT_TEMPLATE = Path(".dvc/tmp/plots-offline.html")


class PlotsError(RuntimeError):
    """The local Vega libraries are missing (names the folder, the files and the fix)."""


def vega_dir() -> Path:
    """Where the Vega libraries are: ``$CXR_VEGA_DIR``, else ``<sys.prefix>/share/vega`` (``make vega``)."""
    return Path(os.environ.get(ENV) or Path(sys.prefix) / "share" / "vega")


def offline_template(libraries: Path | None = None, title: str = "DVC plots (offline)") -> str:
    """The HTML template: DVC's ``{plot_divs}`` placeholder, the three libraries inline, no external URL.

    Raises:
        PlotsError: a library file is missing or looks truncated.
    """
    folder = Path(libraries) if libraries is not None else vega_dir()
    scripts = []
    for name in LIBRARIES:
        path = folder / name
        if not path.is_file():
            raise PlotsError(f"{path} not found: the offline plots page needs {', '.join(LIBRARIES)} in {folder} "
                             f"(run `make vega`, or point {ENV} at a folder holding them)")
        text = path.read_text(encoding="utf-8")
        if len(text) < 10_000 or "</script" in text.lower():
            raise PlotsError(f"{path} ({len(text)} characters) is not a minified Vega library build; reinstall with `make vega`")
        scripts.append(f"<script>/* {name} */\n{text}\n</script>")
    # DVC fills {plot_divs} (and {refresh_tag} when asked); with no {scripts} placeholder it adds no CDN tags
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n{refresh_tag}\n"
            f"<title>{html.escape(title)}</title>\n" + "\n".join(scripts) +
            "\n<style>table{border-spacing:15px}</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n")


def write_offline_template(out: str | Path = DEFAULT_TEMPLATE, libraries: Path | None = None) -> Path:
    """Write :func:`offline_template` to ``out`` (atomically) and return the path."""
    write_text(out, offline_template(libraries))
    return Path(out)


def _cmd_plots(args: argparse.Namespace) -> int:
    log = logging.getLogger("cxr.plots")
    try:
        template = write_offline_template(args.template, args.vega_dir)
    except PlotsError as exc:
        log.error("%s", exc)
        return 2
    if args.action == "template":
        print(template)
        return 0
    beside = Path(sys.executable).parent / "dvc"  # the dvc of this environment first
    dvc = str(beside) if beside.is_file() else shutil.which("dvc")
    if dvc is None:
        log.error("dvc is not on PATH (activate the project's virtual environment)")
        return 2
    out = ["-o", str(args.out)] if args.out is not None else []
    cmd = [dvc, "plots", args.action, "--html-template", str(template), *out, *args.dvc_args]
    log.info("running: %s", " ".join(cmd))
    return subprocess.call(cmd)


def add_plots_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plots", help="dvc plots show / diff that render offline (Vega libraries inlined)",
                       description="Write an offline HTML template for DVC plots (Vega libraries from a local copy, "
                                   "`make vega`) and run `dvc plots show|diff --html-template` with it; `template` "
                                   "only writes the template and prints its path.")
    p.add_argument("action", choices=["show", "diff", "template"], help="dvc plots show / diff, or only the template")
    p.add_argument("dvc_args", nargs=argparse.REMAINDER, help="more dvc plots arguments (revisions, -o DIR, --json, ...)")
    p.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                   help=f"where the template is written (default: {DEFAULT_TEMPLATE})")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="folder of the HTML page, passed to dvc plots as -o (default: dvc's ./dvc_plots)")
    p.add_argument("--vega-dir", type=Path, default=None,
                   help=f"folder with {', '.join(LIBRARIES)} (default: ${ENV}, else <venv>/share/vega)")
    p.set_defaults(func=_cmd_plots)
