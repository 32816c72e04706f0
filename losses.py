"""The three KE2NT losses (Li et al., "Knowledge-Enhanced Facial Expression Recognition with
Emotional-to-Neutral Transformation", arXiv 2409.08598) as pure functions.

Notation (paper / code):
    f_i = features[i]            visual feature of image i (the "emotional" feature), (B, D)
    n_i = neutral_features[i]    g(f_i), the feature transformed to neutral,          (B, D)
    t_k = anchors[k]             RAW CLIP text feature of class k (not normalised),   (K, D)
    y_i = labels[i]              class index; "neutral" is the class neutral_index
    S   = {i : y_i != neutral}   the non-neutral samples of the batch, M = |S|
    cos(a, b) = a.b / (|a| |b|)

Every loss computes in at least float32 whatever the input dtype (fp16/bf16 inputs and autocast
regions included; float64 inputs stay float64, which the tests use). A batch with no non-neutral
sample (M = 0), or neutral_index None, gives L_t = L_c = 0 with a gradient path to f and n, never
NaN. (A class set without neutral, such as CK+ 7-class, keeps a text-only t_neutral anchor, so L_t
and L_c stay live; see model.py.) Masks, not branches: no host-device sync.

Every mean is a sum over a count. `global_sum` (default: None, this batch alone) is a reduction
hook: a function that returns the sum of a tensor over every process of a distributed run and passes
its gradient back (lib/distributed.py), so the means run over the global batch and the loss and
its gradients are the one-process ones on the concatenated batch.
"""

import torch
import torch.nn.functional as F


def _fp32(x):
    """A context that turns autocast off on x's device, so matmuls really run in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _at_least_fp32(*tensors):
    """Cast to a common float dtype of at least float32 (fp16/bf16 -> fp32; float64 stays)."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return [x.to(dtype) for x in tensors]


def _non_neutral_mask(labels, neutral_index):
    """(B,) float mask, 1 where the label is not neutral. With no neutral class (neutral_index None)
    there is no emotional-to-neutral pair to learn from, so the mask is all 0 and L_t = L_c = 0."""
    if neutral_index is None:
        return torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    return (labels != neutral_index).float()


def _global(sums, global_sum):
    """sums (..., P) summed over every process by global_sum, or as they are without one."""
    return sums if global_sum is None else global_sum(sums)


def supervised_loss(logits, labels, global_sum=None):
    """Supervised loss L_s = CE(z, y) = mean_i -log softmax(z_i)[y_i].

    logits (B, K), labels (B,) long -> scalar fp32. With global_sum the mean runs over the global
    batch: sum_i CE_i and B summed over the processes.
    """
    with _fp32(logits):
        logits = _at_least_fp32(logits)[0]
        if global_sum is None:
            return F.cross_entropy(logits, labels)
        total = F.cross_entropy(logits, labels, reduction="sum")
        count = torch.full_like(total, len(labels))  # a fill on the device, not a host copy
        total, count = global_sum(torch.stack([total, count]))
        return total / count.clamp(min=1.0)


def transformation_loss(
    features, neutral_features, anchors, labels, neutral_index, global_sum=None
):
    """Transformation loss L_t ("emotional-to-neutral transformation"):

        L_t = 1/M * sum_{i in S} [ 1 - cos(f_i - n_i, t_{y_i} - t_neutral) ]

    The text difference uses the RAW anchors (as the released code does), then the cosine.
    features, neutral_features (B, D); anchors (K, D); labels (B,) -> scalar fp32 (0 when M = 0).
    """
    with _fp32(features):
        f, n, t = _at_least_fp32(features, neutral_features, anchors)
        mask = _non_neutral_mask(labels, neutral_index).to(f.dtype)  # (B,)
        if neutral_index is None:
            delta_t = torch.zeros_like(f)  # no neutral class
        else:
            delta_t = t[labels] - t[neutral_index]  # (B, D), 0 for neutral rows
        per_sample = 1.0 - F.cosine_similarity(f - n, delta_t, dim=-1)  # (B,), finite everywhere
        total, count = _global(torch.stack([(per_sample * mask).sum(), mask.sum()]), global_sum)
        return total / count.clamp(min=1.0)


def self_contrast_loss(
    features, neutral_features, anchors, labels, neutral_index, variant="all_pairs", global_sum=None
):
    """Self-contrast loss L_c: pull f towards its class text, push its neutral n = g(f) away.

    variant="all_pairs" (default; the released code's SelfConLoss, behind the published numbers):
        L_c = 1/M^2 * sum_{i in S} sum_{j in S} [ cos(t_{y_i}, n_j) - cos(t_{y_i}, f_j) ] + 2
    computed in O(B*D): the double mean factorises into a dot product of two means,
        L_c = < mean_{i in S} t^_{y_i} , mean_{j in S} (n^_j - f^_j) > + 2      (x^ = x / |x|).
    variant="per_sample" (our reading of the abstract's "pull the facial expression representation
    closer to the textual facial expression, while pushing it farther from the neutral
    representation": each sample against its own class text):
        L_c = 1/M * sum_{i in S} [ cos(t_{y_i}, n_i) - cos(t_{y_i}, f_i) ] + 2

    features, neutral_features (B, D); anchors (K, D) raw; labels (B,) -> scalar fp32 (0 when M =
    0).
    """
    if variant not in ("all_pairs", "per_sample"):
        raise ValueError(
            f"self_contrast_loss: unknown variant {variant!r}; known: 'all_pairs', 'per_sample'"
        )
    with _fp32(features):
        f, n, t = _at_least_fp32(features, neutral_features, anchors)
        f = F.normalize(f, dim=-1)  # (B, D)
        n = F.normalize(n, dim=-1)  # (B, D)
        a = F.normalize(t, dim=-1)[labels]  # (B, D) t^_{y_i}
        mask = _non_neutral_mask(labels, neutral_index).to(f.dtype)  # (B,)
        if variant == "all_pairs":  # sums over S of t^_{y_i} and of n^_j - f^_j, and M
            sums = [(a * mask[:, None]).sum(0), ((n - f) * mask[:, None]).sum(0)]  # (D,), (D,)
        else:  # sum over S of cos(t_{y_i}, n_i) - cos(t_{y_i}, f_i), and M
            sums = [((a * (n - f)).sum(-1) * mask).sum()[None]]  # (1,)
        sums = _global(torch.cat(sums + [mask.sum()[None]]), global_sum)
        count = sums[-1]
        denom = count.clamp(min=1.0)
        has_non_neutral = (count > 0).to(f.dtype)  # the +2 only when S is non-empty
        if variant == "all_pairs":
            a_mean, d_mean = (sums[:-1] / denom).chunk(2)  # (D,), (D,)
            return (a_mean * d_mean).sum() + 2.0 * has_non_neutral
        return sums[0] / denom + 2.0 * has_non_neutral


def ke2nt_loss(
    features,
    neutral_features,
    logits,
    anchors,
    labels,
    neutral_index,
    lambdas=(1.0, 1.0, 1.0),
    contrast="all_pairs",
    global_sum=None,
):
    """Total objective L = lambda_s * L_s + lambda_t * L_t + lambda_c * L_c (released: 1, 1, 1).

    features, neutral_features (B, D); logits (B, K); anchors (K, D) raw; labels (B,); global_sum:
    the reduction hook (module docstring) -> (L, terms): terms = {"ls": L_s, "lt": L_t, "lc": L_c},
    every term computed, by its paper name, detached, for logging.
    """
    ls_w, lt_w, lc_w = lambdas
    ls = supervised_loss(logits, labels, global_sum)
    lt = transformation_loss(features, neutral_features, anchors, labels, neutral_index, global_sum)
    lc = self_contrast_loss(
        features, neutral_features, anchors, labels, neutral_index, contrast, global_sum
    )
    total = ls_w * ls + lt_w * lt + lc_w * lc
    return total, {"ls": ls.detach(), "lt": lt.detach(), "lc": lc.detach()}
