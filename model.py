"""KE2NT's model: a visual backbone, the neutral transform g and the text-anchor classifier.

    f = proj(backbone(x))          (B, D)  visual ("emotional") feature; proj only if widths differ
    n = g(f)                       (B, D)  g = Linear(D, 128) -> ReLU -> Linear(128, D)
    z_k = s * cos(f, t_k)          (B, K)  t_k raw CLIP text anchors (a buffer), s = 100

Backbones (build_backbone):
    "resnet18"     torchvision ResNet-18 without fc, 512-d; MS-Celeb-1M or ImageNet weights.
    "swin_t_face"  the released code's face Swin-T (lib/swin_face.py), 112x112, 512-d;
                   Microsoft-layout checkpoints load through lib/swin_face.py's key map.
    "swin_t"       torchvision's ImageNet Swin-T, 224x224, 768-d (KE2NT then learns a 768->512
                   proj).

This file, losses.py, text_prompts.py and clip_text/ lift alone into another codebase (weights are
read with torch.load). Only the face Swin-T needs one more file: lib/swin_face.py, imported lazily.
"""

import os

import torch
import torch.nn as nn
import torchvision

from losses import similarity_logits


class KE2NT(nn.Module):
    """KE2NT: backbone -> f, neutral transform n = g(f), logits s * cos(f, t_k) against text
    anchors.

    backbone: module with .out_dim; anchors (K, D) raw text features (stored as a buffer, saved with
    the model, never trained); neutral_index: index of "neutral" in the anchors, or None.
    num_classes: how many leading anchors are classes (default all K). Anchors past it are
    text-only: a dataset without a neutral class (CK+ 7-class) keeps t_neutral as its last anchor
    for L_t and L_c (text_prompts.anchor_names), and the logits never include it.
    """

    def __init__(
        self, backbone, anchors, neutral_index, hidden_dim=128, logit_scale=100.0, num_classes=None
    ):
        super().__init__()
        if anchors.dim() != 2:
            raise ValueError(f"anchors must be (K, D), got shape {tuple(anchors.shape)}")
        num_anchors, dim = anchors.shape
        num_classes = num_anchors if num_classes is None else int(num_classes)
        if not 0 < num_classes <= num_anchors:
            raise ValueError(
                f"num_classes {num_classes} must be in 1..{num_anchors} (the number of anchors)"
            )
        if neutral_index is not None and not 0 <= neutral_index < num_anchors:
            raise ValueError(
                f"neutral_index {neutral_index} out of range for {num_anchors} anchors"
            )
        if not isinstance(getattr(backbone, "out_dim", None), int):
            raise ValueError(
                "backbone has no int .out_dim: set backbone.out_dim = the width of its output "
                "features (e.g. 512 for a timm/torchvision ResNet-18 with its head removed)"
            )
        self.backbone = backbone
        self.register_buffer("anchors", anchors.detach().float().clone())  # (K, D)
        self.neutral_index = neutral_index
        self.num_classes = num_classes
        self.logit_scale = float(logit_scale)
        self.proj = nn.Identity() if backbone.out_dim == dim else nn.Linear(backbone.out_dim, dim)
        self.neutral_transform = nn.Sequential(  # g: 512-128-512 in the paper
            nn.Linear(dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, dim),
        )

    def similarity(self, f):
        """f (B, D) -> logits s * cos(f, t_k) over the classes (B, num_classes), float32 even under
        autocast."""
        return similarity_logits(f, self.anchors[: self.num_classes], self.logit_scale)

    def forward(self, images):
        """images (B, 3, H, W) -> (f (B, D), n (B, D), logits (B, num_classes))."""
        f = self.proj(self.backbone(images))  # (B, D)
        n = self.neutral_transform(f)  # (B, D)
        return f, n, self.similarity(f)

    def classify(self, images):
        """Inference path, skips g: images (B, 3, H, W) -> logits (B, num_classes)."""
        return self.similarity(self.proj(self.backbone(images)))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Each backbone's working size (None: any, 112 by default), input mean/std and feature width.
BACKBONES = {
    "resnet18": dict(input_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_dim=512),
    "swin_t_face": dict(input_size=112, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), out_dim=512),
    "swin_t": dict(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_dim=768),
}

# Classifier heads a checkpoint may carry that a backbone does not use: skipped and reported.
_HEAD_PREFIXES = {"resnet18": ("fc.",), "swin_t": ("head.",), "swin_t_face": ()}


def build_backbone(name, weights=None):
    """Build a backbone by name (see BACKBONES); forward (B, 3, H, W) -> (B, .out_dim).

    weights: None (random init), a checkpoint path, or a state dict; see load_backbone_weights.
    Keys the backbone does not use (classifier heads) are skipped and printed.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if name == "resnet18":
        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Identity()  # (B, 512) pooled feature
    elif name == "swin_t":
        net = torchvision.models.swin_t(weights=None)
        net.head = nn.Identity()  # (B, 768) pooled feature
    else:
        from lib.swin_face import SwinFace  # only the face Swin-T needs it

        net = SwinFace()
    net.out_dim = BACKBONES[name]["out_dim"]
    if weights is not None:
        skipped = load_backbone_weights(net, name, weights)
        source = weights if isinstance(weights, (str, os.PathLike)) else "state dict"
        print(
            f"build_backbone: {name} weights from {source}; skipped {len(skipped)} keys {skipped}"
        )
    return net


def load_backbone_weights(backbone, name, weights):
    """Load a checkpoint path or state dict into build_backbone(name)'s module; returns the skipped
    classifier-head keys (fc.*, head.*).

    Accepted: a state dict, or one under 'state_dict' / 'state_dict_backbone', keys optionally
    prefixed 'module.'; torchvision names (resnet18_msceleb.pth, torchvision ImageNet files), or for
    swin_t_face Microsoft Swin names (insightface arcface_torch, mapped by lib/swin_face.py). Any
    unreadable file, missing or unexpected key, or tensor of the wrong shape raises one ValueError
    naming the file and the keys (the module may then be partly loaded).
    """
    source = str(weights) if isinstance(weights, (str, os.PathLike)) else "<state dict>"
    if isinstance(weights, (str, os.PathLike)):
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # missing, not a torch file, pickled objects
            raise ValueError(f"{source}: cannot read backbone weights: {_one_line(e)}") from e
    for container in ("state_dict_backbone", "state_dict"):
        if isinstance(weights, dict) and isinstance(weights.get(container), dict):
            weights = weights[container]
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise ValueError(f"{source}: expected a state dict (a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in weights.items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise ValueError(f"{source}: nan or inf in {broken[:5]}")
    if name == "swin_t_face" and any(k.startswith(("layers.", "patch_embed.")) for k in state):
        from lib.swin_face import from_microsoft_swin

        state = from_microsoft_swin(state, source, backbone.state_dict())
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch refuses a tensor of the wrong shape
        raise ValueError(f"{source}: {_one_line(e)}") from e
    skipped = [k for k in unexpected if k.startswith(_HEAD_PREFIXES[name])]
    unexpected = [k for k in unexpected if k not in skipped]
    missing = [k for k in missing if not k.endswith(("num_batches_tracked", "position_index"))]
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit backbone {name!r}; missing keys: {missing}; "
            f"unexpected keys: {unexpected}"
        )
    return skipped


def _one_line(error):
    return " ".join(str(error).split())


def input_normalization(backbone, normalization="backbone"):
    """(mean, std) of the input: the backbone's own (0.5/0.5 for the arcface-trained face Swin-T),
    or ImageNet's for every backbone, as the released training script does (train.py
    --normalization)."""
    if normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return BACKBONES[backbone]["mean"], BACKBONES[backbone]["std"]
