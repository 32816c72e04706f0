"""tools/diagnostics.py, tools/cam.py and tools/pictures.py: the numbers in diagnostics.json
against a float64 hand computation, Grad-CAM against the formula computed by hand with autograd,
every image gets its overlay, and confusion.png's cells."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from model import KE2NT, build_backbone
from tools.cam import grad_cam, overlay_names, run_cam, save_cam_overlay
from tools.diagnostics import run_diagnostics
from tools.pictures import draw_confusion_png

NAMES7 = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


class TinyBackbone(nn.Module):
    """conv -> "layer4" conv -> average pool: (B, 3, S, S) -> (B, 24); layer4 is what Grad-CAM
    hooks."""

    out_dim = 24

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(8, 24, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        return self.layer4(self.stem(x)).mean(dim=(2, 3))  # (B, 24)


def _tiny_net(num_anchors, neutral, classes, dim=16, seed=0):
    torch.manual_seed(seed)  # dim != 24: a Linear proj is learnt, as for swin_t
    return KE2NT(TinyBackbone(), torch.randn(num_anchors, dim), classes, neutral).eval()


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _hand_diagnostics(net, x, y):
    """Per-image quantities with float64 copies of the net, one image at a time, by the
    definitions."""
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        f = net64.proj(net64.backbone(x.double()))  # (N, D)
        n = net64.neutral_transform(f)  # (N, D)
    t, K, neutral = net64.anchors, net.num_classes, net.neutral_index
    rows = []
    for i in range(len(y)):
        c = int(y[i])
        own = _cos(f[i], t[c])
        other = max(_cos(f[i], t[k]) for k in range(K) if k != c)
        row = dict(
            label=c,
            own=own,
            other=other,
            margin=own - other,
            transform=None,
            f_text=None,
            g_text=None,
        )
        if neutral is not None and c != neutral:
            row.update(
                transform=_cos(f[i] - n[i], t[c] - t[neutral]),
                f_text=_cos(f[i], t[c]),
                g_text=_cos(n[i], t[c]),
            )
        rows.append(row)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@pytest.mark.parametrize("case", ["neutral_class", "text_only_neutral", "no_neutral"])
def test_diagnostics_json_matches_hand_computation(tmp_path, capsys, case):
    if case == "neutral_class":  # 7 classes with neutral (index 6) among them
        net, names = _tiny_net(7, 6, 7), NAMES7
    elif case == "text_only_neutral":  # 6 classes, neutral only as the 7th (text) anchor
        net, names = _tiny_net(7, 6, 6, seed=1), NAMES7[:6]
    else:
        net, names = _tiny_net(6, None, 6, seed=2), NAMES7[:6]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 3, 16, 16, generator=g)
    y = torch.arange(40) % len(names)
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    run_diagnostics(net, batches, names, str(tmp_path), "cpu")
    printed = capsys.readouterr().out
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    hand = _hand_diagnostics(net, x, y)

    def close(a, b):
        return (a is None and b is None) or math.isclose(a, b, abs_tol=1e-5)

    for key in ("own", "other", "margin", "transform", "f_text", "g_text"):
        assert all(close(a, r[key]) for a, r in zip(diag["per_image"][key], hand, strict=True)), key
    assert diag["per_image"]["label"] == y.tolist()
    with torch.no_grad():
        predicted = net.classify(x).argmax(1)
    for c, name in enumerate(names):
        rows = [r for r in hand if r["label"] == c]
        got = diag["per_class"][name]
        assert got["images"] == len(rows)
        for key in ("own", "other", "margin", "transform", "f_text", "g_text"):
            assert close(got[key], _mean([r[key] for r in rows])), (name, key)
        assert math.isclose(got["correct"], float((predicted[y == c] == c).double().mean()))
        assert f"{name[:12]:<12}{len(rows):>10}" in printed
    if case == "no_neutral":
        assert diag["non_neutral"] is None and diag["neutral_index"] is None
    else:
        rows = [r for r in hand if r["label"] != 6]
        assert (
            diag["non_neutral"]["images"]
            == len(rows)
            == (40 if case == "text_only_neutral" else 35)
        )
        for key in ("transform", "f_text", "g_text"):
            assert close(diag["non_neutral"][key], _mean([r[key] for r in rows])), key
    t = net.anchors.double()
    assert len(diag["anchor_cosines"]) == len(diag["anchor_names"]) == len(t)
    for i in range(len(t)):
        for j in range(len(t)):
            assert math.isclose(diag["anchor_cosines"][i][j], _cos(t[i], t[j]), abs_tol=1e-9)
    if case == "text_only_neutral":
        assert diag["anchor_names"][-1] == "neutral (text)"


def _hand_cam(features_to_act, act_to_logits, x, channels_last):
    """Grad-CAM by the formula: A = last stage (requires grad), z = head(A), c = argmax z,
    w = mean_ij dz_c/dA, cam = relu(sum_ch w A), upsampled bilinearly, divided by its max."""
    act = features_to_act(x).detach().requires_grad_(True)
    logits = act_to_logits(act)
    chosen = logits.argmax(1)
    cams = []
    for b in range(len(x)):
        (grad,) = torch.autograd.grad(logits[b, chosen[b]], act, retain_graph=True)
        a, gr = act[b].detach(), grad[b]
        if channels_last:
            a, gr = a.permute(2, 0, 1), gr.permute(2, 0, 1)  # (C, h, w)
        w = gr.mean(dim=(1, 2))  # (C,)
        cam = torch.relu((w[:, None, None] * a).sum(0))  # (h, w)
        up = F.interpolate(
            cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False
        )[0, 0]
        cams.append(up / up.max())
    return torch.stack(cams), chosen


def _resnet_split(net):
    bb = net.backbone

    def stem(x):
        return bb.layer3(bb.layer2(bb.layer1(bb.maxpool(bb.relu(bb.bn1(bb.conv1(x)))))))

    return (lambda x: bb.layer4(stem(x))), (
        lambda a: net.similarity(net.proj(bb.avgpool(a).flatten(1)))
    )


def _swin_face_split(net):
    trunk = net.backbone.trunk

    def before(x):
        return trunk.features[-1](trunk.features[:-1](x))

    def after(a):  # a (B, h, w, C) channels last
        pooled = trunk.avgpool(trunk.permute(trunk.norm(a))).flatten(1)
        return net.similarity(net.proj(net.backbone.feature(pooled)))

    return before, after


@pytest.mark.parametrize("backbone,size", [("resnet18", 64), ("swin_t_face", 112)])
def test_grad_cam_equals_the_formula(backbone, size):
    torch.manual_seed(0)
    net = KE2NT(build_backbone(backbone), torch.randn(7, 512), 7, 6).eval()
    # one Swin image keeps it quick
    x = torch.randn(2 if backbone == "resnet18" else 1, 3, size, size)
    cams, chosen = grad_cam(net, x)
    assert cams.shape == (len(x), size, size) and chosen.shape == (len(x),)
    before, after = (_resnet_split if backbone == "resnet18" else _swin_face_split)(net)
    expected, expected_class = _hand_cam(before, after, x, channels_last=backbone != "resnet18")
    assert torch.equal(chosen, expected_class)
    torch.testing.assert_close(cams, expected, atol=1e-4, rtol=1e-4)
    assert float(cams.min()) >= 0 and math.isclose(
        float(cams.amax(dim=(1, 2)).min()), 1.0, abs_tol=1e-6
    )


class QuadrantBackbone(nn.Module):
    """Sees only the top-left quadrant: layer4 = bias-free 1x1 conv + ReLU on the masked image, then
    the average pool: (B, 3, 32, 32) -> (B, 16)."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), nn.ReLU())
        self.register_buffer("mask", torch.zeros(1, 1, 32, 32))
        self.mask[..., :16, :16] = 1

    def forward(self, x):
        return self.layer4(x * self.mask).mean(dim=(2, 3))  # (B, 16)


def test_grad_cam_is_zero_outside_the_only_quadrant_the_model_sees():
    """Known answer: the last stage is 0 outside the top-left quadrant, so the CAM is 0 there and
    its peak (1) lies inside. (With proj = Identity the cosine logit is scale-invariant in f, so the
    map before the ReLU has spatial mean 0: inside the quadrant it must have a positive part.)"""
    torch.manual_seed(0)
    net = KE2NT(QuadrantBackbone(), torch.randn(7, 16), 7, 6).eval()
    x = torch.randn(3, 3, 32, 32)
    cams, _ = grad_cam(net, x)  # (3, 32, 32)
    for cam in cams:
        peak = divmod(int(cam.argmax()), 32)
        assert (
            peak[0] < 16 and peak[1] < 16 and math.isclose(float(cam.max()), 1.0, abs_tol=1e-6)
        ), peak
        assert float(cam[:, 16:].max()) == 0.0 and float(cam[16:, :].max()) == 0.0


def test_every_image_gets_its_overlay(tmp_path):
    net = _tiny_net(7, 6, 7)
    paths = ["photos/a/face.jpg", "photos/b/face.png", "photos/smile.jpg"]  # two stems repeat
    names = overlay_names(paths)
    assert names == ["a__face_cam.png", "b__face_cam.png", "smile_cam.png"]
    assert overlay_names(["one/face.jpg"]) == ["face_cam.png"]
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    written = run_cam(
        net, images, names, (0.5,) * 3, (0.5,) * 3, str(tmp_path / "predictions"), "cpu", NAMES7
    )
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(names)
    for path in written:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (128, 148)  # upscaled, a caption strip below


def test_overlay_blend(tmp_path):
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)  # 128 px: not resized
    cam = torch.zeros(128, 128)
    cam[0, 0], cam[0, 1] = 1.0, 0.5
    save_cam_overlay(image, cam, str(tmp_path / "o.png"), "Grad-CAM: anger")
    out = torch.from_numpy(np.array(Image.open(tmp_path / "o.png"))).permute(2, 0, 1).float()
    assert out.shape == (3, 148, 128)  # a caption strip below
    red, x = torch.tensor([255.0, 0.0, 0.0]), image.float()
    # by the formula out = image (1 - a cam) + a cam red, a = 0.5
    torch.testing.assert_close(out[:, 1, 1], x[:, 1, 1], atol=0, rtol=0)  # cam 0: unchanged
    torch.testing.assert_close(out[:, 0, 0], (0.5 * x[:, 0, 0] + 0.5 * red).round(), atol=1, rtol=0)
    torch.testing.assert_close(
        out[:, 0, 1], (0.75 * x[:, 0, 1] + 0.25 * red).round(), atol=1, rtol=0
    )


def test_confusion_png_cells_are_shaded_by_the_row_fraction(tmp_path):
    path = str(tmp_path / "confusion.png")
    draw_confusion_png([[3, 1], [0, 4]], ["anger", "happiness"], path)
    with Image.open(path) as im:
        assert im.size == (110 + 2 * 64 + 20, 60 + 2 * 64 + 40)

        def corner(i, j):  # a pixel inside cell (i, j), away from the numbers
            return im.getpixel((110 + j * 64 + 60, 60 + i * 64 + 4))

        # row 0: 3/4 and 1/4; row 1: 0 and 1 (shade 255 - 215 v, 255 - 160 v, 255)
        assert corner(0, 0) == (int(255 - 215 * 0.75), int(255 - 160 * 0.75), 255)
        assert corner(0, 1) == (int(255 - 215 * 0.25), int(255 - 160 * 0.25), 255)
        assert corner(1, 0) == (255, 255, 255) and corner(1, 1) == (40, 95, 255)
