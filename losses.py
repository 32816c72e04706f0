"""The three KE2NT losses (Li et al., "Knowledge-Enhanced Facial Expression Recognition with
Emotional-to-Neutral Transformation", arXiv 2409.08598) as pure functions.

Notation (paper / code):
    f_i = features[i]            visual feature of image i (the "emotional" feature), (B, D)
    n_i = neutral_features[i]    g(f_i), the feature transformed to neutral,          (B, D)
    t_k = anchors[k]             RAW CLIP text feature of class k (not normalised),   (K, D)
    y_i = labels[i]              class index in 0..K-1
    t_neutral = anchors[neutral_index]: a class's row, or a text-only row past them (CK+ 7-class)
    S   = {i : y_i != neutral}   the non-neutral samples of the batch, M = |S|
    cos(a, b) = a.b / (|a| |b|),  x^ = x / |x|

Each loss computes in at least float32 (fp16/bf16 inputs, autocast regions; float64 stays). M = 0
gives L_t = L_c = 0 with a gradient path to f and n, never NaN; so does neutral_index None, said
once (a UserWarning). Masks, not branches: no host-device sync. A label outside 0..K-1 (an ignored
-100, a -1) raises a ValueError; on CUDA it trips a device-side assert instead, which stops the run.

Every mean is a sum over a count, taken in _mean. `global_sum` (None: this batch alone), a function
summing a tensor over the processes with its gradient (lib/distributed.py's GlobalSum), makes each
a mean over the global batch of a torchrun run.
"""

import contextlib
import functools
import numbers
import warnings

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def _float32(*tensors):
    """The tensors in one float dtype, at least float32, autocast off: matmuls really run in it."""
    dtype = functools.reduce(torch.promote_types, [x.dtype for x in tensors], torch.float32)
    with torch.autocast(tensors[0].device.type, enabled=False):
        yield [x.to(dtype) for x in tensors]


def _mean(x, mask, global_sum):
    """1/M sum_{i in S} x_i with S = {i : mask_i = 1}, M = |S|, over the global batch: x (B,) or
    (B, C), mask (B,) -> () or (C,); 0 when M = 0. The sums and M take one global_sum call."""
    sums = torch.cat([(mask @ x).reshape(-1), mask.sum()[None]])  # (C + 1,)
    sums = sums if global_sum is None else global_sum(sums)
    return (sums[:-1] / sums[-1].clamp(min=1.0)).view(x.shape[1:])


def _of_class(x, labels, dim):
    """Each sample's class entry: rows y_i of x (K, D) for dim 0, z_{i, y_i} of x (B, K) for dim 1.
    Unlike x[labels], this refuses every label outside 0..K-1, negative ones included."""
    try:
        return x.index_select(0, labels) if dim == 0 else x.gather(1, labels[:, None])[:, 0]
    except (IndexError, RuntimeError) as err:
        raise ValueError(
            f"labels must be class indices 0..{x.shape[dim] - 1}: drop ignored samples (-100) first"
        ) from err


def _non_neutral(labels, neutral_index, rows):
    """(B,) float mask of S, 1 where y_i != neutral_index, which must be a row of the anchors. The
    warning has one place, whichever loss says it, so Python's default filter shows it once."""
    if neutral_index is None:  # no emotional-to-neutral pair to learn from
        warnings.warn(
            "neutral_index=None, so L_t and L_c are 0 for every batch; pass the row of a t_neutral "
            "anchor (text_prompts.anchors_for appends one) to train them",
            stacklevel=1,
        )
        return torch.zeros(labels.shape, device=labels.device)
    is_int = isinstance(neutral_index, numbers.Integral) and not isinstance(neutral_index, bool)
    if not (is_int and 0 <= neutral_index < rows):
        raise ValueError(
            f"neutral_index {neutral_index!r}: the row of t_neutral in the anchors, an int in "
            f"0..{rows - 1} (e.g. class_names.index('neutral')), or None"
        )
    return (labels != neutral_index).float()


def supervised_loss(logits, labels, global_sum=None):
    """Supervised loss L_s = CE(z, y) = 1/B * sum_i -log softmax(z_i)[y_i], written out (as
    F.cross_entropy would skip a label -100): logits z (B, K), labels (B,) -> scalar fp32."""
    with _float32(logits) as (z,):
        nll = -_of_class(F.log_softmax(z, dim=-1), labels, dim=1)  # (B,)
        return _mean(nll, torch.ones_like(nll), global_sum)


def transformation_loss(
    features, neutral_features, anchors, labels, neutral_index, global_sum=None
):
    """Transformation loss L_t ("emotional-to-neutral transformation"):

        L_t = 1/M * sum_{i in S} [ 1 - cos(f_i - n_i, t_{y_i} - t_neutral) ]

    The text difference uses the RAW anchors (as the released code does), then the cosine.
    features, neutral_features (B, D); anchors (K, D); labels (B,) -> scalar fp32."""
    with _float32(features, neutral_features, anchors) as (f, n, t):
        s = _non_neutral(labels, neutral_index, len(t)).to(f.dtype)  # (B,) 1 on S
        t_y = _of_class(t, labels, dim=0)  # (B, D)
        t_neutral = t_y if neutral_index is None else t[neutral_index]  # S is empty without one
        return _mean(1.0 - F.cosine_similarity(f - n, t_y - t_neutral, dim=-1), s, global_sum)


def self_contrast_loss(
    features, neutral_features, anchors, labels, neutral_index, variant="all_pairs", global_sum=None
):
    """Self-contrast loss L_c: pull f towards its class text, push its neutral n = g(f) away.

    variant="all_pairs" (default; the released code's SelfConLoss, behind the published numbers):
        L_c = 1/M^2 * sum_{i in S} sum_{j in S} [ cos(t_{y_i}, n_j) - cos(t_{y_i}, f_j) ] + 2
            = < mean_{i in S} t^_{y_i} , mean_{j in S} (n^_j - f^_j) > + 2
    computed in the second, equal form: O(B*D), and under torchrun no all-gather of f and n.
    variant="per_sample" (our reading of the abstract: f pulled towards the text, pushed from its
    neutral representation), each sample against its own class text:
        L_c = 1/M * sum_{i in S} [ cos(t_{y_i}, n_i) - cos(t_{y_i}, f_i) ] + 2

    features, neutral_features (B, D); anchors (K, D) raw; labels (B,) -> scalar fp32."""
    if variant not in ("all_pairs", "per_sample"):
        raise ValueError(f"self_contrast_loss: variant {variant!r}: 'all_pairs' or 'per_sample'")
    with _float32(features, neutral_features, anchors) as (f, n, t):
        s = _non_neutral(labels, neutral_index, len(t)).to(f.dtype)  # (B,) 1 on S
        t_y = F.normalize(_of_class(t, labels, dim=0), dim=-1)  # (B, D) t^_{y_i}
        f, n = F.normalize(f, dim=-1), F.normalize(n, dim=-1)  # (B, D) f^, n^
        if variant == "per_sample":
            return _mean((t_y * (n - f)).sum(-1) + 2.0, s, global_sum)
        two = torch.full_like(s[:, None], 2.0)  # (B, 1): + 2 as mean_S 2, so 0 when M = 0
        means = _mean(torch.cat([t_y, n - f, two], dim=-1), s, global_sum)  # (2 D + 1,)
        t_mean, d_mean, two = means.split(f.shape[1])  # (D,), (D,), (1,)
        return t_mean @ d_mean + two[0]


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
    """Total objective L = lambda_s * L_s + lambda_t * L_t + lambda_c * L_c (released: 1, 1, 1) ->
    (L, {"ls": L_s, "lt": L_t, "lc": L_c}): every term, by its paper name, detached for logging."""
    lambda_s, lambda_t, lambda_c = lambdas
    ls = supervised_loss(logits, labels, global_sum)
    lt = transformation_loss(features, neutral_features, anchors, labels, neutral_index, global_sum)
    lc = self_contrast_loss(
        features, neutral_features, anchors, labels, neutral_index, contrast, global_sum
    )
    total = lambda_s * ls + lambda_t * lt + lambda_c * lc
    return total, {"ls": ls.detach(), "lt": lt.detach(), "lc": lc.detach()}
