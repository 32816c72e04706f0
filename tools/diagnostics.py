"""What KE2NT's losses did to the feature space: cosine diagnostics of a trained model, and their
picture.

For every image (f = proj(backbone(x)), n = g(f), y its class, t_k the raw text anchors):
    own        cos(f, t_y)                              what L_s raises (the logit is 100x this)
    other      max_{k != y, k < K} cos(f, t_k)          the nearest competing class anchor
For every non-neutral image (only when the model has a neutral anchor, t_neutral =
anchors[neutral_index], a class anchor or the text-only one past the classes):
    transform  cos(f - g(f), t_y - t_neutral)           what L_t raises (raw anchors, losses.py)
    f_text     cos(f, t_y)     g_text  cos(g(f), t_y)   the two that L_c pulls apart (f up, g(f)
                                                        down)
and the anchors' own cosine table cos(t_i, t_j).

compute_diagnostics returns these per image and as per-class means; pictures.draw_diagnostics draws
diagnostics.png with PIL alone (the project's only drawing dependency: no matplotlib needed at run
time), one strip plot per quantity, a row per class with every image as a dot, its quartile box and
mean.
"""

import json
import math
import os

import torch
import torch.nn.functional as F

from lib.checkpoint import save_atomic
from tools.pictures import draw_diagnostics

PER_IMAGE_KEYS = ("own", "other", "margin", "transform", "f_text", "g_text")


def anchor_names(net, class_names):
    """Names of the net's anchor rows: the class names, then "neutral (text)" for a text-only
    anchor."""
    names = list(class_names)
    for i in range(len(names), net.anchors.shape[0]):
        names.append("neutral (text)" if i == net.neutral_index else f"anchor {i} (text)")
    return names


@torch.no_grad()
def _image_cosines(f, n, labels, anchors, num_classes, neutral_index):
    """Per-image cosines in float64 for one batch: f, n (B, D), labels (B,), anchors (A, D) raw.

    Returns a dict of (B,) tensors: own, other, margin = own - other, other_index and, with a
    neutral anchor, transform, f_text, g_text (NaN for neutral images).
    """
    f, n, t = f.double(), n.double(), anchors.double()
    cos = F.normalize(f, dim=-1) @ F.normalize(t[:num_classes], dim=-1).t()  # (B, K)
    own = cos.gather(1, labels[:, None])[:, 0]  # (B,)
    others = cos.scatter(1, labels[:, None], -math.inf)  # (B, K), own masked out
    other, other_index = others.max(1)  # (B,)
    # margin > 0: correct
    out = dict(own=own, other=other, margin=own - other, other_index=other_index)
    if neutral_index is not None:
        t_y = t[labels]  # (B, D)
        non_neutral = labels != neutral_index  # (B,)
        nan = torch.full_like(own, math.nan)
        out["transform"] = torch.where(
            non_neutral, F.cosine_similarity(f - n, t_y - t[neutral_index], dim=-1), nan
        )
        out["f_text"] = torch.where(non_neutral, F.cosine_similarity(f, t_y, dim=-1), nan)
        out["g_text"] = torch.where(non_neutral, F.cosine_similarity(n, t_y, dim=-1), nan)
    return out


def _mean(values):
    """Mean of the non-NaN entries of a 1-D float tensor, or None when there are none."""
    v = values[~torch.isnan(values)]
    return float(v.mean()) if len(v) else None


def compute_diagnostics(net, batches, device, class_names):
    """Cosine diagnostics of a KE2NT net over batches of (normalised images (B, 3, S, S), labels
    (B,)).

    Labels index the net's classes (0..num_classes-1). Returns a JSON-ready dict: class_names,
    anchor_names, neutral_index, images, per_class {name: {images, own, other, margin, accuracy,
    transform, f_text, g_text}} (means; accuracy = fraction with own > other, i.e. classified
    correctly), non_neutral {images, transform, f_text, g_text} (means over every non-neutral image;
    None without a neutral anchor), anchor_cosines (A, A) nested list, per_image {label, own, other,
    margin, other_index, transform, f_text, g_text} lists (None where not defined).
    """
    if len(class_names) != net.num_classes:
        raise ValueError(
            f"diagnostics: {len(class_names)} class names but the model has {net.num_classes} "
            "classes"
        )
    was_training = net.training
    net.eval()
    parts, labels_all = [], []
    with torch.no_grad():
        for x, y in batches:
            y = torch.as_tensor(y).long().cpu()
            if len(y) and (y.min() < 0 or y.max() >= net.num_classes):
                raise ValueError(
                    f"diagnostics: labels must be in 0..{net.num_classes - 1}, got "
                    f"{y.min()}..{y.max()}"
                )
            f, n, _ = net(x.to(device))  # (B, D), (B, D)
            parts.append(
                _image_cosines(
                    f.float().cpu(),
                    n.float().cpu(),
                    y,
                    net.anchors.cpu(),
                    net.num_classes,
                    net.neutral_index,
                )
            )
            labels_all.append(y)
    net.train(was_training)
    if not parts:
        raise ValueError("diagnostics: no images")
    labels = torch.cat(labels_all)  # (N,)
    per_image = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return _summarise(net, class_names, labels, per_image)


def _summarise(net, class_names, labels, per_image):
    """Per-class and overall means, the anchor table and per-image lists (see
    compute_diagnostics)."""
    has_neutral = net.neutral_index is not None
    per_class = {}
    for c, name in enumerate(class_names):
        m = labels == c
        row = dict(
            images=int(m.sum()),
            own=_mean(per_image["own"][m]),
            other=_mean(per_image["other"][m]),
            margin=_mean(per_image["margin"][m]),
            accuracy=float((per_image["own"][m] > per_image["other"][m]).double().mean())
            if m.any()
            else None,
        )
        for k in ("transform", "f_text", "g_text"):
            row[k] = _mean(per_image[k][m]) if has_neutral else None
        per_class[name] = row
    non_neutral = None
    if has_neutral:
        m = labels != net.neutral_index
        means = {k: _mean(per_image[k][m]) for k in ("transform", "f_text", "g_text")}
        non_neutral = dict(images=int(m.sum()), **means)
    t = F.normalize(net.anchors.detach().double().cpu(), dim=-1)  # (A, D)
    lists = {"label": labels.tolist(), "other_index": per_image["other_index"].tolist()}
    for k in PER_IMAGE_KEYS:
        v = per_image.get(k)
        lists[k] = (
            [None] * len(labels)
            if v is None
            else [None if math.isnan(a) else a for a in v.tolist()]
        )
    return dict(
        class_names=list(class_names),
        anchor_names=anchor_names(net, class_names),
        neutral_index=net.neutral_index,
        images=len(labels),
        per_class=per_class,
        non_neutral=non_neutral,
        anchor_cosines=(t @ t.t()).tolist(),
        per_image=lists,
    )


def run_diagnostics(net, batches, class_names, out_dir, device):
    """The --diagnostics flag: compute, write out_dir/diagnostics.json and diagnostics.png; returns
    the dict."""
    diag = compute_diagnostics(net, batches, device, class_names)
    os.makedirs(out_dir, exist_ok=True)
    save_atomic(json.dumps(diag), os.path.join(out_dir, "diagnostics.json"))
    draw_diagnostics(diag, os.path.join(out_dir, "diagnostics.png"))
    print(format_diagnostics(diag))
    print(f"diagnostics: {os.path.join(out_dir, 'diagnostics.json')} and diagnostics.png")
    return diag


def format_diagnostics(diag):
    """The per-class means and the L_t / L_c means as a text table."""

    def fmt(v):
        return "    n/a" if v is None else f"{v:7.3f}"

    lines = [
        f"{'class':<12} {'images':>6} {'own':>7} {'other':>7} {'margin':>7} {'correct':>7} "
        f"{'L_t cos':>9} {'cos(f,ty)':>9} {'cos(g,ty)':>9}"
    ]
    for name, r in diag["per_class"].items():
        correct = "    n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:6.1f}%"
        lines.append(
            f"{name[:12]:<12} {r['images']:>6} {fmt(r['own'])} {fmt(r['other'])} "
            f"{fmt(r['margin'])} "
            f"{correct} {fmt(r['transform']):>9} {fmt(r['f_text']):>9} {fmt(r['g_text']):>9}"
        )
    nn_ = diag["non_neutral"]
    if nn_ is not None:
        lines.append(
            f"non-neutral ({nn_['images']} images): cos(f - g(f), t_y - t_neutral) "
            f"{fmt(nn_['transform'])}, "
            f"cos(f, t_y) {fmt(nn_['f_text'])}, cos(g(f), t_y) {fmt(nn_['g_text'])}"
        )
    return "\n".join(lines)
