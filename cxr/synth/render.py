"""Procedural chest radiographs with anatomy, findings, organ masks and boxes.

Everything is drawn in a *patient frame*: ``X`` runs from the patient's right (negative, image
left) to the patient's left (positive, image right) with the inner chest wall at about
``|X| = 0.45``; ``Y`` runs downwards from the lung apices (``Y = 0``) to the costophrenic angles
(``Y ~ 1``). A per-image similarity transform (scale, shift, rotation) maps that frame onto the
pixel grid, so one geometry yields the picture, the organ masks and every box consistently.

The picture is a *density* map (higher = more attenuating = brighter in MONOCHROME2), built from
body thickness, lung air, mediastinum and heart, bones (spine, ribs, clavicles, humeral heads),
vessel markings, then findings and devices, then exposure, blur and noise. Findings are drawn
where they belong: effusion fills the costophrenic angle with a meniscus, pneumothorax removes
markings at the apex/lateral lung behind a pleural line, edema is perihilar, and so on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cxr.synth.cohort import Finding

ORGANS = ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle")
#: The 18 Chest ImaGenome regions used by AnaXNet / CheXtriev, in their customary order.
REGIONS = (
    "right lung",
    "right apical zone",
    "right upper lung zone",
    "right mid lung zone",
    "right lower lung zone",
    "right hilar structures",
    "right costophrenic angle",
    "left lung",
    "left apical zone",
    "left upper lung zone",
    "left mid lung zone",
    "left lower lung zone",
    "left hilar structures",
    "left costophrenic angle",
    "mediastinum",
    "upper mediastinum",
    "cardiac silhouette",
    "trachea",
)
_ZONES = {"upper": (0.08, 0.33), "mid": (0.33, 0.6), "lower": (0.6, 0.95)}
_SEVERITY = {"mild": 0.7, "moderate": 1.0, "severe": 1.35}


@dataclass
class Anatomy:
    """Per-patient body geometry (stable across that patient's studies)."""

    wl: float  # lateral half-width of the lungs
    base_r: float  # Y of the right costophrenic angle
    base_l: float
    dome: float  # dome height of the hemidiaphragms
    ctr: float  # cardiothoracic ratio
    med_w: float  # half-width of the upper mediastinum
    body_w: float  # half-width of the soft-tissue body
    female: bool
    rib_dy: float
    vessel_seed: int

    @classmethod
    def sample(cls, seed: int, sex: str) -> "Anatomy":
        r = np.random.default_rng([seed, 1])
        base_r = float(r.uniform(0.9, 1.0))
        return cls(
            wl=float(r.uniform(0.42, 0.47)),
            base_r=base_r,
            base_l=base_r + float(r.uniform(0.02, 0.06)),
            dome=float(r.uniform(0.1, 0.16)),
            ctr=float(r.uniform(0.4, 0.48)),
            med_w=float(r.uniform(0.065, 0.08)),
            body_w=float(r.uniform(0.56, 0.66)),
            female=sex == "F",
            rib_dy=float(r.uniform(0.088, 0.1)),
            vessel_seed=int(r.integers(2**31)),
        )


@dataclass
class Frame:
    """Similarity transform patient frame -> pixels."""

    cx: float
    cy: float
    s: float
    angle: float

    def to_pixel(self, X, Y):
        c, sn = math.cos(self.angle), math.sin(self.angle)
        return self.cx + self.s * (X * c - Y * sn), self.cy + self.s * (X * sn + Y * c)

    def grid(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        xx -= self.cx
        yy -= self.cy
        c, sn = math.cos(self.angle), math.sin(self.angle)
        X = (xx * c + yy * sn) / self.s
        Y = (-xx * sn + yy * c) / self.s
        return X, Y


@dataclass
class Rendered:
    """One rendered image and everything known about it.

    Attributes:
        image: float32 [rows, cols] in [0, 1], brighter = denser (MONOCHROME2 sense).
        masks: organ name -> bool [rows, cols] (empty for lateral views).
        boxes: list of (finding label, (x1, y1, x2, y2)) in pixels, one per drawn lesion.
        regions: ImaGenome region name -> (x1, y1, x2, y2) in pixels (frontal views only).
        region_findings: region name -> set of finding names drawn inside it.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    regions: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    region_findings: dict[str, set[str]] = field(default_factory=dict)


def _soft(d: np.ndarray, w: float) -> np.ndarray:
    """Smooth inside-indicator of ``d > 0`` with edge width ``w`` (patient units)."""
    return 0.5 * (1.0 + np.tanh(d / w))


def bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight pixel box (x1, y1, x2, y2), x2/y2 exclusive, of a boolean mask; None if empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


class _Painter:
    """Draws polylines and polygons in patient coordinates onto float layers (PIL, then blur)."""

    def __init__(self, frame: Frame, rows: int, cols: int):
        self.frame, self.rows, self.cols = frame, rows, cols

    def new(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        img = Image.new("F", (self.cols, self.rows), 0.0)
        return img, ImageDraw.Draw(img)

    def px(self, pts: np.ndarray) -> list[tuple[float, float]]:
        x, y = self.frame.to_pixel(pts[:, 0], pts[:, 1])
        return list(zip(x.tolist(), y.tolist()))

    def width(self, w: float) -> int:
        return max(1, int(round(w * self.frame.s)))

    @staticmethod
    def array(img: Image.Image, sigma: float = 0.0) -> np.ndarray:
        a = np.asarray(img, dtype=np.float32)
        return ndimage.gaussian_filter(a, sigma) if sigma > 0 else a


def _frame_for(rows: int, cols: int, rng: np.random.Generator, lateral: bool) -> Frame:
    s = min(cols * rng.uniform(0.68, 0.8), rows / rng.uniform(1.35, 1.5))
    if lateral:
        s = min(cols * rng.uniform(0.62, 0.72), rows / rng.uniform(1.35, 1.5))
    cy = rows * rng.uniform(0.1, 0.18) + 0.12 * s
    cx = cols / 2 + cols * rng.uniform(-0.04, 0.04)
    return Frame(cx=cx, cy=cy, s=s, angle=math.radians(rng.uniform(-4.0, 4.0)))


def render(
    anatomy: Anatomy,
    findings: list[Finding],
    view: str,
    rows: int,
    cols: int,
    seed: int,
    signal: float = 1.0,
    noise: float = 1.0,
) -> Rendered:
    """Render one image. ``view`` is PA, AP or LATERAL. Deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 7])
    frame = _frame_for(rows, cols, rng, view == "LATERAL")
    if view == "LATERAL":
        out = _render_lateral(anatomy, findings, frame, rows, cols, rng, signal)
    else:
        out = _render_frontal(anatomy, findings, view, frame, rows, cols, rng, signal)
    out.image = _expose(out.image, rng, noise)
    return out


# --------------------------------------------------------------------------- frontal views


def _render_frontal(an: Anatomy, findings: list[Finding], view: str, frame: Frame, rows: int, cols: int,
                    rng: np.random.Generator, signal: float) -> Rendered:
    X, Y = frame.grid(rows, cols)
    w = 1.2 / frame.s  # edge softness: ~1 pixel
    by_name = {f.name: f for f in findings}
    ap = view == "AP"

    # geometry modified by findings
    # Every effect of a finding, geometric ones included, scales with `signal`, so that
    # signal -> 0 leaves only the normal anatomy (a true null for the difficulty benchmark).
    a = signal
    ctr = an.ctr
    if "Cardiomegaly" in by_name:
        target = 0.53 + 0.07 * _SEVERITY[by_name["Cardiomegaly"].severity or "moderate"]
        ctr = an.ctr + (target - an.ctr) * min(a, 1.5)
    heart_w = ctr * 2 * an.wl * (1.12 if ap else 1.0)
    med_w = an.med_w * (1 + 0.55 * min(a, 1.5) * ("Enlarged Cardiomediastinum" in by_name)) * (1.1 if ap else 1.0)
    inflation = 0.93 if ap else 1.0
    base = {"right": an.base_r * inflation, "left": an.base_l * inflation}
    atel = by_name.get("Atelectasis")
    if atel is not None:
        for side in ("right", "left") if atel.side == "bilateral" else (atel.side,):
            base[side] -= 0.04 * min(a, 1.5)

    # body outline: neck, sloping shoulders, chest wall; thickness falls off laterally
    ax = np.abs(X)
    shoulder_top = np.where(ax < 0.13, -2.0, -0.36 + 0.5 * ((ax - 0.13) / 0.55) ** 2)
    half_w = an.body_w + 0.1 * _soft(-0.02 - Y, 0.06)
    body = _soft(np.minimum(half_w - ax, Y - shoulder_top), 0.012)
    thickness = np.sqrt(np.clip(1.0 - (X / (half_w + 0.02)) ** 2, 0.0, 1.0))
    soft_tissue = body * (0.3 + 0.28 * thickness)

    # lungs, one per side (u = distance from the midline towards that side)
    lung_full, lung_d, dome_y = {}, {}, {}
    for side, sg in (("right", -1.0), ("left", 1.0)):
        u = sg * X
        lat = 0.09 + (an.wl - 0.09) * np.sqrt(np.clip((Y + 0.03) / 0.62, 0.0, 1.0))
        med = 0.055 + 0.02 * np.clip(Y / 0.5, 0, 1)
        half = (an.wl - 0.05) / 2
        uc = 0.05 + half * 0.9
        dome = base[side] - an.dome * np.clip(1.0 - ((u - uc) / (half * 1.15)) ** 2, 0.0, 1.0)
        d = np.minimum.reduce([u - med, lat - u, dome - Y, Y + 0.02])
        lung_full[side] = _soft(d, w)
        lung_d[side] = (lat, dome)
        dome_y[side] = dome

    # heart: tilted ellipse whose right border sits just right of the spine
    h_right = -0.1 - 0.25 * (heart_w - 0.38)
    hx = h_right + heart_w / 2
    hb = 0.16 * math.sqrt(heart_w / 0.38)
    hy = base["left"] - an.dome * 0.9 - hb * 0.3  # the lower part hides below the left dome
    ca, sa = math.cos(math.radians(-22)), math.sin(math.radians(-22))
    ex, ey = (X - hx) * ca + (Y - hy) * sa, -(X - hx) * sa + (Y - hy) * ca
    heart = _soft(1.0 - np.sqrt((ex / (heart_w / 2 / 0.95)) ** 2 + (ey / hb) ** 2), 2.5 * w)
    flare = med_w + 0.05 * np.clip((Y - 0.3) / 0.3, 0, 1)  # mediastinum widens into the heart
    mediast = _soft(flare - np.abs(X - 0.01), w) * _soft(hy - Y + 0.05, 0.03) * _soft(Y + 0.3, 0.02)
    knob = _soft(0.045 - np.hypot(X - 0.075, Y - 0.22), w)
    solid = np.clip(heart + mediast + knob, 0, 1)
    trachea = _soft(0.022 - np.abs(X - 0.005 - 0.02 * np.clip(Y, 0, 1)), w) * _soft(0.33 - Y, w) * _soft(Y + 0.3, w)

    lung_air = {s: lung_full[s] * (1 - solid) for s in lung_full}
    painter = _Painter(frame, rows, cols)

    # markings: branching vessels from each hilum
    vessel_img, vdraw = painter.new()
    vr = np.random.default_rng([an.vessel_seed, 3])
    hila = {"right": (-0.13, 0.43), "left": (0.14, 0.45)}
    for side, sg in (("right", -1.0), ("left", 1.0)):
        for k in range(11):
            ang = math.radians(vr.uniform(-80, 80))
            _branch(vdraw, painter, np.array(hila[side]), sg, ang, 0.16, 0.016, vr, depth=0)
    edema = by_name.get("Edema")
    vessels = painter.array(vessel_img, sigma=0.9 + (0.9 * min(a, 1.5) if edema else 0.0))

    density = soft_tissue.copy()
    air_total = lung_air["right"] + lung_air["left"]
    hilum_blob = sum(
        np.exp(-(((X - hx_) / 0.05) ** 2 + ((Y - hy_) / 0.08) ** 2)) for hx_, hy_ in hila.values()
    )
    markings = np.clip(vessels, 0, 1) * 0.1 + 0.08 * hilum_blob

    boxes: list[tuple[str, tuple[float, float, float, float]]] = []
    finding_masks: dict[str, np.ndarray] = {}

    def add_box(label: str, mask: np.ndarray, name: str) -> None:
        b = bbox(mask)
        if b is not None:
            boxes.append((label, b))
            finding_masks[name] = finding_masks.get(name, np.zeros_like(mask)) | mask

    extra = np.zeros_like(X)

    for f in findings:
        sev = _SEVERITY.get(f.severity or "moderate", 1.0)
        fr = np.random.default_rng([f.seed, 11])
        sides = ("right", "left") if f.side == "bilateral" else ((f.side,) if f.side else ())
        if f.name == "Pleural Effusion":
            for side in sides:
                sg = -1.0 if side == "right" else 1.0
                u = sg * X
                depth = {"mild": 0.1, "moderate": 0.2, "severe": 0.34}[f.severity or "moderate"]
                lat, dome = lung_d[side]
                rel = np.clip((u - 0.06) / (an.wl - 0.06), 0, 1)
                surface = base[side] - depth - (0.08 + 0.5 * depth) * rel**3  # meniscus climbs laterally
                fluid = _soft(Y - surface, 0.03) * (0.75 + 0.25 * _soft(Y - surface - 0.06, 0.05)) * _soft(np.minimum(u - 0.04, an.wl + 0.01 - u), w) * _soft(base[side] + 0.03 - Y, w)
                air_total = air_total * (1 - min(0.9, 0.9 * a) * fluid)
                extra += 0.1 * a * fluid
                add_box("Effusion", (fluid > 0.5) & (lung_full[side] > 0.2), f.name)
        elif f.name == "Pneumothorax":
            side = sides[0]
            sg = -1.0 if side == "right" else 1.0
            u = sg * X
            lat, dome = lung_d[side]
            wpt = {"mild": 0.07, "moderate": 0.14, "severe": 0.24}[f.severity or "mild"]
            dist = np.minimum(lat - u, (Y + 0.02) * 1.3)
            inside = lung_full[side] * _soft(wpt - dist, w)
            pleural_line = lung_full[side] * np.exp(-(((dist - wpt) * frame.s / 1.1) ** 2))
            markings = markings * (1 - min(a, 1.0) * inside)
            air_total = air_total + 0.25 * a * inside
            extra += 0.09 * a * pleural_line
            add_box("Pneumothorax", (inside > 0.5), f.name)
        elif f.name in ("Consolidation", "Pneumonia", "Lung Opacity"):
            strength = {"Consolidation": 0.26, "Pneumonia": 0.22, "Lung Opacity": 0.17}[f.name]
            label = {"Consolidation": "Infiltrate", "Pneumonia": "Pneumonia", "Lung Opacity": "Infiltrate"}[f.name]
            for side in sides:
                blob = _patchy(X, Y, side, f.zone or "lower", 0.07 + 0.035 * sev, fr) * lung_full[side]
                extra += strength * a * blob
                air_total = air_total * (1 - min(0.35 * a, 0.7) * blob)
                add_box(label, blob > 0.35, f.name)
        elif f.name == "Atelectasis":
            for side in sides:
                sg = -1.0 if side == "right" else 1.0
                cx_, cy_ = sg * fr.uniform(0.18, 0.3), base[side] - an.dome - fr.uniform(0.04, 0.12)
                t = math.radians(fr.uniform(-15, 15))
                px_, py_ = (X - cx_) * math.cos(t) + (Y - cy_) * math.sin(t), -(X - cx_) * math.sin(t) + (Y - cy_) * math.cos(t)
                band = _soft(1 - np.sqrt((px_ / (0.09 + 0.03 * sev)) ** 2 + (py_ / 0.022) ** 2), 0.35) * lung_full[side]
                extra += 0.2 * a * band
                air_total = air_total * (1 - min(0.4 * a, 0.8) * band)
                add_box("Atelectasis", band > 0.4, f.name)
        elif f.name == "Edema":
            haze = sum(np.exp(-(((X - hx_) / (0.16 * sev)) ** 2 + ((Y - hy_) / (0.2 * sev)) ** 2)) for hx_, hy_ in hila.values())
            haze = haze * (lung_full["right"] + lung_full["left"])
            extra += 0.13 * a * sev * haze
            air_total = air_total * (1 - min(0.25 * a, 0.5) * haze)
            finding_masks[f.name] = haze > 0.3
        elif f.name == "Lung Lesion":
            side = sides[0]
            sg = -1.0 if side == "right" else 1.0
            lo, hi = _ZONES[f.zone or "upper"]
            cx_, cy_ = sg * fr.uniform(0.16, an.wl - 0.1), fr.uniform(lo + 0.04, hi - 0.04)
            theta = np.arctan2(Y - cy_, X - cx_)
            wobble = 1 + (0.15 * np.sin(3 * theta + fr.uniform(0, 6)) if f.kind == "mass" else 0.0)
            r = np.hypot(X - cx_, Y - cy_) / (f.size * wobble)
            lesion = _soft(1 - r, 0.08)
            extra += (0.3 if f.kind == "mass" else 0.26) * a * lesion
            add_box("Mass" if f.kind == "mass" else "Nodule", lesion > 0.5, f.name)
        elif f.name == "Pleural Other":
            side = sides[0]
            sg = -1.0 if side == "right" else 1.0
            lat, dome = lung_d[side]
            u = sg * X
            band = lung_full[side] * _soft(0.03 - (lat - u), w) * _soft(Y - 0.12, 0.02) * _soft(0.75 - Y, 0.02)
            extra += 0.18 * a * band
            finding_masks[f.name] = band > 0.5
        elif f.name == "Enlarged Cardiomediastinum":
            finding_masks[f.name] = mediast > 0.5

    if "Cardiomegaly" in by_name:
        add_box("Cardiomegaly", heart > 0.5, "Cardiomegaly")

    # bones and devices: painted layers
    ribs_img, rdraw = painter.new()
    fracture = by_name.get("Fracture")
    for side, sg in (("right", -1.0), ("left", 1.0)):
        for k in range(10):
            broken = fracture is not None and fracture.side == side and fracture.kind == f"rib{k + 1}"
            _rib(rdraw, painter, sg, -0.04 + k * an.rib_dy, an.wl, min(a, 1.5) if broken else 0.0)
    ribs = painter.array(ribs_img, sigma=0.8)
    clav = {}
    for side, sg in (("right", -1.0), ("left", 1.0)):
        img, d = painter.new()
        y0 = -0.02 if ap else 0.03
        pts = np.array([[sg * 0.06, y0 + 0.02], [sg * 0.2, y0 - 0.01], [sg * 0.33, y0 - 0.02], [sg * 0.48, y0 - 0.09]])
        d.line(painter.px(pts), fill=1.0, width=painter.width(0.04), joint="curve")
        clav[side] = painter.array(img)
    spine = _soft(0.042 - np.abs(X - 0.005), w) * (0.85 + 0.15 * (np.mod(Y * 11.5, 1.0) > 0.15))
    humeral = sum(_soft(0.085 - np.hypot(X - sg * (an.body_w + 0.06), Y + 0.1), 3 * w) for sg in (-1, 1))
    bones = 0.07 * spine * (0.4 + solid) + 0.07 * np.clip(ribs, 0, 1.2) + 0.12 * (clav["right"] + clav["left"]) + 0.1 * humeral * body

    metal = np.zeros_like(X)
    devices = by_name.get("Support Devices")
    if devices is not None:
        metal = min(a, 1.0) * _devices(painter, devices.kind or "", frame, base, np.random.default_rng([devices.seed, 5]))

    breast = 0.0
    if an.female:
        breast = sum(
            0.07 * _soft(1 - np.hypot((X - sg * 0.3) / 0.2, (Y - 0.82) / 0.16), 0.2) for sg in (-1, 1)
        )
    bubble = 0.18 * _soft(1 - np.hypot((X - 0.24) / 0.07, (Y - dome_y["left"] - 0.07) / 0.04), 0.3) * (1 - lung_full["left"])

    density = (
        soft_tissue
        + breast
        - 0.5 * np.clip(air_total, 0, 1.3) * (0.6 + 0.4 * thickness)
        + markings * np.clip(air_total, 0, 1)
        + 0.06 * heart
        + bones
        + extra
        - bubble
        - 0.12 * trachea
        + metal
    )

    masks = {
        "right_lung": lung_air["right"] > 0.5,
        "left_lung": lung_air["left"] > 0.5,
        "heart": heart > 0.5,
        "right_clavicle": clav["right"] > 0.5,
        "left_clavicle": clav["left"] > 0.5,
    }
    regions = _regions(X, Y, lung_full, base, an, hila, frame, heart, mediast, knob, trachea)
    region_findings = _region_findings(regions, finding_masks, X.shape)
    return Rendered(image=density, masks=masks, boxes=boxes, regions=regions, region_findings=region_findings)


def _branch(draw, painter, start, sg, ang, length, width, rng, depth):
    """Recursive vessel tree growing away from the hilum towards the lung periphery."""
    if depth > 3 or length < 0.02:
        return
    pts = [start]
    p = start.copy()
    for _ in range(4):
        ang += rng.normal(0, 0.25)
        p = p + (length / 4) * np.array([sg * math.cos(ang), math.sin(ang)])
        pts.append(p.copy())
    draw.line(painter.px(np.array(pts)), fill=1.0, width=max(1, int(round(width * painter.frame.s))))
    for _ in range(2):
        if rng.random() < 0.75:
            _branch(draw, painter, p, sg, ang + rng.normal(0, 0.5), length * 0.7, width * 0.65, rng, depth + 1)


def _rib(draw, painter, sg, y0, wl, step: float = 0.0):
    """A posterior rib: from the spine, up and out, then down along the lateral wall; plus its
    fainter anterior arc. Cortex brighter than the medulla. A fracture is a step in the arc, its
    size scaled by ``step`` (the finding's signal; 0 = an intact rib, drawn exactly as one)."""
    t = np.linspace(0, 1, 14)
    u = 0.05 + t * (wl + 0.02)
    yy = y0 - 0.07 * np.sin(np.pi * t * 0.8) + 0.22 * t**2.2
    pts = np.stack([sg * u, yy], axis=1)
    segs = [pts]
    if step > 0:
        k = 8
        segs = [pts[: k + 1], pts[k:] + np.array([sg * 0.008, 0.018]) * step]
    width = painter.width(0.03)
    for seg in segs:
        draw.line(painter.px(seg), fill=1.0, width=width, joint="curve")
        draw.line(painter.px(seg), fill=0.55, width=max(1, int(width * 0.5)), joint="curve")
    # anterior rib: from the lateral wall running down and medially, fading out
    ta = np.linspace(0, 1, 10)
    ua = (wl + 0.02) - ta * (wl - 0.12)
    ya = y0 + 0.2 + 0.05 + 0.16 * ta
    draw.line(painter.px(np.stack([sg * ua, ya], axis=1)), fill=0.45, width=max(1, int(width * 0.8)), joint="curve")


def _patchy(X, Y, side, zone, radius, rng) -> np.ndarray:
    """Patchy airspace opacity: a cluster of soft Gaussian puffs inside one lung zone."""
    sg = -1.0 if side == "right" else 1.0
    lo, hi = _ZONES[zone]
    cx, cy = sg * rng.uniform(0.16, 0.32), rng.uniform(lo + 0.05, hi - 0.03)
    out = np.zeros_like(X)
    for _ in range(7):
        px, py = cx + rng.normal(0, radius * 0.5), cy + rng.normal(0, radius * 0.5)
        r = radius * rng.uniform(0.35, 0.7)
        out = np.maximum(out, np.exp(-(((X - px) ** 2 + (Y - py) ** 2) / (2 * r * r))))
    return np.clip(out * 1.3, 0, 1)


def _devices(painter: _Painter, kinds: str, frame: Frame, base: dict, rng) -> np.ndarray:
    img, d = painter.new()
    wire = max(1, painter.width(0.006))
    for kind in filter(None, kinds.split(",")):
        if kind == "ett":
            tip = rng.uniform(0.2, 0.27)
            for off in (-0.012, 0.012):
                d.line(painter.px(np.array([[0.01 + off, -0.35], [0.012 + off, tip]])), fill=0.8, width=wire)
        elif kind == "ngt":
            pts = np.array([[0.03, -0.35], [0.03, 0.3], [0.05, 0.7], [0.1, base["left"] + 0.05], [0.22, base["left"] + 0.1], [0.28, base["left"] + 0.06]])
            d.line(painter.px(pts), fill=0.7, width=wire, joint="curve")
        elif kind == "central_line":
            sg = rng.choice([-1.0, 1.0])
            pts = np.array([[sg * 0.3, -0.12], [sg * 0.16, -0.02], [-0.05, 0.12], [-0.055, rng.uniform(0.25, 0.35)]])
            d.line(painter.px(pts), fill=0.7, width=wire, joint="curve")
        elif kind == "pacemaker":
            x0, y0 = 0.3, 0.02
            box = np.array([[x0, y0], [x0 + 0.1, y0], [x0 + 0.1, y0 + 0.07], [x0, y0 + 0.07]])
            d.polygon(painter.px(box), fill=1.2)
            for end in ((0.0, 0.62), (0.05, 0.72)):
                pts = np.array([[x0 + 0.02, y0 + 0.04], [0.18, 0.05], [0.02, 0.2], [-0.03, 0.45], end])
                d.line(painter.px(pts), fill=0.8, width=wire, joint="curve")
    return painter.array(img, sigma=0.6) * 0.6


def _regions(X, Y, lung_full, base, an, hila, frame, heart, mediast, knob, trachea):
    regions: dict[str, tuple[float, float, float, float]] = {}

    def put(name, mask):
        b = bbox(mask)
        if b is not None:
            regions[name] = b

    for side, sg in (("right", -1.0), ("left", 1.0)):
        lung = lung_full[side] > 0.5
        put(f"{side} lung", lung)
        put(f"{side} apical zone", lung & (Y < 0.12))
        put(f"{side} upper lung zone", lung & (Y < 0.33))
        put(f"{side} mid lung zone", lung & (Y >= 0.33) & (Y < 0.6))
        put(f"{side} lower lung zone", lung & (Y >= 0.6))
        hx, hy = hila[side]
        put(f"{side} hilar structures", (np.abs(X - hx) < 0.065) & (np.abs(Y - hy) < 0.09))
        put(f"{side} costophrenic angle", lung & (sg * X > an.wl - 0.13) & (Y > base[side] - 0.15))
    med = (mediast > 0.5) | (heart > 0.5) | (knob > 0.5)
    put("mediastinum", med)
    put("upper mediastinum", med & (Y < 0.3))
    put("cardiac silhouette", heart > 0.5)
    put("trachea", trachea > 0.5)
    return {name: regions[name] for name in REGIONS if name in regions}


def _region_findings(regions, finding_masks, shape) -> dict[str, set[str]]:
    """Which findings lie in which region: >= 8% of the finding (or of the box) inside it."""
    out: dict[str, set[str]] = {name: set() for name in regions}
    for fname, m in finding_masks.items():
        total = m.sum()
        if total == 0:
            continue
        for rname, (x1, y1, x2, y2) in regions.items():
            inside = m[int(y1):int(y2), int(x1):int(x2)].sum()
            area = max((x2 - x1) * (y2 - y1), 1.0)
            if inside / total >= 0.08 or inside / area >= 0.15:
                out[rname].add(fname)
    return out


# --------------------------------------------------------------------------- lateral views


def _render_lateral(an: Anatomy, findings: list[Finding], frame: Frame, rows: int, cols: int,
                    rng: np.random.Generator, signal: float) -> Rendered:
    """Left lateral view: anterior to image left, spine on the right.

    Lungs superimpose into one field bounded by the sternum in front, the spine behind and the
    diaphragm below (sloping down to the deep posterior costophrenic sulcus); the heart fills
    the anterior-inferior field; arms overlie the apex; the trachea runs down the upper middle.
    """
    X, Y = frame.grid(rows, cols)
    w = 1.2 / frame.s
    a = signal
    by_name = {f.name: f for f in findings}
    # body: an anteroposterior cross-section, flatter in front
    front_wall = -0.47 + 0.1 * ((Y - 0.5) / 0.8) ** 2
    back_wall = 0.55 - 0.06 * ((Y - 0.4) / 0.8) ** 2
    body = _soft(np.minimum.reduce([X - front_wall, back_wall - X, Y + 0.35]), 0.015)
    thickness = np.sqrt(np.clip(1 - ((X - 0.02) / 0.55) ** 2, 0, 1))
    arms = _soft(0.16 - np.abs(Y + 0.02), 0.06) * body
    # lung field
    base = an.base_r + 0.04
    dome = base - 0.12 - 0.14 * np.clip(1 - ((X + 0.02) / 0.36) ** 2, 0, 1) + 0.16 * np.clip((X - 0.05) / 0.35, 0, 1) ** 2
    front = X + 0.36 + 0.05 * np.clip(Y, 0, 1)  # retrosternal border
    back = 0.38 - X - 0.04 * np.clip(1 - Y, 0, 1)  # posterior border, in front of the spine
    apex = Y + 0.06 - 0.55 * (X / 0.4) ** 2
    lung = _soft(np.minimum.reduce([front, back, dome - Y, apex]), 2 * w)
    heart_scale = 1 + 0.25 * min(a, 1.5) * ("Cardiomegaly" in by_name)
    heart = _soft(1 - np.hypot((X + 0.14) / (0.21 * heart_scale), (Y - 0.78) / (0.24 * heart_scale)), 0.06)
    air = lung * (1 - 0.85 * heart)
    trachea = _soft(0.025 - np.abs(X + 0.02 - 0.08 * Y), w) * _soft(0.38 - Y, 0.02)
    hilum = np.exp(-(((X - 0.0) / 0.08) ** 2 + ((Y - 0.45) / 0.1) ** 2))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, X.shape).astype(np.float32), 2.5 * frame.s / 200)
    extra = np.zeros_like(X)
    eff = by_name.get("Pleural Effusion")
    if eff is not None:
        level = base - 0.06 - {"mild": 0.06, "moderate": 0.14, "severe": 0.24}[eff.severity or "moderate"]
        fluid = _soft(Y - (level - 0.12 * np.clip((X - 0.05) / 0.3, 0, 1)), 0.02) * lung * _soft(X + 0.1, 0.03)
        air = air * (1 - min(0.9, 0.9 * a) * fluid)
        extra += 0.08 * a * fluid
    for f in findings:
        if f.name in ("Consolidation", "Pneumonia", "Lung Opacity"):
            fr = np.random.default_rng([f.seed, 11])
            blob = _patchy(X + 0.24, Y, "right", f.zone or "lower", 0.08, fr) * lung
            extra += 0.18 * a * blob
            air = air * (1 - min(0.35 * a, 0.7) * blob)
    vert = np.mod(Y * 11.5 + 0.3 * X, 1.0)
    spine = _soft(0.07 - np.abs(X - 0.47 + 0.03 * Y), w) * np.where(vert > 0.18, 1.0, 0.55)
    sternum = _soft(0.018 - np.abs(X + 0.42 + 0.05 * Y), w) * _soft(0.62 - Y, 0.02) * _soft(Y + 0.05, 0.02)
    density = (
        body * (0.34 + 0.2 * thickness)
        + 0.1 * arms
        - 0.42 * np.clip(air, 0, 1) * (1 - 0.45 * arms)
        + 0.05 * hilum * lung
        + 0.04 * texture * lung
        + 0.05 * heart
        - 0.08 * trachea
        + 0.12 * spine
        + 0.08 * sternum
        + extra
    )
    return Rendered(image=density)


# --------------------------------------------------------------------------- exposure


def _expose(density: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Detector response: exposure, gamma, scatter blur, quantum + electronic noise."""
    gain = rng.uniform(0.9, 1.15)
    offset = rng.uniform(-0.04, 0.05)
    gamma = rng.uniform(0.85, 1.2)
    img = ndimage.gaussian_filter(density.astype(np.float32), 0.6)
    img = np.clip(gain * img + offset + 0.05, 0, 1) ** gamma
    sigma = 0.012 * noise
    if sigma > 0:
        img = img + rng.normal(0, sigma, img.shape).astype(np.float32) * np.sqrt(np.clip(img, 0.05, 1))
        low = ndimage.zoom(rng.normal(0, 1, (8, 8)).astype(np.float32), (img.shape[0] / 8, img.shape[1] / 8), order=1)
        img = img + 0.006 * noise * low[: img.shape[0], : img.shape[1]]
    return np.clip(img, 0, 1).astype(np.float32)
