"""The pictures evaluate.py writes, drawn with PIL alone: confusion.png (a dataset report) and
diagnostics.png (tools/diagnostics.py's numbers: per-class strips, the summary table, the anchors'
cosine table).
"""

import math

import torch
from PIL import Image, ImageDraw, ImageFont

GREEN, RED, PURPLE, BLUE, GREY = (
    (30, 140, 60),
    (200, 50, 40),
    (120, 60, 170),
    (40, 90, 190),
    (120, 120, 120),
)
ANCHOR_CELL, BAND = 58, 46  # px: anchor table cell, strip-plot band per class


def draw_confusion_png(cm, class_names, path, title="confusion matrix"):
    """Confusion (K, K) -> PNG: cells shaded by the row-normalised fraction, counts and row %
    written in."""
    cm = torch.as_tensor(cm).double()
    K, cell, left, top = len(class_names), 64, 110, 60
    font = ImageFont.load_default()
    img = Image.new("RGB", (left + K * cell + 20, top + K * cell + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black", font=font)
    d.text((left, 26), "predicted ->", fill="black", font=font)
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)  # (K, K)
    for i in range(K):
        d.text((6, top + i * cell + cell // 2 - 6), class_names[i][:16], fill="black", font=font)
        d.text((left + i * cell + 4, top - 16), class_names[i][:10], fill="black", font=font)
        for j in range(K):
            v = frac[i, j].item()
            shade = (int(255 - 215 * v), int(255 - 160 * v), 255)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=shade, outline=(180, 180, 180))
            ink = "white" if v > 0.55 else "black"
            d.text((x0 + 6, y0 + 16), f"{int(cm[i, j].item())}", fill=ink, font=font)
            d.text((x0 + 6, y0 + 34), f"{100 * v:.0f}%", fill=ink, font=font)
    d.text((6, top + K * cell + 12), "rows: true class", fill="black", font=font)
    img.save(path)


def _font(size):
    """Pillow's built-in scalable font at `size` px (Pillow >= 10.1), else its bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _ticks(lo, hi):
    """A padded axis range (lo, hi) within [-1, 1] and 4-8 round tick values in it."""
    span = max(hi - lo, 0.02)
    lo, hi = max(lo - 0.06 * span, -1.0), min(hi + 0.06 * span, 1.0)
    step = next(s for s in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5) if (hi - lo) / s <= 8)
    first = math.ceil(lo / step - 1e-9)
    return lo, hi, [round(i * step, 4) for i in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _axis_range(values, include=()):
    """Axis (lo, hi) for a strip plot. With p5, p95 the 5th and 95th percentiles and w = p95 - p5:
    the range p5 - w/2 .. p95 + w/2 (plus `include`, e.g. 0) when outliers stretch the full range
    past 1.5 times that (3 w), the values beyond then drawn at the axis edges; else the full
    range."""
    v = sorted(values)
    lo, hi = v[int(0.05 * (len(v) - 1))], v[math.ceil(0.95 * (len(v) - 1))]
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
    if v[-1] - v[0] <= 1.5 * max(hi - lo, 1e-9):
        lo, hi = v[0], v[-1]
    return min([lo, *include]), max([hi, *include])


def _strip_panel(draw, box, title, rows, series, fonts, include=()):
    """Strip plot in box (x0, y0, x1, y1): one band per row name, one sub-strip per series
    (label, colour, {row: [values]}); every value a dot (hollow at the edge when off the axis), its
    quartile box, its mean (over all values) as a bar and number."""
    x0, y0, x1, y1 = box
    small, normal = fonts
    draw.text((x0, y0), title, fill="black", font=normal)
    legend_x = x0
    for label, colour, _ in series:
        draw.rectangle([legend_x, y0 + 24, legend_x + 10, y0 + 34], fill=colour)
        draw.text((legend_x + 14, y0 + 22), label, fill="black", font=small)
        legend_x += 24 + draw.textlength(label, font=small)
    values = [v for _, _, d in series for r in rows for v in d.get(r, [])]
    if not values:
        draw.text((x0, y0 + 50), "(no images)", fill=GREY, font=small)
        return
    lo, hi, ticks = _ticks(*_axis_range(values, include))
    off_axis = sum(not lo <= v <= hi for v in values)
    digits = 4 if hi - lo < 0.1 else 3  # mean labels: enough digits to tell close means apart
    left, right, top, bottom = x0 + 120, x1 - 70, y0 + 44, y1 - 22

    def sx(v):  # a value -> its x in pixels, clipped to the axis
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * (right - left)

    band = (bottom - top) / len(rows)
    for v in ticks:
        draw.line(
            [sx(v), top, sx(v), bottom],
            fill=(225, 225, 225) if v else (90, 90, 90),
            width=1 if v else 2,
        )
        draw.text(
            (sx(v) - draw.textlength(f"{v:g}", font=small) / 2, bottom + 4),
            f"{v:g}",
            fill="black",
            font=small,
        )
    for i, row in enumerate(rows):
        b0 = top + i * band
        draw.line([left, b0, right, b0], fill=(200, 200, 200))
        draw.text((x0, b0 + band / 2 - 7), row[:16], fill="black", font=small)
        sub = band / len(series)
        for j, (_, colour, data) in enumerate(series):
            v = sorted(data.get(row, []))
            if not v:
                continue
            c0, c1 = b0 + j * sub + 3, b0 + (j + 1) * sub - 3
            for k, a in enumerate(v):  # dots, spread vertically by a fixed pseudo-jitter
                yy = c0 + 2 + ((k * 0.618034) % 1.0) * max(c1 - c0 - 4, 1)
                if lo <= a <= hi:
                    draw.ellipse([sx(a) - 2, yy - 2, sx(a) + 2, yy + 2], fill=colour + (90,))
                else:
                    draw.ellipse([sx(a) - 3, yy - 3, sx(a) + 3, yy + 3], outline=colour + (255,))
            q1, q3 = v[len(v) // 4], v[(3 * len(v)) // 4]
            draw.rectangle([sx(q1), c0, sx(q3), c1], outline=colour + (255,), width=2)
            mean = sum(v) / len(v)
            draw.line([sx(mean), c0 - 2, sx(mean), c1 + 2], fill=(0, 0, 0, 255), width=3)
            draw.text((right + 8, (c0 + c1) / 2 - 7), f"{mean:.{digits}f}", fill=colour, font=small)
    draw.rectangle([left, top, right, bottom], outline=GREY)
    if off_axis:
        note = f"{off_axis} of {len(values)} values beyond the axis, drawn hollow at its edge"
        draw.text((right - draw.textlength(note, font=small), y0 + 22), note, fill=GREY, font=small)


def _anchor_table(draw, box, names, table, fonts):
    """Heat-shaded table of the anchors' cosines cos(t_i, t_j) with the values written in."""
    x0, y0, _, _ = box
    small, normal = fonts
    draw.text((x0, y0), "text anchors: cos(t_i, t_j)", fill="black", font=normal)
    off = [table[i][j] for i in range(len(names)) for j in range(len(names)) if i != j]
    lo, hi = min(off), max(off)
    cell, left, top = ANCHOR_CELL, x0 + 120, y0 + 60
    for i, name in enumerate(names):
        draw.text((x0, top + i * cell + cell / 2 - 7), name[:16], fill="black", font=small)
        draw.text(
            (left + i * cell + 2, top - 18 - 14 * (i % 2)),
            name.split()[0][:9],
            fill="black",
            font=small,
        )
        for j in range(len(names)):
            v = table[i][j]
            # shade by rank among off-diagonal values
            u = 1.0 if i == j else (v - lo) / max(hi - lo, 1e-9)
            shade = (int(255 - 200 * u), int(255 - 140 * u), 255)
            draw.rectangle(
                [
                    left + j * cell,
                    top + i * cell,
                    left + (j + 1) * cell - 1,
                    top + (i + 1) * cell - 1,
                ],
                fill=shade,
                outline=(190, 190, 190),
            )
            draw.text(
                (left + j * cell + 6, top + i * cell + cell / 2 - 7),
                f"{v:.2f}",
                fill="white" if u > 0.6 else "black",
                font=small,
            )
    draw.text(
        (x0, top + len(names) * cell + 8),
        f"off-diagonal range {lo:.3f} .. {hi:.3f} (shading)",
        fill=GREY,
        font=small,
    )


def _by_class(diag, key, classes):
    """{class name: [per-image values of key]} for the images of each class (None values left
    out)."""
    out = {c: [] for c in classes}
    for label, v in zip(diag["per_image"]["label"], diag["per_image"][key], strict=True):
        if v is not None:
            out[diag["class_names"][label]].append(v)
    return out


def _summary_table(draw, xy, diag, fonts):
    """The per-class means as a table: images, own, other, margin, accuracy, L_t cos, cos(f,t_y),
    cos(g(f),t_y)."""
    x0, y0 = xy
    small, normal = fonts
    draw.text((x0, y0), "per-class means", fill="black", font=normal)
    heads = [
        "images",
        "own",
        "other",
        "margin",
        "correct",
        "L_t cos",
        "cos(f,t_y)",
        "cos(g(f),t_y)",
    ]
    keys = ["images", "own", "other", "margin", "accuracy", "transform", "f_text", "g_text"]
    cols = [x0 + 120 + 72 * i for i in range(len(heads))]
    for x, h in zip(cols, heads, strict=True):
        draw.text((x, y0 + 30), h, fill="black", font=small)
    rows = list(diag["per_class"].items())
    if diag["non_neutral"] is not None:
        rows.append(
            (
                "all non-neutral",
                dict(diag["non_neutral"], own=None, other=None, margin=None, accuracy=None),
            )
        )
    for r, (name, row) in enumerate(rows):
        y = y0 + 54 + 22 * r
        draw.text((x0, y), name[:16], fill="black", font=small)
        for x, k in zip(cols, keys, strict=True):
            v = row.get(k)
            text = (
                ""
                if v is None
                else str(v)
                if k == "images"
                else f"{100 * v:.1f}%"
                if k == "accuracy"
                else f"{v:.3f}"
            )
            draw.text((x, y), text, fill="black", font=small)


def draw_diagnostics(diag, path):
    """Draw diagnostics.png from a compute_diagnostics dict: L_s (own vs nearest other anchor, and
    their margin), then L_t and L_c (when the model has a neutral anchor), then the anchor table and
    the means."""
    names, anchors = diag["class_names"], diag["anchor_names"]
    fonts = (_font(13), _font(16))
    has_neutral = diag["non_neutral"] is not None
    rows = [c for i, c in enumerate(names) if i != diag["neutral_index"]]
    h1, h2 = 70 + BAND * len(names), (70 + BAND * len(rows)) if has_neutral else 0
    h3 = max(110 + ANCHOR_CELL * len(anchors), 80 + 22 * (len(names) + 1))
    width, half = max(1500, 1000 + ANCHOR_CELL * len(anchors)), 740
    y2, y3 = 60 + h1 + 30, 60 + h1 + 30 + (h2 + 30 if has_neutral else 40)
    img = Image.new("RGB", (width, y3 + h3), "white")
    draw = ImageDraw.Draw(img, "RGBA")
    draw.text(
        (20, 12),
        f"KE2NT diagnostics: {diag['images']} images, {len(names)} classes.  "
        "Dots = images, box = quartiles, black bar and number = mean.",
        fill="black",
        font=_font(18),
    )
    _strip_panel(
        draw,
        (20, 60, half, 60 + h1),
        "L_s: cos(f, own anchor) vs cos(f, nearest other class anchor)",
        names,
        [
            ("own anchor", GREEN, _by_class(diag, "own", names)),
            ("nearest other", RED, _by_class(diag, "other", names)),
        ],
        fonts,
    )
    _strip_panel(
        draw,
        (half + 30, 60, width - 10, 60 + h1),
        "L_s margin: cos(f, own) - cos(f, nearest other)",
        names,
        [("look for: right of 0 (= classified correctly)", BLUE, _by_class(diag, "margin", names))],
        fonts,
        include=(0.0,),
    )
    if has_neutral:
        _strip_panel(
            draw,
            (20, y2, half, y2 + h2),
            "L_t: cos(f - g(f), t_y - t_neutral), non-neutral classes",
            rows,
            [
                (
                    "look for: high, towards 1 (L_t = 1 - this)",
                    BLUE,
                    _by_class(diag, "transform", rows),
                )
            ],
            fonts,
        )
        _strip_panel(
            draw,
            (half + 30, y2, width - 10, y2 + h2),
            "L_c: cos(f, t_y) vs cos(g(f), t_y), non-neutral classes",
            rows,
            [
                ("f", GREEN, _by_class(diag, "f_text", rows)),
                (
                    "g(f)  (look for: green right of purple)",
                    PURPLE,
                    _by_class(diag, "g_text", rows),
                ),
            ],
            fonts,
        )
    else:
        draw.text(
            (20, y2),
            "no neutral anchor: the L_t and L_c quantities are not defined",
            fill=GREY,
            font=fonts[1],
        )
    _anchor_table(draw, (20, y3, half, y3 + h3), anchors, diag["anchor_cosines"], fonts)
    _summary_table(draw, (half + 30, y3), diag, fonts)
    img.quantize(colors=128).save(path, optimize=True)  # a 128-colour palette: under half the bytes
