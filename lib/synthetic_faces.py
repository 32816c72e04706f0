"""Procedurally drawn faces of the 7 RAF-DB expressions: the offline demo's data, no downloads;
they show that a training pipeline works, nothing about real faces. Each class is a pose of brows,
eyes and mouth among nuisances (pose, colours, clutter, occluders, light, noise), drawn at 2x. Item
i of a split draws from default_rng([seed, split_code, i]); its label is i % len(classes).
"""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from lib.errors import BadInputError

SPLIT_CODES = {"train": 1, "test": 2}
_SS = 2  # supersampling factor

# Offsets from neutral at full intensity (local units: face half-width = 1, y down). raise: brows
# up; tilt: inner brow ends down (+); arch: brow middle up; eye: openness; curve: mouth corners up
# (+); open: mouth opening; width: mouth width; sneer: one-sided upper-lip raise.
_EXPRESSIONS = {
    "surprise": dict(raise_=0.20, arch=0.08, eye=0.65, open=0.30, width=-0.22),
    "fear": dict(raise_=0.12, tilt=-0.14, eye=0.60, open=0.13, width=0.15, curve=-0.05),
    "disgust": dict(raise_=-0.05, tilt=0.07, eye=-0.40, sneer=0.18, curve=-0.07),
    "happiness": dict(raise_=0.03, eye=-0.35, curve=0.24, width=0.12),
    "sadness": dict(raise_=0.03, tilt=-0.15, eye=-0.25, curve=-0.21, width=-0.06),
    "anger": dict(raise_=-0.09, tilt=0.18, eye=-0.35, curve=-0.05, width=-0.10),
    "neutral": dict(),
}
_JITTER = dict(raise_=0.015, tilt=0.015, eye=0.06, curve=0.02, width=0.04)  # of a resting face
_SKIN_LIGHT, _SKIN_DARK = np.array([250.0, 222.0, 196.0]), np.array([80.0, 52.0, 36.0])


def expression_params(rng, name):
    """Brow, eye and mouth parameters of one face showing the expression `name`."""
    s = rng.uniform(1.0, 1.5)  # intensity: at 0.7-1.15 the demo learned far slower
    p = dict.fromkeys(("raise_", "tilt", "arch", "eye", "curve", "open", "width", "sneer"), 0.0)
    p.update({k: s * v for k, v in _EXPRESSIONS[name].items()})
    for k, sd in _JITTER.items():  # the resting face of this person
        p[k] += rng.normal(0, sd)
    # a fixed number of draws, so the nuisances after this do not depend on the label
    u = rng.random(4)
    p["teeth"] = name == "fear" and u[1] < 0.5
    if name == "happiness" and u[0] < 0.5:  # open smile
        p["open"], p["teeth"] = s * 0.10, True
    if name == "anger" and u[0] < 0.4:  # bared teeth
        p["open"], p["teeth"] = s * 0.07, True
    p["wrinkles"] = name == "disgust" or (name == "anger" and u[1] < 0.3)
    p["folds"] = name == "happiness" and u[2] < 0.6  # nasolabial folds
    p["side"] = 1.0 if u[3] < 0.5 else -1.0  # sneer side
    return p


def _ellipse(cx, cy, rx, ry, n=20):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _colour(rgb):
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def draw_face(rng, name, image_size=64):
    """One face showing the expression `name`: a square PIL RGB image, all randomness from rng."""
    S = image_size * _SS
    img = Image.new("RGB", (S, S), _colour(rng.uniform(0, 255, 3)))
    dr = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 3)):  # background clutter
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * S
        w, h = rng.uniform(0.1, 0.6, 2) * S
        shape = dr.ellipse if rng.random() < 0.5 else dr.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=_colour(rng.uniform(0, 255, 3)))

    unit = S * rng.uniform(0.31, 0.41)  # face half-width in pixels
    theta = rng.uniform(-0.26, 0.26)
    M = unit * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    c = S / 2 + rng.uniform(-0.08, 0.08, 2) * S
    b = rng.uniform(1.15, 1.4)  # face half-height (local units)
    yaw, pitch = rng.uniform(-1, 1), rng.uniform(-1, 1)

    def px(pts):  # local (N, 2) -> canvas [(x, y), ...]
        return [tuple(q) for q in (np.asarray(pts, float) @ M.T + c)]

    def feat(pts):  # features move with yaw/pitch, the outline does not
        return px(np.asarray(pts, float) * [1 - 0.12 * abs(yaw), 1] + [0.12 * yaw, 0.06 * pitch])

    def shape(pts, rgb, at=px):  # a filled polygon, on the outline (px) or the features (feat)
        dr.polygon(at(pts), fill=_colour(rgb))

    def stroke(pts, rgb, w, **kw):  # a line through the features, w thick (local units)
        dr.line(feat(pts), fill=_colour(rgb), width=max(1, int(round(w * unit))), **kw)

    if rng.random() < 0.1:  # unnatural skin tone (avatars, colour casts)
        skin = rng.uniform(60, 250, 3)
    else:
        t = rng.beta(1.3, 1.3)
        skin = (1 - t) * _SKIN_LIGHT + t * _SKIN_DARK + rng.normal(0, 8, 3)
    hair = rng.uniform(0, 255, 3) * rng.uniform(0.1, 1.0)
    dark = skin * rng.uniform(0.1, 0.45)  # brows, lashes
    if rng.random() < 0.6:  # shoulders and neck
        shape(_ellipse(0, b + 1.3, 1.9, 0.9), rng.uniform(0, 255, 3))
        shape([[-0.4, b * 0.6], [0.4, b * 0.6], [0.45, b + 0.6], [-0.45, b + 0.6]], skin * 0.9)
    if rng.random() < 0.85:  # hair behind the head
        shape(_ellipse(0, -0.15, 1.12, b * rng.uniform(0.95, 1.15)), hair)
    for sx in (-1, 1):  # ears
        shape(_ellipse(sx * 1.0, -0.05, 0.16, 0.26, 10), skin * 0.95)
    shape(_ellipse(0, 0, 1.0, b, 28), skin)
    if rng.random() < 0.3:  # blush
        for sx in (-1, 1):
            shape(_ellipse(sx * 0.5, 0.2, 0.16, 0.1, 10), skin * [1.05, 0.85, 0.85], feat)

    p = expression_params(rng, name)
    ey, ex = rng.uniform(-0.3, -0.15), rng.uniform(0.36, 0.44)
    erx = rng.uniform(0.15, 0.2)
    ery = max(0.012, 0.085 * (1 + p["eye"]))
    iris = _colour(rng.uniform(20, 160, 3))
    for sx in (-1, 1):  # eyes
        cx = sx * ex
        shape(_ellipse(cx, ey, erx, ery, 16), rng.uniform(225, 255, 3), feat)
        r = min(0.07, ery)  # iris radius
        shape(_ellipse(cx, ey, r, r, 12), iris, feat)
        shape(_ellipse(cx, ey, r * 0.45, r * 0.45, 8), (10, 10, 10), feat)
        t = np.linspace(np.pi, 2 * np.pi, 9)
        stroke(np.stack([cx + erx * np.cos(t), ey + ery * np.sin(t)], 1), dark, 0.035)
    by = ey - 0.2 - p["raise_"]
    bw = rng.uniform(0.1, 0.14)  # brow thickness: about 2 px at 48 px
    brow = hair * 0.5 + dark * 0.5 if rng.random() < 0.5 else dark
    for sx in (-1, 1):  # brows
        inner, middle = [sx * 0.13, by + p["tilt"]], [sx * 0.33, by - 0.04 - p["arch"]]
        stroke([inner, middle, [sx * 0.56, by + 0.03]], brow, bw, joint="curve")
    ny = rng.uniform(0.12, 0.22)  # nose
    stroke([[0, ey + 0.08], [0.05, ny], [-0.03, ny + 0.03]], skin * 0.6, 0.03)
    if p["wrinkles"]:
        for sx in (-1, 1):
            stroke([[sx * 0.06, ey + 0.05], [sx * 0.15, ey + 0.12]], skin * 0.55, 0.025)
    my = b * rng.uniform(0.4, 0.5)
    if p["folds"]:
        for sx in (-1, 1):
            stroke([[sx * 0.2, ny], [sx * 0.36, my - 0.02]], skin * 0.7, 0.025)
    w = np.clip(0.42 + p["width"], 0.15, 0.75)  # mouth
    lip = skin * [0.75, 0.45, 0.45] * rng.uniform(0.7, 1.0)
    inside, teeth_col = rng.uniform(20, 70), rng.uniform(215, 250, 3)
    line_w = rng.uniform(0.09, 0.13)  # closed-lip thickness: about 2 px at 48 px
    t = np.linspace(-1, 1, 13)
    upper = my - p["curve"] * t**2  # corners up when curve > 0
    upper = upper - p["sneer"] * np.clip(p["side"] * t + 0.2, 0, None) * (1 - t**2) * 1.6
    if p["open"] > 0.03:
        bulge = np.sqrt(np.clip(1 - t**2, 0, None))
        lower = upper + p["open"] * bulge * 1.6
        top = upper - 0.3 * p["open"] * bulge
        poly = np.concatenate([np.stack([w * t, top], 1), np.stack([w * t, lower], 1)[::-1]])
        shape(poly, inside * np.array([1.4, 0.6, 0.6]), feat)
        if p["teeth"]:
            teeth = np.minimum(top + 0.35 * (lower - top), top + 0.06)
            tw = 0.85 * w * t
            tpoly = np.concatenate([np.stack([tw, top], 1), np.stack([tw, teeth], 1)[::-1]])
            shape(tpoly, teeth_col, feat)
        stroke(poly[list(range(len(poly))) + [0]], lip, 0.04)
    else:
        stroke(np.stack([w * t, upper], 1), lip, line_w, joint="curve")

    if rng.random() < 0.1:  # glasses
        gcol = rng.uniform(0, 200, 3)
        for sx in (-1, 1):
            stroke(_ellipse(sx * ex, ey, 0.24, 0.17, 16)[list(range(16)) + [0]], gcol, 0.03)
        stroke([[-ex + 0.24, ey], [ex - 0.24, ey]], gcol, 0.03)
    if rng.random() < 0.1:  # fringe reaching the brows
        fy = by + rng.uniform(-0.05, 0.05)
        fringe = [[-1.05, -b * 0.5], [1.05, -b * 0.5], [1.0, fy - 0.15], [0.3 * yaw, fy]]
        shape(fringe + [[-1.0, fy - 0.1]], hair)
    if rng.random() < 0.15:  # occluder (hand, object) over part of the face
        oc = rng.uniform(-0.8, 0.8, 2) * [1, b]
        ow, oh = rng.uniform(0.15, 0.35, 2)
        col = skin * rng.uniform(0.8, 1.1) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        box = oc + np.array([[-ow, -oh], [ow, -oh], [ow, oh], [-ow, oh]])
        shape(_ellipse(oc[0], oc[1], ow, oh, 16) if rng.random() < 0.5 else box, col)

    img = img.reduce(_SS)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    x = np.asarray(img, dtype=np.float32)
    g = np.linspace(-0.5, 0.5, image_size, dtype=np.float32)
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.6) * (np.cos(a) * g[None, :] + np.sin(a) * g[:, None])  # (S, S)
    x = x * (light[..., None] * rng.uniform(0.7, 1.2)) + rng.normal(0, rng.uniform(0, 6), x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


class SyntheticFaces(torch.utils.data.Dataset):
    """`num` drawn faces of one split; item (PIL RGB image or transform(image), label)."""

    def __init__(self, num, classes, split="train", seed=0, image_size=64, transform=None):
        if split not in SPLIT_CODES:  # evaluate.py's --split reaches here
            raise BadInputError(f"--split {split!r}: synthetic faces have {sorted(SPLIT_CODES)}")
        if num <= 0:
            raise ValueError(f"synthetic {split} split is empty (num={num}); pass num_{split} > 0")
        self.num, self.split, self.seed = int(num), split, int(seed)
        self.image_size, self.transform = int(image_size), transform
        self.classes = list(classes)
        self.targets = [i % len(self.classes) for i in range(self.num)]

    def __len__(self):
        return self.num

    def __getitem__(self, index):
        label = self.targets[index]  # an IndexError past the end
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])  # a SeedSequence
        image = draw_face(rng, self.classes[label], self.image_size)
        return (self.transform(image) if self.transform is not None else image), label
