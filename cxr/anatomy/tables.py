"""Table helpers of the anatomy stages that need no torch (the ``coco`` stage imports only these)."""

from __future__ import annotations

import pandas as pd

from cxr.errors import AnatomyError


def ok_images(images: pd.DataFrame) -> pd.DataFrame:
    """Rows of images.parquet that converted, indexed by image_id."""
    df = images[images["status"] == "ok"]
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise AnatomyError(f"images table: image_id {dup!r} appears twice")
    return df.set_index("image_id", drop=False)
