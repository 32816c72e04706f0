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


@torch.no_grad()
def run_diagnostics(net, batches, class_names, out_dir, device):
    """--diagnostics over (normalised images, labels in 0..K-1) batches, not none, and a class
    name per class: out_dir/diagnostics.json, printed. Leaves net in eval mode."""
    K, neutral = net.num_classes, net.neutral_index
    net.eval()
    seen = []
    for x, y in batches:
        y = torch.as_tensor(y).long().cpu()
        f, n, _ = net(x.to(device))  # (B, D) each
        seen.append((f.double().cpu(), n.double().cpu(), y))
    f, n, labels = (torch.cat(c) for c in zip(*seen, strict=True))  # (N, D), (N, D), (N,)
    t = net.anchors.detach().double().cpu()  # (A, D)
    cos = F.normalize(f, dim=-1) @ F.normalize(t[:K], dim=-1).T  # (N, K)
    own = cos.gather(1, labels[:, None])[:, 0]  # (N,)
    other = cos.scatter(1, labels[:, None], -math.inf).max(1).values  # own masked out
    per_image = dict(own=own, other=other, margin=own - other, correct=(own > other).double())
    nan = torch.full_like(own, math.nan)  # where a quantity is not defined
    per_image.update(transform=nan, f_text=nan, g_text=nan)
    if neutral is not None:
        keep, t_y, t_n = labels != neutral, t[labels], t[neutral]  # (N,), (N, D), (D,)
        per_image["transform"] = torch.where(keep, F.cosine_similarity(f - n, t_y - t_n), nan)
        per_image["f_text"] = torch.where(keep, F.cosine_similarity(f, t_y), nan)
        per_image["g_text"] = torch.where(keep, F.cosine_similarity(n, t_y), nan)

    def means(mask):  # {images, key: the mean over the images in mask where defined, or None}
        found = {k: v[mask].nanmean().item() for k, v in per_image.items()}
        found = {k: None if math.isnan(m) else m for k, m in found.items()}
        return dict(images=int(mask.sum()), **found)

    per_class = {name: means(labels == c) for c, name in enumerate(class_names)}
    non_neutral = None if neutral is None else means(labels != neutral)
    names = list(class_names) + ["neutral (text)"] * (len(t) - K)  # a row past K: t_neutral
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
