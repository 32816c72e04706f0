"""model.py: backbones, checkpoint layouts, the face Swin-T against timm's Swin, the KE2NT
module."""

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import losses
import model


def _save(obj, tmp_path, name):
    path = os.path.join(tmp_path, name)
    torch.save(obj, path)
    return path


def _randomize_(module, seed):
    """Give every parameter and BN statistic non-trivial values (LayerNorm 1/0 would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.3)
                + (1.0 if name.endswith("weight") and p.dim() == 1 else 0.0)
            )
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


# ---- names, sizes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swin_face():
    """One face Swin-T for the module (building one costs ~2 s on 2 cores, mostly weight init)."""
    return model.build_backbone("swin_t_face")


def test_parameter_counts_from_the_issue(swin_face):
    assert sum(p.numel() for p in model.build_backbone("resnet18").parameters()) == 11_176_512
    assert round(sum(p.numel() for p in swin_face.parameters()) / 1e6, 2) == 28.50
    assert swin_face.out_dim == 512


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError) as e:
        model.build_backbone("resnet50")
    for name in ("resnet18", "swin_t_face", "swin_t"):
        assert name in str(e.value)


def test_backbone_table():
    assert model.BACKBONES["resnet18"]["input_size"] is None
    assert model.BACKBONES["swin_t_face"]["input_size"] == 112
    assert model.BACKBONES["swin_t_face"]["mean"] == (0.5, 0.5, 0.5)
    assert model.BACKBONES["swin_t"]["out_dim"] == 768


# ---- ResNet-18 checkpoint layouts ---------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_source():
    # a classifier of another size, skipped on load
    net = torchvision.models.resnet18(num_classes=100)
    _randomize_(net, 0)
    return net.eval()


@pytest.mark.parametrize("layout", ["msceleb", "msceleb_module", "imagenet", "no_batch_counter"])
def test_resnet18_checkpoint_layouts(resnet_source, tmp_path, capsys, layout):
    sd = resnet_source.state_dict()
    if layout == "msceleb":
        obj = {"state_dict": sd, "epoch": 3}
    elif layout == "msceleb_module":
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    elif layout == "imagenet":
        obj = dict(sd)
    else:  # checkpoints from torch < 0.4.1 carry no num_batches_tracked
        obj = {"state_dict": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}}
    net = model.build_backbone("resnet18", weights=_save(obj, tmp_path, "w.pth")).eval()
    printed = capsys.readouterr().out
    assert "fc.weight" in printed and "fc.bias" in printed and "skipped 2 keys" in printed
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = torch.flatten(nn.Sequential(*list(resnet_source.children())[:-1])(x), 1)
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)
    assert model.load_backbone_weights(model.build_backbone("resnet18"), "resnet18", obj) == [
        "fc.weight",
        "fc.bias",
    ]


def test_resnet18_wrong_layout_names_missing_and_unexpected(resnet_source, tmp_path):
    sd = {k: v for k, v in resnet_source.state_dict().items() if not k.startswith("layer4.1.")}
    sd["backbone.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as e:
        model.build_backbone("resnet18", weights=_save(sd, tmp_path, "bad.pth"))
    msg = str(e.value)
    assert "bad.pth" in msg and "layer4.1.conv1.weight" in msg and "backbone.extra.weight" in msg


def test_resnet18_shape_mismatch_names_key(resnet_source, tmp_path):
    sd = dict(resnet_source.state_dict())
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match="conv1.weight"):
        model.build_backbone("resnet18", weights=_save(sd, tmp_path, "shape.pth"))


class _NotATensor:  # pickled objects are refused by weights_only loading
    pass


def test_checkpoint_with_pickled_object_is_refused(resnet_source, tmp_path):
    path = _save(
        {"state_dict": resnet_source.state_dict(), "extra": _NotATensor()}, tmp_path, "p.pth"
    )
    with pytest.raises(ValueError, match="p.pth"):
        model.build_backbone("resnet18", weights=path)
    with pytest.raises(ValueError, match="nowhere.pth: cannot read"):
        model.build_backbone("resnet18", weights=os.path.join(tmp_path, "nowhere.pth"))
    for name, content in (("notes.pth", b"epochs: 50\nlr: 2e-3\n"), ("empty.pth", b"")):
        with open(os.path.join(tmp_path, name), "wb") as f:
            f.write(content)
        with pytest.raises(ValueError, match=f"{name}: cannot read backbone weights: not a") as e:
            model.build_backbone("resnet18", weights=os.path.join(tmp_path, name))
        assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)


# ---- face Swin-T vs timm's Swin (an independent implementation) ---------------------------------


def _timm_to_microsoft(timm_net, head):
    """timm SwinTransformer -> Microsoft/insightface key layout, derived buffers included."""
    ms = {}
    for key, value in timm_net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":  # timm merges at the start of stage i
            key = ".".join(["layers", str(int(parts[1]) - 1)] + parts[2:])
        ms[key] = value.clone()
    for name, buf in timm_net.named_buffers():  # timm keeps these non-persistent
        if name.endswith(("relative_position_index", "attn_mask")) and buf is not None:
            ms[name] = buf.clone()
    for key, value in head.state_dict().items():
        ms["feature." + key] = value.clone()
    return ms


@pytest.fixture(scope="module")
def swin_pair():
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    ref = timm_swin.SwinTransformer(
        img_size=112,
        patch_size=2,
        window_size=7,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        num_classes=0,
    )
    _randomize_(ref, 1)
    head = nn.Sequential(
        nn.Linear(768, 768, bias=False),
        nn.BatchNorm1d(768, eps=2e-5),
        nn.Linear(768, 512, bias=False),
        nn.BatchNorm1d(512, eps=2e-5),
    )
    _randomize_(head, 2)
    ms = _timm_to_microsoft(ref.eval(), head.eval())
    assert sum(k.endswith("attn_mask") for k in ms) == 5  # shifted blocks of stages 0-2 only
    return ref, head, ms


def test_swin_face_loads_microsoft_layout_and_matches_timm(swin_pair, swin_face, tmp_path):
    ref, head, ms = swin_pair
    path = _save({"state_dict_backbone": ms, "epoch": 1}, tmp_path, "start_0.pt")
    assert model.load_backbone_weights(swin_face, "swin_t_face", path) == []
    net = swin_face.eval()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # (B, 768): stages -> norm -> mean pool
        trunk_ref = ref.forward_features(x).mean(dim=(1, 2))
        trunk = net.trunk(x)
        err = (trunk - trunk_ref).abs().max().item()
        assert err < 1e-4 * trunk_ref.abs().max().item(), err
        torch.testing.assert_close(trunk, trunk_ref, rtol=1e-4, atol=1e-5)
        # the embedding head, written out functionally from the file's tensors
        h = F.linear(trunk_ref, ms["feature.0.weight"])
        h = F.batch_norm(
            h,
            ms["feature.1.running_mean"],
            ms["feature.1.running_var"],
            ms["feature.1.weight"],
            ms["feature.1.bias"],
            eps=2e-5,
        )
        h = F.linear(h, ms["feature.2.weight"])
        h = F.batch_norm(
            h,
            ms["feature.3.running_mean"],
            ms["feature.3.running_var"],
            ms["feature.3.weight"],
            ms["feature.3.bias"],
            eps=2e-5,
        )
        torch.testing.assert_close(net(x), h, rtol=1e-4, atol=1e-4)


def test_swin_face_module_prefix_and_own_layout_round_trip(swin_pair, swin_face):
    _, _, ms = swin_pair
    assert (
        model.load_backbone_weights(
            swin_face, "swin_t_face", {"module." + k: v for k, v in ms.items()}
        )
        == []
    )
    assert torch.equal(
        swin_face.trunk.features[5][4].mlp[3].weight, ms["layers.2.blocks.4.mlp.fc2.weight"]
    )
    assert torch.equal(
        swin_face.trunk.features[6].reduction.weight, ms["layers.2.downsample.reduction.weight"]
    )
    saved = {k: v.clone() for k, v in swin_face.state_dict().items()}
    with torch.no_grad():
        for p in swin_face.parameters():
            p.zero_()
    model.load_backbone_weights(swin_face, "swin_t_face", saved)  # this module's own layout
    for k, v in swin_face.state_dict().items():
        assert torch.equal(v, saved[k]), k


@pytest.mark.parametrize(
    "corruption", ["mask_shape", "mask_on_unshifted_block", "position_index", "unknown_key"]
)
def test_swin_face_rejects_mismatched_buffers(swin_pair, swin_face, corruption):
    _, _, ms = swin_pair
    bad = dict(ms)
    if corruption == "mask_shape":  # a 224 px input's mask: a 56x56 map in 64 windows, not 16
        key = "layers.1.blocks.1.attn_mask"
        bad[key] = torch.zeros(64, 49, 49)
    elif corruption == "mask_on_unshifted_block":  # last stage: the 7x7 map equals the window
        key = "layers.3.blocks.1.attn_mask"
        bad[key] = torch.zeros(1, 49, 49)
    elif corruption == "position_index":
        key = "layers.2.blocks.4.attn.relative_position_index"
        bad[key] = bad[key].flip(0)
    else:
        key = "absolute_pos_embed"
        bad[key] = torch.zeros(1, 3136, 96)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        model.load_backbone_weights(swin_face, "swin_t_face", bad)


def test_swin_t_imagenet_layout_skips_head():
    net = model.build_backbone("swin_t")
    assert net.out_dim == 768
    # a torchvision ImageNet file: + head.*
    src = {
        k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
        for k, v in net.state_dict().items()
    }
    src["head.weight"], src["head.bias"] = torch.zeros(1000, 768), torch.zeros(1000)
    assert model.load_backbone_weights(net, "swin_t", src) == ["head.weight", "head.bias"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, src[k]), k


# ---- the KE2NT module ---------------------------------------------------------------------------


class _TinyBackbone(nn.Module):
    def __init__(self, out_dim):
        super().__init__()
        self.out_dim = out_dim
        self.conv = nn.Conv2d(3, out_dim, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))  # (B, out_dim)


def test_ke2nt_forward_shapes_logits_and_buffers():
    torch.manual_seed(0)
    anchors = torch.randn(7, 512) * 2
    net = model.KE2NT(_TinyBackbone(512), anchors, 7, 6)
    assert isinstance(net.proj, nn.Identity)
    assert [m.__class__ for m in net.neutral_transform] == [nn.Linear, nn.ReLU, nn.Linear]
    assert net.neutral_transform[0].weight.shape == (128, 512)
    assert "anchors" in net.state_dict() and all(p is not net.anchors for p in net.parameters())
    x = torch.randn(3, 3, 16, 16)
    f, n, logits = net(x)
    assert f.shape == n.shape == (3, 512) and logits.shape == (3, 7)
    torch.testing.assert_close(n, net.neutral_transform[2](torch.relu(net.neutral_transform[0](f))))
    expected = 100.0 * F.cosine_similarity(f.double()[:, None, :], anchors.double()[None], dim=-1)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logits, model.similarity_logits(f, anchors, 100.0))
    torch.testing.assert_close(net.classify(x), logits)


def test_ke2nt_projection_when_widths_differ_and_classify_skips_g():
    net = model.KE2NT(_TinyBackbone(768), torch.randn(8, 512), 8, 7)
    assert isinstance(net.proj, nn.Linear) and net.proj.weight.shape == (512, 768)

    def fail(_):
        raise AssertionError("classify ran the neutral transform")

    net.neutral_transform.forward = fail
    assert net.classify(torch.randn(2, 3, 8, 8)).shape == (2, 8)


def test_ke2nt_state_dict_round_trip_and_validation():
    anchors = torch.randn(7, 512)
    a = model.KE2NT(_TinyBackbone(512), anchors, 7, 6)
    b = model.KE2NT(_TinyBackbone(512), torch.zeros(7, 512), 7, 6)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.anchors, anchors)
    with pytest.raises(ValueError, match="neutral_index"):
        model.KE2NT(_TinyBackbone(512), anchors, 7, 7)
    with pytest.raises(ValueError, match="anchors"):
        model.KE2NT(_TinyBackbone(512), torch.randn(512), 1, 0)


def test_ke2nt_logits_float32_under_bf16_autocast():
    net = model.KE2NT(_TinyBackbone(512), torch.randn(7, 512), 7, 6)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f, n, logits = net(x)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model.similarity_logits(f.float(), net.anchors, 100.0))


def test_ke2nt_text_only_neutral_anchor_is_outside_the_logits():
    # CK+ 7-class: 7 class anchors plus a text-only t_neutral last (index 7) for L_t and L_c.
    torch.manual_seed(0)
    anchors = torch.randn(8, 512)
    net = model.KE2NT(_TinyBackbone(512), anchors, 7, 7)
    x = torch.randn(4, 3, 16, 16)
    f, n, logits = net(x)
    assert logits.shape == (4, 7) and net.classify(x).shape == (4, 7)
    expected = 100.0 * F.cosine_similarity(
        f.double()[:, None, :], anchors[:7].double()[None], dim=-1
    )
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-4)
    labels = torch.tensor([0, 3, 6, 1])  # no sample is neutral, so every one counts in L_t
    lt = losses.transformation_loss(f, n, net.anchors, labels, net.neutral_index)
    delta_t = anchors[labels] - anchors[7]
    torch.testing.assert_close(lt, (1 - F.cosine_similarity(f - n, delta_t, dim=-1)).mean())
    with pytest.raises(ValueError, match="num_classes"):
        model.KE2NT(_TinyBackbone(512), anchors, 9, 7)


def test_ke2nt_says_what_to_set_on_a_backbone_without_out_dim():
    trunk = torchvision.models.resnet18(weights=None)
    trunk.fc = nn.Identity()
    with pytest.raises(ValueError, match=r"set backbone\.out_dim = "):
        model.KE2NT(trunk, torch.randn(7, 512), 7, 6)
    trunk.out_dim = 512
    assert model.KE2NT(trunk, torch.randn(7, 512), 7, 6)(torch.randn(2, 3, 32, 32))[2].shape == (
        2,
        7,
    )


def test_mistakes_are_answered_where_they_are_made():
    """Each a ValueError naming the argument and the fix, at construction or the first forward,
    where they were accepted (transposed anchors: 512 logits) or failed deep inside g before."""
    import numpy as np
    import timm

    anchors = torch.randn(5, 512)
    with pytest.raises(
        ValueError, match=r"anchors \(512, 5\) do not fit num_classes=5.*transposed"
    ):
        model.KE2NT(_TinyBackbone(512), anchors.T, 5, None)
    with pytest.raises(ValueError, match=r"neutral_index 'neutral': .*an int in 0\.\.5"):
        model.KE2NT(_TinyBackbone(512), torch.randn(6, 512), 5, "neutral")
    with pytest.raises(ValueError, match="a text-only t_neutral: neutral_index must be 5, not 2"):
        model.KE2NT(_TinyBackbone(512), torch.randn(6, 512), 5, 2)
    wide = _TinyBackbone(1280)
    wide.out_dim = np.int64(1280)  # a numpy int is an int
    assert model.KE2NT(wide, anchors, 5, None).proj.weight.shape == (512, 1280)
    wide.out_dim = 512  # says 512, gives 1280: refused at the first forward, not inside g
    with pytest.raises(ValueError, match=r"gave features \(2, 1280\), not \(B, 512\).*out_dim"):
        model.KE2NT(wide, anchors, 5, None)(torch.randn(2, 3, 8, 8))
    trunk = timm.create_model("resnet18", pretrained=False, num_classes=0)  # its num_features
    net = model.KE2NT(trunk, torch.randn(6, 512), 5, 5)
    assert net(torch.randn(2, 3, 32, 32))[2].shape == (2, 5)
    trunk = timm.create_model("resnet18", pretrained=False)  # head kept: 1,000 outputs
    with pytest.raises(ValueError, match=r"gave features \(2, 1000\), not \(B, 512\)"):
        model.KE2NT(trunk, torch.randn(6, 512), 5, 5).classify(torch.randn(2, 3, 32, 32))
