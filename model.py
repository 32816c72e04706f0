"""KE2NT's model: a visual backbone, the neutral transform g and the text-anchor classifier.

    f = proj(backbone(x))          (B, D)  visual ("emotional") feature; proj only if widths differ
    n = g(f)                       (B, D)  g = Linear(D, 128) -> ReLU -> Linear(128, D)
    z_k = s * cos(f, t_k)          (B, K)  t_k raw CLIP text anchors (a buffer), s = 100

Backbones (build_backbone): "resnet18" (torchvision's, 512-d), "swin_t_face" (the released code's
face Swin-T, SwinFace below, 112 px, 512-d), "swin_t" (torchvision's, 224 px, 768-d: KE2NT learns a
768->512 proj). Your own: a timm model made with num_classes=0 (its num_features is read), or any
module whose output is (B, out_dim), with backbone.out_dim set. This file imports nothing else of
the project: it lifts alone into another codebase.
"""

import numbers
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def similarity_logits(features, anchors, scale):
    """Scaled cosine-similarity logits z_ik = s * cos(f_i, t_k): features (B, D), anchors (K, D)
    raw, scale s (100 = CLIP's exp(logit_scale)) -> (B, K), in float32 even under autocast."""
    with torch.autocast(features.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(features.dtype, anchors.dtype), torch.float)
        f = F.normalize(features.to(dtype), dim=-1)  # (B, D)
        t = F.normalize(anchors.to(dtype), dim=-1)  # (K, D)
        return scale * f @ t.t()  # (B, K)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class KE2NT(nn.Module):
    """KE2NT: backbone -> f, neutral transform n = g(f), logits s * cos(f, t_k) against text
    anchors. text_prompts.anchors_for gives the three arguments after the backbone.

    anchors: (K, D) raw text features of the K = num_classes classes in label order, or (K + 1, D)
    with a text-only t_neutral last for a class set without neutral (CK+ 7-class), which the logits
    leave out; a buffer, saved with the model, never trained. neutral_index: the row of t_neutral
    (a class, or K), or None, with which L_t and L_c are 0 for every batch (the losses say so).
    """

    def __init__(
        self, backbone, anchors, num_classes, neutral_index, hidden_dim=128, logit_scale=100.0
    ):
        super().__init__()
        out_dim = getattr(backbone, "out_dim", None) or getattr(backbone, "num_features", None)
        if not _is_int(out_dim) or out_dim < 1:
            raise ValueError(
                "backbone has no int .out_dim: set backbone.out_dim = the width of its output "
                "features (e.g. 512 for a torchvision ResNet-18 with fc = nn.Identity())"
            )
        shape = tuple(anchors.shape) if torch.is_tensor(anchors) else None
        rows = shape[0] if shape and len(shape) == 2 else None
        if rows is None or not _is_int(num_classes) or rows not in (num_classes, num_classes + 1):
            raise ValueError(
                f"anchors {shape} do not fit num_classes={num_classes!r}: anchors are (K, D), a "
                "row per class in label order, and a text-only t_neutral last where no class is "
                "neutral; (D, K) anchors are transposed"
            )
        if neutral_index is not None and not (_is_int(neutral_index) and 0 <= neutral_index < rows):
            raise ValueError(
                f"neutral_index {neutral_index!r}: the row of t_neutral in the anchors, an int in "
                f"0..{rows - 1} (e.g. class_names.index('neutral')), or None"
            )
        if rows > num_classes and neutral_index != num_classes:
            raise ValueError(
                f"anchors have a row past the {num_classes} classes, a text-only t_neutral: "
                f"neutral_index must be {num_classes}, not {neutral_index!r}"
            )
        self.backbone, self.out_dim = backbone, int(out_dim)
        self.register_buffer("anchors", anchors.detach().float().clone())  # (K or K + 1, D)
        self.num_classes = int(num_classes)
        self.neutral_index = None if neutral_index is None else int(neutral_index)
        self.logit_scale = float(logit_scale)
        dim = shape[1]
        self.proj = nn.Identity() if out_dim == dim else nn.Linear(self.out_dim, dim)
        self.neutral_transform = nn.Sequential(  # g: 512-128-512 in the paper
            nn.Linear(dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, dim),
        )

    def encode(self, images):
        """images (B, 3, H, W) -> f (B, D); a backbone output of another width is refused here."""
        h = self.backbone(images)
        if h.dim() != 2 or h.shape[1] != self.out_dim:
            raise ValueError(
                f"the backbone gave features {tuple(h.shape)}, not (B, {self.out_dim}): set "
                "backbone.out_dim to their width (and remove a classifier head)"
            )
        return self.proj(h)  # (B, D)

    def similarity(self, f):
        """f (B, D) -> logits s * cos(f, t_k) over the classes (B, K), float32 even under
        autocast."""
        return similarity_logits(f, self.anchors[: self.num_classes], self.logit_scale)

    def forward(self, images):
        """images (B, 3, H, W) -> (f (B, D), n (B, D), logits (B, K))."""
        f = self.encode(images)  # (B, D)
        n = self.neutral_transform(f)  # (B, D)
        return f, n, self.similarity(f)

    def classify(self, images):
        """Inference path, skips g: images (B, 3, H, W) -> logits (B, K)."""
        return self.similarity(self.encode(images))


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
        net = SwinFace()
    net.out_dim = BACKBONES[name]["out_dim"]
    if weights is not None:
        skipped = load_backbone_weights(net, name, weights)
        source = weights if isinstance(weights, (str, os.PathLike)) else "a state dict"
        print(
            f"build_backbone: {name} weights from {source}; skipped {len(skipped)} keys {skipped}"
        )
    return net


def load_backbone_weights(backbone, name, weights):
    """Load a checkpoint path or state dict (under 'state_dict' or 'state_dict_backbone' too, keys
    maybe prefixed 'module.'; for swin_t_face in Microsoft's Swin names too) into build_backbone(
    name)'s module; returns the classifier-head keys skipped (fc.*, head.*). An unreadable file, a
    missing or unexpected key, a tensor of the wrong shape: one ValueError naming the file and keys.
    """
    source = str(weights) if isinstance(weights, (str, os.PathLike)) else "<state dict>"
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.isfile(weights):
            raise ValueError(f"{source}: cannot read backbone weights: the file does not exist")
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, damaged, pickled objects: what it is not
            why = str(e).split("WeightsUnpickler error:")[-1].strip().split("\n")[0]
            raise ValueError(
                f"{source}: cannot read backbone weights: not a state dict saved by torch.save, "
                f"or one holding more than tensors ({type(e).__name__}: {why[:160]})"
            ) from e
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
        state = from_microsoft_swin(state, source, backbone.state_dict())
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch refuses a tensor of the wrong shape
        raise ValueError(f"{source}: {' '.join(str(e).split())}") from e
    skipped = [k for k in unexpected if k.startswith(_HEAD_PREFIXES[name])]
    unexpected = [k for k in unexpected if k not in skipped]
    missing = [k for k in missing if not k.endswith(("num_batches_tracked", "position_index"))]
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not fit backbone {name!r}; missing keys: {missing}; "
            f"unexpected keys: {unexpected}"
        )
    return skipped


def input_normalization(backbone, normalization="backbone"):
    """(mean, std) of the input: the backbone's own (0.5/0.5 for the arcface-trained face Swin-T),
    or ImageNet's for every backbone, as the released training script does (train.py
    --normalization)."""
    if normalization == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return BACKBONES[backbone]["mean"], BACKBONES[backbone]["std"]


# ---------------------------------------------------------------- the released face Swin-T
class SwinFace(nn.Module):
    """The released code's face Swin-T, insightface arcface_torch's "swin_t", on torchvision's
    SwinTransformer (no extra package): patch 2, 112x112 input, embed 96, depths 2-2-6-2, heads
    3-6-12-24, window 7, drop-path 0.1, then LayerNorm, average pool and an embedding head
    "feature" (Linear-BN-Linear-BN). forward: images (B, 3, 112, 112) -> embeddings (B, 512)."""

    out_dim = 512

    def __init__(self, drop_path=0.1):
        super().__init__()
        self.trunk = torchvision.models.SwinTransformer(
            patch_size=[2, 2],
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=[7, 7],
            stochastic_depth_prob=drop_path,
        )
        self.trunk.head = nn.Identity()  # trunk(x): stages -> LayerNorm -> average pool -> (B, 768)
        self.feature = nn.Sequential(
            nn.Linear(768, 768, bias=False),
            nn.BatchNorm1d(768, eps=2e-5),
            nn.Linear(768, 512, bias=False),
            nn.BatchNorm1d(512, eps=2e-5),
        )
        for m in self.feature:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)

    def forward(self, images):
        return self.feature(self.trunk(images))  # (B, 512)


# Checkpoints of the released network use Microsoft Swin names; from_microsoft_swin renames them:
#     Microsoft Swin (arcface_torch)               SwinFace (torchvision)
#     patch_embed.proj.* / patch_embed.norm.*      trunk.features.0.0.* / trunk.features.0.2.*
#     layers.i.blocks.j.{norm1,norm2,attn.*}       trunk.features.(2i+1).j.{same}
#     layers.i.blocks.j.mlp.fc1.* / fc2.*          trunk.features.(2i+1).j.mlp.0.* / mlp.3.*
#     layers.i.downsample.{reduction,norm}.*       trunk.features.(2i+2).{same}
#     norm.*                                       trunk.norm.*
#     feature.0-3.*                                feature.0-3.* (unchanged)
_FIXED_PREFIXES = {
    "patch_embed.proj.": "trunk.features.0.0.",
    "patch_embed.norm.": "trunk.features.0.2.",
    "norm.": "trunk.norm.",
}
_BLOCK_KEY = re.compile(
    r"layers\.(\d+)\.blocks\.(\d+)\.(norm[12]\.\w+|attn\.\w+(\.\w+)?|mlp\.fc[12]\.\w+)"
)
_MERGE_KEY = re.compile(r"layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)")
_MASK_KEY = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attn_mask")


def microsoft_swin_key(key):
    """A Microsoft Swin key -> its SwinFace key (the table above), or None."""
    for old, new in _FIXED_PREFIXES.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    if key.startswith("feature."):  # the embedding head keeps its names
        return key
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        rest = m[3].replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
        return f"trunk.features.{2 * int(m[1]) + 1}.{m[2]}.{rest}"
    m = _MERGE_KEY.fullmatch(key)
    if m:
        return f"trunk.features.{2 * int(m[1]) + 2}.{m[2]}.{m[3]}"
    return None


def from_microsoft_swin(state, source, own, image_size=112, patch_size=2, window=7):
    """A Microsoft-layout face Swin-T state dict -> the same in SwinFace keys (own: the SwinFace's
    state_dict()). The derived buffers (attn_mask, relative_position_index), which torchvision
    rebuilds, are checked against this geometry and dropped: a checkpoint for another input size or
    window is a ValueError naming the key. Keys with no counterpart pass unchanged, for the caller
    to report."""
    out = {}
    for key, value in state.items():
        new, mask = microsoft_swin_key(key) or key, _MASK_KEY.fullmatch(key)
        if mask:  # shifted windows only, on a map larger than a window: (windows, w*w, w*w)
            size = image_size // patch_size // 2 ** int(mask[1])
            shifted = int(mask[2]) % 2 == 1 and size > window
            fits = shifted and value.shape == ((size // window) ** 2, window**2, window**2)
        elif key.endswith("relative_position_index"):
            fits = new in own and torch.equal(value.reshape(-1).to(own[new].dtype), own[new])
        else:
            out[new] = value
            continue
        if not fits:
            raise ValueError(
                f"{source}: buffer {key!r} does not fit a {image_size}x{image_size} input in "
                f"{window}x{window} windows: the checkpoint is for another input size or window"
            )
    return out
