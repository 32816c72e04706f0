"""confusion.png (evaluate.py), drawn with Pillow: a cell per (true, predicted) pair, shaded by
the row-normalised fraction, its count and row % written in."""

import torch
from PIL import Image, ImageDraw


def draw_confusion_png(cm, class_names, path, title="confusion matrix"):
    """Confusion (K, K), rows true and columns predicted -> a PNG at path."""
    cm = torch.as_tensor(cm).double()
    K, cell, left, top = len(class_names), 64, 110, 60
    img = Image.new("RGB", (left + K * cell + 20, top + K * cell + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black")
    d.text((left, 26), "predicted ->", fill="black")
    d.text((6, top + K * cell + 12), "rows: true class", fill="black")
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)  # (K, K)
    for i, name in enumerate(class_names):
        d.text((6, top + i * cell + cell // 2 - 6), name[:16], fill="black")
        d.text((left + i * cell + 4, top - 16), name[:10], fill="black")
        for j in range(K):
            v, x, y = frac[i, j].item(), left + j * cell, top + i * cell
            shade = (int(255 - 215 * v), int(255 - 160 * v), 255)
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=(180, 180, 180))
            ink = "white" if v > 0.55 else "black"
            d.text((x + 6, y + 16), f"{int(cm[i, j])}", fill=ink)
            d.text((x + 6, y + 34), f"{100 * v:.0f}%", fill=ink)
    img.save(path)
