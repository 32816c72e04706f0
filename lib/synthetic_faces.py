"""Procedurally drawn faces of the 7 RAF-DB expressions: the offline demo's data (no files, no
downloads).

Each class is a distinct configuration of brows, eyes and mouth (the Action Units a FER model keys
on):

    surprise   brows raised and arched, eyes wide, mouth an open "O"
    fear       brows raised with inner ends up, eyes wide, mouth open and stretched wide
    disgust    brows lowered, eyes narrowed, upper lip raised on one side, nose wrinkles
    happiness  mouth corners up (open smile with teeth half the time), eyes narrowed by the cheeks
    sadness    inner brow ends up, mouth corners down, eyes slightly closed
    anger      brows lowered with inner ends down, eyes narrowed, lips pressed or teeth bared
    neutral    everything at rest

Every face draws an intensity in [1.0, 1.5] that scales its class's offsets from neutral, on top of
a per-face resting jitter, so expressions vary in strength but none fades into neutral; brows and
closed lips are about 2 px thick at 48 px (the demo's size). Nuisances a model must ignore:
rotation (+-15 deg), yaw/pitch shift of the features, face scale, shape and position, skin, hair,
feature and background colours, background clutter and shoulders, hair fringes over the brows,
glasses, a random occluder over part of the face, a lighting gradient, brightness, blur and noise.
Faces are drawn at 2x and box-filtered down, so sub-pixel shape changes survive.

What they are NOT: photographs, or a stand-in for any benchmark. Accuracy on them says that a
training pipeline works end to end, nothing about FER performance on real faces.

Deterministic per (seed, split, index): item i of a split draws from numpy's Generator seeded with
SeedSequence([seed, split_code, i]), and the label is i % 7 (balanced classes). Train and test use
different split codes, so they are disjoint draws.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

SPLIT_CODES = {"train": 1, "test": 2}
_SS = 2  # supersampling factor

# Offsets from neutral at full intensity (local units: face half-width = 1, y points down). raise:
# brows up; tilt: inner brow ends down (+) / up (-); arch: brow middle up; eye: openness change;
# curve: mouth corners up (+) / down (-); open: mouth opening; width: mouth width change; sneer:
# one-sided upper-lip raise.
_EXPRESSIONS = {
    "surprise": dict(raise_=0.20, arch=0.08, eye=0.65, open=0.30, width=-0.22),
    "fear": dict(raise_=0.12, tilt=-0.14, eye=0.60, open=0.13, width=0.15, curve=-0.05),
    "disgust": dict(raise_=-0.05, tilt=0.07, eye=-0.40, sneer=0.18, curve=-0.07),
    "happiness": dict(raise_=0.03, eye=-0.35, curve=0.24, width=0.12),
    "sadness": dict(raise_=0.03, tilt=-0.15, eye=-0.25, curve=-0.21, width=-0.06),
    "anger": dict(raise_=-0.09, tilt=0.18, eye=-0.35, curve=-0.05, width=-0.10),
    "neutral": dict(),
}
_SKIN_LIGHT, _SKIN_DARK = np.array([250.0, 222.0, 196.0]), np.array([80.0, 52.0, 36.0])


def expression_params(rng, name):
    """Brow/eye/mouth parameters of one face showing the expression `name` (a key of
    _EXPRESSIONS)."""
    s = rng.uniform(1.0, 1.5)  # intensity: at 0.7-1.15 the demo learned far slower
    d = _EXPRESSIONS[name]
    p = {
        k: s * d.get(k, 0.0)
        for k in ("raise_", "tilt", "arch", "eye", "curve", "open", "width", "sneer")
    }
    p["raise_"] += rng.normal(0, 0.015)  # resting face of this person
    p["tilt"] += rng.normal(0, 0.015)
    p["eye"] += rng.normal(0, 0.06)
    p["curve"] += rng.normal(0, 0.02)
    p["width"] += rng.normal(0, 0.04)
    # a fixed number of draws, so the nuisances after this do not depend on the label
    u = rng.random(4)
    p["teeth"] = False
    if name == "happiness" and u[0] < 0.5:  # open smile
        p["open"], p["teeth"] = s * 0.10, True
    if name == "anger" and u[0] < 0.4:  # bared teeth
        p["open"], p["teeth"] = s * 0.07, True
    if name == "fear":
        p["teeth"] = u[1] < 0.5
    p["wrinkles"] = name == "disgust" or (name == "anger" and u[1] < 0.3)
    p["folds"] = name == "happiness" and u[2] < 0.6  # nasolabial folds
    p["side"] = 1.0 if u[3] < 0.5 else -1.0  # sneer side
    return p


def _ellipse(cx, cy, rx, ry, n=20):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _colour(rgb):
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def _skin(rng):
    if rng.random() < 0.1:  # unnatural tone (avatars, colour casts)
        return rng.uniform(60, 250, 3)
    t = rng.beta(1.3, 1.3)
    return (1 - t) * _SKIN_LIGHT + t * _SKIN_DARK + rng.normal(0, 8, 3)


def draw_face(rng, name, image_size=64):
    """One face showing the expression `name` as a PIL RGB image (image_size x image_size), all
    randomness from rng."""
    S = image_size * _SS
    bg = rng.uniform(0, 255, 3)
    img = Image.new("RGB", (S, S), _colour(bg))
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
        pts = np.asarray(pts, float).copy()
        pts[:, 0] = pts[:, 0] * (1 - 0.12 * abs(yaw)) + 0.12 * yaw
        pts[:, 1] += 0.06 * pitch
        return px(pts)

    def width(w):
        return max(1, int(round(w * unit)))

    skin = _skin(rng)
    hair = rng.uniform(0, 255, 3) * rng.uniform(0.1, 1.0)
    dark = skin * rng.uniform(0.1, 0.45)  # brows, lashes
    if rng.random() < 0.6:  # shoulders and neck
        dr.polygon(px(_ellipse(0, b + 1.3, 1.9, 0.9)), fill=_colour(rng.uniform(0, 255, 3)))
        dr.polygon(
            px([[-0.4, b * 0.6], [0.4, b * 0.6], [0.45, b + 0.6], [-0.45, b + 0.6]]),
            fill=_colour(skin * 0.9),
        )
    if rng.random() < 0.85:  # hair behind the head
        dr.polygon(px(_ellipse(0, -0.15, 1.12, b * rng.uniform(0.95, 1.15))), fill=_colour(hair))
    for sx in (-1, 1):  # ears
        dr.polygon(px(_ellipse(sx * 1.0, -0.05, 0.16, 0.26, 10)), fill=_colour(skin * 0.95))
    dr.polygon(px(_ellipse(0, 0, 1.0, b, 28)), fill=_colour(skin))
    if rng.random() < 0.3:  # blush
        for sx in (-1, 1):
            dr.polygon(
                feat(_ellipse(sx * 0.5, 0.2, 0.16, 0.1, 10)),
                fill=_colour(skin * [1.05, 0.85, 0.85]),
            )

    p = expression_params(rng, name)
    ey, ex = rng.uniform(-0.3, -0.15), rng.uniform(0.36, 0.44)
    erx = rng.uniform(0.15, 0.2)
    ery = max(0.012, 0.085 * (1 + p["eye"]))
    iris = _colour(rng.uniform(20, 160, 3))
    for sx in (-1, 1):  # eyes
        cx = sx * ex
        dr.polygon(feat(_ellipse(cx, ey, erx, ery, 16)), fill=_colour(rng.uniform(225, 255, 3)))
        r = min(0.07, ery)
        dr.polygon(feat(_ellipse(cx, ey, r, r if ery > 0.02 else ery, 12)), fill=iris)
        dr.polygon(feat(_ellipse(cx, ey, r * 0.45, min(r, ery) * 0.45, 8)), fill=(10, 10, 10))
        t = np.linspace(np.pi, 2 * np.pi, 9)
        dr.line(
            feat(np.stack([cx + erx * np.cos(t), ey + ery * np.sin(t)], 1)),
            fill=_colour(dark),
            width=width(0.035),
        )
    by = ey - 0.2 - p["raise_"]
    bw = rng.uniform(0.1, 0.14)  # brow thickness: about 2 px at 48 px
    brow = _colour(hair * 0.5 + dark * 0.5) if rng.random() < 0.5 else _colour(dark)
    for sx in (-1, 1):  # brows
        pts = [
            [sx * 0.13, by + p["tilt"]],
            [sx * 0.33, by - 0.04 - p["arch"]],
            [sx * 0.56, by + 0.03],
        ]
        dr.line(feat(pts), fill=brow, width=width(bw), joint="curve")
    ny = rng.uniform(0.12, 0.22)  # nose
    dr.line(
        feat([[0, ey + 0.08], [0.05, ny], [-0.03, ny + 0.03]]),
        fill=_colour(skin * 0.6),
        width=width(0.03),
    )
    if p["wrinkles"]:
        for sx in (-1, 1):
            dr.line(
                feat([[sx * 0.06, ey + 0.05], [sx * 0.15, ey + 0.12]]),
                fill=_colour(skin * 0.55),
                width=width(0.025),
            )
    my = b * rng.uniform(0.4, 0.5)
    if p["folds"]:
        for sx in (-1, 1):
            dr.line(
                feat([[sx * 0.2, ny], [sx * 0.36, my - 0.02]]),
                fill=_colour(skin * 0.7),
                width=width(0.025),
            )
    _draw_mouth(dr, feat, width, p, my, rng, skin)

    if rng.random() < 0.1:  # glasses
        gcol = _colour(rng.uniform(0, 200, 3))
        for sx in (-1, 1):
            dr.line(
                feat(_ellipse(sx * ex, ey, 0.24, 0.17, 16)[list(range(16)) + [0]]),
                fill=gcol,
                width=width(0.03),
            )
        dr.line(feat([[-ex + 0.24, ey], [ex - 0.24, ey]]), fill=gcol, width=width(0.03))
    if rng.random() < 0.1:  # fringe reaching the brows
        fy = by + rng.uniform(-0.05, 0.05)
        dr.polygon(
            px(
                [
                    [-1.05, -b * 0.5],
                    [1.05, -b * 0.5],
                    [1.0, fy - 0.15],
                    [0.3 * yaw, fy],
                    [-1.0, fy - 0.1],
                ]
            ),
            fill=_colour(hair),
        )
    if rng.random() < 0.15:  # occluder (hand, object) over part of the face
        oc = rng.uniform(-0.8, 0.8, 2) * [1, b]
        ow, oh = rng.uniform(0.15, 0.35, 2)
        col = skin * rng.uniform(0.8, 1.1) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            dr.polygon(px(_ellipse(oc[0], oc[1], ow, oh, 16)), fill=_colour(col))
        else:
            dr.polygon(
                px(
                    [
                        [oc[0] - ow, oc[1] - oh],
                        [oc[0] + ow, oc[1] - oh],
                        [oc[0] + ow, oc[1] + oh],
                        [oc[0] - ow, oc[1] + oh],
                    ]
                ),
                fill=_colour(col),
            )

    img = img.reduce(_SS)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    x = np.asarray(img, dtype=np.float32)
    g = np.linspace(-0.5, 0.5, image_size, dtype=np.float32)
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.6) * (np.cos(a) * g[None, :] + np.sin(a) * g[:, None])  # (S, S)
    x = x * (light[..., None] * rng.uniform(0.7, 1.2)) + rng.normal(0, rng.uniform(0, 6), x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _draw_mouth(dr, feat, width, p, my, rng, skin):
    w = np.clip(0.42 + p["width"], 0.15, 0.75)
    lip = _colour(skin * [0.75, 0.45, 0.45] * rng.uniform(0.7, 1.0))
    inside, teeth_col, line_w = (
        rng.uniform(20, 70),
        rng.uniform(215, 250, 3),
        rng.uniform(0.09, 0.13),  # closed-lip thickness: about 2 px at 48 px
    )
    t = np.linspace(-1, 1, 13)
    upper = my - p["curve"] * t**2  # corners up when curve > 0
    upper = upper - p["sneer"] * np.clip(p["side"] * t + 0.2, 0, None) * (1 - t**2) * 1.6
    if p["open"] > 0.03:
        lower = upper + p["open"] * np.sqrt(np.clip(1 - t**2, 0, None)) * 1.6
        top = upper - 0.3 * p["open"] * np.sqrt(np.clip(1 - t**2, 0, None))
        poly = np.concatenate([np.stack([w * t, top], 1), np.stack([w * t, lower], 1)[::-1]])
        dr.polygon(feat(poly), fill=_colour(inside * np.array([1.4, 0.6, 0.6])))
        if p["teeth"]:
            teeth = np.minimum(top + 0.35 * (lower - top), top + 0.06)
            tpoly = np.concatenate(
                [np.stack([0.85 * w * t, top], 1), np.stack([0.85 * w * t, teeth], 1)[::-1]]
            )
            dr.polygon(feat(tpoly), fill=_colour(teeth_col))
        dr.line(feat(poly[list(range(len(poly))) + [0]]), fill=lip, width=width(0.04))
    else:
        dr.line(feat(np.stack([w * t, upper], 1)), fill=lip, width=width(line_w), joint="curve")


class SyntheticFaces(torch.utils.data.Dataset):
    """`num` drawn faces of one split; item (PIL RGB image_size x image_size, or transform(image),
    label)."""

    def __init__(self, num, classes, split="train", seed=0, image_size=64, transform=None):
        if split not in SPLIT_CODES:
            raise ValueError(f"synthetic split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        if num <= 0:
            raise ValueError(f"synthetic {split} split is empty (num={num}); pass num_{split} > 0")
        if int(seed) < 0:
            raise ValueError(f"synthetic seed must be >= 0, got {seed}")
        self.num, self.split, self.seed, self.image_size = (
            int(num),
            split,
            int(seed),
            int(image_size),
        )
        self.transform = transform
        unknown = [c for c in classes if c not in _EXPRESSIONS]
        if unknown:
            raise ValueError(f"synthetic faces draw {sorted(_EXPRESSIONS)}, not {unknown}")
        self.classes = list(classes)
        self.targets = [i % len(self.classes) for i in range(self.num)]

    def __len__(self):
        return self.num

    def __getitem__(self, index):
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} synthetic faces")
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, SPLIT_CODES[self.split], index])
        )
        image = draw_face(rng, self.classes[self.targets[index]], self.image_size)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]
