"""What KE2NT's losses did to the feature space: the cosines of a trained model (--diagnostics).

Per image (f = proj(backbone(x)), n = g(f), y its class, t_k the text anchors): own cos(f, t_y)
(L_s), other max_{k != y} cos(f, t_k), margin own - other, correct margin > 0; for non-neutral
images, given a neutral anchor: transform cos(f - n, t_y - t_neutral) (L_t), f_text cos(f, t_y)
and g_text cos(n, t_y) (L_c). Written per image, as per-class means, with the anchors' cosines.
"""

import json
import math
import os

import torch
import torch.nn.functional as F

from lib.checkpoint import save_atomic

KEYS = ("own", "other", "margin", "correct", "transform", "f_text", "g_text")


def _batch_cosines(f, n, y, t, num_classes, neutral):
    """{key: (B,) float64} for one batch, NaN where a quantity is not defined."""
    cos = F.normalize(f, dim=-1) @ F.normalize(t[:num_classes], dim=-1).t()  # (B, K)
    own = cos.gather(1, y[:, None])[:, 0]  # (B,)
    other = cos.scatter(1, y[:, None], -math.inf).max(1).values  # own masked out
    out = dict(own=own, other=other, margin=own - other, correct=(own > other).double())
    nan = torch.full_like(own, math.nan)
    if neutral is None:
        return dict(out, transform=nan, f_text=nan, g_text=nan)
    keep, t_y = y != neutral, t[y]  # (B,), (B, D)
    out["transform"] = torch.where(keep, F.cosine_similarity(f - n, t_y - t[neutral], dim=-1), nan)
    out["f_text"] = torch.where(keep, F.cosine_similarity(f, t_y, dim=-1), nan)
    out["g_text"] = torch.where(keep, F.cosine_similarity(n, t_y, dim=-1), nan)
    return out


@torch.no_grad()
def run_diagnostics(net, batches, class_names, out_dir, device):
    """--diagnostics over (normalised images, labels) batches: out_dir/diagnostics.json, printed."""
    K, neutral = net.num_classes, net.neutral_index
    if len(class_names) != K:
        raise ValueError(f"diagnostics: {len(class_names)} class names for {K} classes")
    t = net.anchors.detach().double().cpu()  # (A, D)
    was_training, parts, labels = net.training, [], []
    net.eval()
    for x, y in batches:
        y = torch.as_tensor(y).long().cpu()
        if len(y) and (y.min() < 0 or y.max() >= K):
            raise ValueError(f"diagnostics: labels must be in 0..{K - 1}, got {y.min()}..{y.max()}")
        f, n, _ = net(x.to(device))  # (B, D) each
        parts.append(_batch_cosines(f.double().cpu(), n.double().cpu(), y, t, K, neutral))
        labels.append(y)
    net.train(was_training)
    if not labels:
        raise ValueError("diagnostics: no images")
    labels = torch.cat(labels)  # (N,)
    per_image = {k: torch.cat([p[k] for p in parts]) for k in KEYS}

    def means(mask):  # {images, key: the mean over the images in mask where defined, or None}
        found = {k: v[mask].nanmean().item() for k, v in per_image.items()}
        found = {k: None if math.isnan(m) else m for k, m in found.items()}
        return dict(images=int(mask.sum()), **found)

    per_class = {name: means(labels == c) for c, name in enumerate(class_names)}
    non_neutral = None if neutral is None else means(labels != neutral)
    names = list(class_names) + [f"anchor {i} (text)" for i in range(K, len(t))]
    if neutral is not None and neutral >= K:
        names[neutral] = "neutral (text)"
    tn = F.normalize(t, dim=-1)
    lists = {k: [None if math.isnan(a) else a for a in v.tolist()] for k, v in per_image.items()}
    diag = dict(class_names=list(class_names), anchor_names=names, neutral_index=neutral)
    diag.update(images=len(labels), per_class=per_class, non_neutral=non_neutral)
    diag.update(anchor_cosines=(tn @ tn.T).tolist(), per_image=dict(label=labels.tolist(), **lists))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "diagnostics.json")
    save_atomic(json.dumps(diag), path)
    heads = ("images", "own", "other", "margin", "correct", "L_t cos", "cos(f,ty)", "cos(g,ty)")
    lines = [f"{'class':<12}" + "".join(f"{h:>10}" for h in heads)]
    rows = list(per_class.items()) + ([("non-neutral", non_neutral)] if non_neutral else [])
    for name, r in rows:
        cells = [r["images"]] + ["n/a" if r[k] is None else f"{r[k]:.3f}" for k in KEYS]
        lines.append(f"{name[:12]:<12}" + "".join(f"{c:>10}" for c in cells))
    print("\n".join(lines) + f"\ndiagnostics: {path}")
    return diag
