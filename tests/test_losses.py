"""losses.py against direct transcriptions of the equations (and of the released code) in
float64."""

import math
import warnings

import numpy as np
import pytest
import torch

import losses
import model

NEUTRAL = 6  # RAF-DB order: surprise, fear, disgust, happiness, sadness, anger, neutral


def _batch(B=10, D=16, K=7, seed=0, labels=None, dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, generator=g, dtype=dtype)
    n = torch.randn(B, D, generator=g, dtype=dtype)
    t = torch.randn(K, D, generator=g, dtype=dtype) * 3 + 1  # raw, unnormalised anchors
    y = torch.randint(0, K, (B,), generator=g) if labels is None else torch.tensor(labels)
    if requires_grad:
        f.requires_grad_(True)
        n.requires_grad_(True)
    return f, n, t, y


# ---- direct transcriptions (written from the equations / the released utils/loss.py) ----------


def ref_logits(f, t, s):
    out = torch.empty(f.shape[0], t.shape[0], dtype=f.dtype)
    for i in range(f.shape[0]):
        for k in range(t.shape[0]):
            out[i, k] = s * torch.dot(f[i], t[k]) / (f[i].norm() * t[k].norm())
    return out


def ref_transformation(f, n, t, y, neutral):
    """Released code: idx = non-neutral; delta_f, delta_t normalised; mean of 1 - cos."""
    idx = torch.where(y != neutral)[0]
    delta_f = (f - n)[idx]
    delta_t = (t[y] - t[neutral].repeat(len(y), 1))[idx]
    delta_f = delta_f / delta_f.norm(dim=-1, keepdim=True)
    delta_t = delta_t / delta_t.norm(dim=-1, keepdim=True)
    return (
        1.0 - (delta_f * delta_t).sum(-1) / (delta_f.norm(dim=-1) * delta_t.norm(dim=-1))
    ).mean()


def ref_self_contrast_all_pairs(f, n, t, y, neutral):
    """Released SelfConLoss(anchor=t[y][idx], pos=f[idx], neg=n[idx]): O(B^2) pair matrix."""
    idx = torch.where(y != neutral)[0]
    anchor, pos, neg = t[y][idx], f[idx], n[idx]
    anchor = anchor / anchor.norm(dim=-1, keepdim=True)
    pos = pos / pos.norm(dim=-1, keepdim=True)
    neg = neg / neg.norm(dim=-1, keepdim=True)
    dp = anchor @ pos.t()  # (M, M)
    dn = anchor @ neg.t()  # (M, M)
    return (dn - dp + 2).mean()


def ref_self_contrast_per_sample(f, n, t, y, neutral):
    terms = []
    for i in range(len(y)):
        if y[i] == neutral:
            continue
        a = t[y[i]]
        cos_n = torch.dot(a, n[i]) / (a.norm() * n[i].norm())
        cos_f = torch.dot(a, f[i]) / (a.norm() * f[i].norm())
        terms.append(cos_n - cos_f + 2)
    return torch.stack(terms).mean()


def _grads(value, *inputs):
    return torch.autograd.grad(value, inputs)


# ---- values and gradients vs transcriptions --------------------------------------------------


def test_similarity_logits_matches_scaled_cosine():
    f, _, t, _ = _batch(B=5, requires_grad=False)
    got = model.similarity_logits(f, t, 100.0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref_logits(f, t, 100.0), rtol=1e-12, atol=1e-10)


def test_supervised_loss_is_mean_negative_log_softmax():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 7, generator=g, dtype=torch.float64) * 10
    y = torch.tensor([0, 6, 3, 3, 1, 5])
    ref = -sum(z[i, y[i]] - torch.log(torch.exp(z[i]).sum()) for i in range(6)) / 6
    torch.testing.assert_close(losses.supervised_loss(z, y), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformation_loss_value_and_gradients(seed):
    f, n, t, y = _batch(seed=seed, labels=[0, 6, 1, 2, 6, 3, 4, 5, 0, 6])
    got = losses.transformation_loss(f, n, t, y, NEUTRAL)
    ref = ref_transformation(f, n, t, y, NEUTRAL)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(got, f, n), _grads(ref, f, n), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_contrast_all_pairs_matches_released_pair_matrix(seed):
    f, n, t, y = _batch(B=12, seed=seed)
    y[0] = NEUTRAL  # at least one neutral sample to exclude
    got = losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="all_pairs")
    ref = ref_self_contrast_all_pairs(f, n, t, y, NEUTRAL)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(got, f, n), _grads(ref, f, n), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_self_contrast_per_sample_matches_loop(seed):
    f, n, t, y = _batch(B=9, seed=seed, labels=[6, 0, 1, 2, 3, 4, 5, 6, 2])
    got = losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="per_sample")
    ref = ref_self_contrast_per_sample(f, n, t, y, NEUTRAL)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(got, f, n), _grads(ref, f, n), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["transformation", "all_pairs", "per_sample"])
def test_gradcheck(name):
    f, n, t, y = _batch(B=5, D=6, K=7, seed=3, labels=[0, 6, 2, 5, 2])

    def fn(f, n):
        if name == "transformation":
            return losses.transformation_loss(f, n, t, y, NEUTRAL)
        return losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant=name)

    assert torch.autograd.gradcheck(fn, (f, n))


def test_variants_agree_when_all_non_neutral_samples_share_a_class():
    # With one anchor a for all i, mean_i mean_j a.(n_j - f_j) = mean_j a.(n_j - f_j): the two
    # agree.
    f, n, t, y = _batch(B=8, seed=4, labels=[3, 3, 6, 3, 3, 6, 3, 3])
    a = losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="all_pairs")
    b = losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="per_sample")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    f, n, t, y = _batch(B=8, seed=4, labels=[3, 0, 6, 1, 3, 6, 2, 5])
    a = losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="all_pairs")
    b = losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="per_sample")
    assert abs(a.item() - b.item()) > 1e-3  # mixed classes: they are different losses


def test_unknown_variant_raises():
    f, n, t, y = _batch(B=3)
    with pytest.raises(ValueError, match="per_sample"):
        losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="pairs")


# ---- neutral exclusion and empty batches ------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda f, n, t, y: losses.transformation_loss(f, n, t, y, NEUTRAL),
        lambda f, n, t, y: losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="all_pairs"),
        lambda f, n, t, y: losses.self_contrast_loss(f, n, t, y, NEUTRAL, variant="per_sample"),
    ],
)
def test_neutral_samples_do_not_enter(fn):
    f, n, t, y = _batch(B=6, seed=5, labels=[6, 1, 6, 2, 0, 4])
    base = fn(f, n, t, y)
    gf, gn = _grads(base, f, n)
    neutral_rows = y == NEUTRAL
    assert gf[neutral_rows].abs().max() == 0 and gn[neutral_rows].abs().max() == 0
    assert gf[~neutral_rows].abs().max() > 0
    f2, n2 = f.detach().clone(), n.detach().clone()
    f2[neutral_rows] = torch.randn_like(f2[neutral_rows]) * 50
    n2[neutral_rows] = 0.0
    torch.testing.assert_close(fn(f2, n2, t, y), base.detach(), rtol=1e-12, atol=1e-12)


# its warning is test_neutral_index_none_is_said_once's
@pytest.mark.filterwarnings("ignore:neutral_index=None")
@pytest.mark.parametrize("neutral_index", [NEUTRAL, None])
def test_no_non_neutral_sample_gives_zero_with_gradient_path(neutral_index):
    labels = [6, 6, 6, 6] if neutral_index is not None else [0, 1, 2, 3]
    f, n, t, y = _batch(B=4, seed=6, labels=labels, dtype=torch.float32)
    with torch.no_grad():
        n[1] = f[1]  # f - n = 0 exactly for one row: still no NaN
    logits = model.similarity_logits(f, t, 100.0)
    total, parts = losses.ke2nt_loss(f, n, logits, t, y, neutral_index)
    assert parts["lt"].item() == 0.0 and parts["lc"].item() == 0.0
    for contrast in ("all_pairs", "per_sample"):
        lc = losses.self_contrast_loss(f, n, t, y, neutral_index, variant=contrast)
        lt = losses.transformation_loss(f, n, t, y, neutral_index)
        assert lc.item() == 0.0 and lt.item() == 0.0
        gf, gn = _grads(lt + lc, f, n)  # a graph exists: backward works
        assert torch.isfinite(gf).all() and torch.isfinite(gn).all()
        assert gf.abs().max() == 0 and gn.abs().max() == 0
    total.backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(n.grad).all()


# ---- mistakes, answered where they are made ---------------------------------------------------


def _each_loss(f, n, t, y, neutral):
    """The losses that take neutral_index, alone and in the total."""
    z = model.similarity_logits(f, t, 100.0)
    return [
        lambda: losses.transformation_loss(f, n, t, y, neutral),
        lambda: losses.self_contrast_loss(f, n, t, y, neutral, variant="all_pairs"),
        lambda: losses.self_contrast_loss(f, n, t, y, neutral, variant="per_sample"),
        lambda: losses.ke2nt_loss(f, n, z, t, y, neutral),
    ]


@pytest.mark.parametrize("neutral", [-1, 7, "neutral", True, 6.0, torch.tensor(6)])
def test_a_neutral_index_that_is_not_a_row_of_the_anchors_is_refused(neutral):
    f, n, t, y = _batch(B=6, seed=10)  # K = 7 anchors
    for call in _each_loss(f, n, t, y, neutral):
        with pytest.raises(ValueError, match=r"neutral_index .*an int in 0\.\.6"):
            call()
    with_int, with_numpy = (_each_loss(f, n, t, y, i) for i in (NEUTRAL, np.int64(NEUTRAL)))
    for a, b in zip(with_int, with_numpy, strict=True):  # a numpy int is an int
        torch.testing.assert_close(b(), a(), rtol=0, atol=0)


def test_neutral_index_none_is_said_once():
    f, n, t, y = _batch(B=6, seed=11)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("default")  # Python's own filter: once per place
        for _ in range(2):
            for call in _each_loss(f, n, t, y, None):
                call()
    said = [str(w.message) for w in said if issubclass(w.category, UserWarning)]
    assert len(said) == 1 and "neutral_index=None, so L_t and L_c are 0" in said[0], said


@pytest.mark.parametrize("label", [-100, -1, -7, 7])
def test_a_label_outside_the_classes_is_refused(label):
    # -100: F.cross_entropy's ignore_index, skipped there; -1 and -7 index the anchors from the end
    f, n, t, y = _batch(B=6, seed=12, labels=[0, 6, 2, label, 1, 3])
    z = model.similarity_logits(f, t, 100.0)
    for call in [lambda: losses.supervised_loss(z, y), *_each_loss(f, n, t, y, NEUTRAL)]:
        with pytest.raises(ValueError, match=r"labels must be class indices 0\.\.6"):
            call()


# ---- precision, total ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    f, n, t, y = _batch(B=8, seed=7, dtype=torch.float32, requires_grad=False)
    y[0] = NEUTRAL
    fh, nh, th = f.to(dtype), n.to(dtype), t.to(dtype)
    f32, n32, t32 = fh.float(), nh.float(), th.float()  # the same values, in float32
    logits = model.similarity_logits(fh, th, 100.0)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model.similarity_logits(f32, t32, 100.0), rtol=0, atol=0)
    pairs = [
        (
            losses.transformation_loss(fh, nh, th, y, NEUTRAL),
            ref_transformation(f32, n32, t32, y, NEUTRAL),
        ),
        (
            losses.self_contrast_loss(fh, nh, th, y, NEUTRAL),
            ref_self_contrast_all_pairs(f32, n32, t32, y, NEUTRAL),
        ),
        (
            losses.supervised_loss(logits.to(dtype), y),
            torch.nn.functional.cross_entropy(logits.to(dtype).float(), y),
        ),
    ]
    for got, ref in pairs:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_autocast_region_still_float32():
    f, n, t, y = _batch(B=8, seed=8, dtype=torch.float32, requires_grad=False)
    plain = model.similarity_logits(f, t, 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.similarity_logits(f, t, 100.0)
        lc = losses.self_contrast_loss(f, n, t, y, NEUTRAL)
    assert inside.dtype == torch.float32 and lc.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=1e-5)  # bf16 would be off by ~1e-1


def test_ke2nt_loss_is_weighted_sum_of_parts():
    f, n, t, y = _batch(B=10, seed=9)
    y[1] = NEUTRAL
    z = model.similarity_logits(f, t, 100.0)
    lam = (0.5, 2.0, 3.0)
    total, parts = losses.ke2nt_loss(f, n, z, t, y, NEUTRAL, lambdas=lam, contrast="per_sample")
    assert sorted(parts) == ["lc", "ls", "lt"]  # every term, by its paper name
    ls = torch.nn.functional.cross_entropy(ref_logits(f, t, 100.0), y)
    lt = ref_transformation(f, n, t, y, NEUTRAL)
    lc = ref_self_contrast_per_sample(f, n, t, y, NEUTRAL)
    torch.testing.assert_close(parts["ls"], ls.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["lt"], lt.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["lc"], lc.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(total, 0.5 * ls + 2.0 * lt + 3.0 * lc, rtol=1e-10, atol=1e-10)
    assert not parts["ls"].requires_grad and total.requires_grad
    default_total, _ = losses.ke2nt_loss(f, n, z, t, y, NEUTRAL)
    ref_default = ls + lt + ref_self_contrast_all_pairs(f, n, t, y, NEUTRAL)
    torch.testing.assert_close(default_total, ref_default, rtol=1e-10, atol=1e-10)
    assert math.isfinite(total.item())
