"""Contact sheet of generated images with their true findings, for a person to look at."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from cxr import io as cio
from cxr.dicom import read_image

_SHORT = {
    "Enlarged Cardiomediastinum": "EnlCM", "Cardiomegaly": "Cardiomeg", "Lung Opacity": "Opacity",
    "Lung Lesion": "Lesion", "Edema": "Edema", "Consolidation": "Consol", "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelect", "Pneumothorax": "PTX", "Pleural Effusion": "Effusion", "Pleural Other": "PlOther",
    "Fracture": "Fracture", "Support Devices": "Devices", "No Finding": "No Finding",
}


def load_display(path: Path) -> np.ndarray:
    """Decode an image through the converter's reader (modality LUT, VOI, MONOCHROME1 inverted)
    and stretch it to uint8 for display."""
    arr = read_image(path).image
    lo, hi = np.percentile(arr, [0.5, 99.5])
    return (np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def contact_sheet(root: str | Path, out_png: str | Path, n: int = 16, tile: int = 256, cols: int = 4) -> Path:
    """Write a grid of the first ``n`` readable images of a cohort, captioned with their findings.

    Images are chosen to cover findings: one per distinct finding first, then in file order.
    """
    root = Path(root)
    truth = pd.read_parquet(root / "truth" / "truth.parquet")
    ok = truth[truth["broken"] == ""]
    chosen: list[int] = []
    for name in _SHORT:
        hit = ok.index[(ok[name] == 1) & ~ok.index.isin(chosen)]
        if len(hit) and len(chosen) < n:
            chosen.append(int(hit[0]))
    chosen += [int(i) for i in ok.index if i not in chosen][: max(0, n - len(chosen))]
    rows = (len(chosen) + cols - 1) // cols
    sheet = Image.new("L", (cols * tile, rows * (tile + 28)), 0)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, i in enumerate(chosen):
        r = truth.loc[i]
        img = Image.fromarray(load_display(root / r["file"]))
        img.thumbnail((tile, tile))
        x0, y0 = (k % cols) * tile, (k // cols) * (tile + 28)
        sheet.paste(img, (x0 + (tile - img.width) // 2, y0))
        names = [_SHORT[c] for c in _SHORT if r[c] == 1]
        draw.text((x0 + 3, y0 + tile + 1), f"{r['dataset']} {r['view']}", fill=255, font=font)
        draw.text((x0 + 3, y0 + tile + 13), ", ".join(names)[:44], fill=200, font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    cio.write_bytes(out_png, buf.getvalue())
    return Path(out_png)
