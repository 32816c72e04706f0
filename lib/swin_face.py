"""The released KE2NT code's face Swin-T, and the key map that loads its checkpoints.

The released code trains a face-recognition Swin-T from insightface's arcface_torch ("swin_t"):
patch 2, 112x112 input, embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7, drop-path 0.1, then
LayerNorm, average pool and an embedding head "feature" (Linear-BN-Linear-BN) to 512-d. SwinFace
builds the same network on torchvision's SwinTransformer, so no extra package is needed.

Checkpoints of that network use Microsoft Swin names; from_microsoft_swin renames them:

    Microsoft Swin (arcface_torch)               SwinFace (torchvision)
    patch_embed.proj.*                           trunk.features.0.0.*
    patch_embed.norm.*                           trunk.features.0.2.*
    layers.i.blocks.j.{norm1,norm2,attn.*}       trunk.features.(2i+1).j.{same}
    layers.i.blocks.j.mlp.fc1.* / fc2.*          trunk.features.(2i+1).j.mlp.0.* / mlp.3.*
    layers.i.downsample.{reduction,norm}.*       trunk.features.(2i+2).{same}
    norm.*                                       trunk.norm.*
    feature.0-3.*                                feature.0-3.* (unchanged)

The derived buffers relative_position_index and attn_mask are checked against this geometry and
dropped (torchvision rebuilds them): a checkpoint for another input size or window is refused.
"""

import re

import torch
import torch.nn as nn
import torchvision


class SwinFace(nn.Module):
    """The released code's face Swin-T. forward: images (B, 3, 112, 112) -> embeddings (B, 512)."""

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


_FIXED_KEYS = {
    "patch_embed.proj.weight": "trunk.features.0.0.weight",
    "patch_embed.proj.bias": "trunk.features.0.0.bias",
    "patch_embed.norm.weight": "trunk.features.0.2.weight",
    "patch_embed.norm.bias": "trunk.features.0.2.bias",
    "norm.weight": "trunk.norm.weight",
    "norm.bias": "trunk.norm.bias",
}
_BLOCK_KEY = re.compile(
    r"layers\.(\d+)\.blocks\.(\d+)\.(norm[12]\.\w+|attn\.\w+(\.\w+)?|mlp\.fc[12]\.\w+)"
)
_MERGE_KEY = re.compile(r"layers\.(\d+)\.downsample\.(reduction|norm)\.(\w+)")
_MASK_KEY = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attn_mask")


def microsoft_swin_key(key):
    """A Microsoft Swin key -> its SwinFace key (the table above), or None."""
    if key in _FIXED_KEYS:
        return _FIXED_KEYS[key]
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


def shifted_window_mask(size, window, shift):
    """Attention mask of shifted-window attention on a (size x size) map: (nW, w*w, w*w), 0 where
    two tokens of a window come from the same region before the cyclic shift, -100 elsewhere."""
    region = torch.zeros(size, size)
    cuts = (slice(0, size - window), slice(size - window, size - shift), slice(size - shift, None))
    for label, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
        region[rows, cols] = label
    g = size // window
    region = region.view(g, window, g, window).permute(0, 2, 1, 3).reshape(g * g, window * window)
    same = region[:, None, :] == region[:, :, None]  # (nW, w*w, w*w)
    return torch.where(same, 0.0, -100.0)


def _check_attn_mask(key, value, source, image_size, patch_size, window):
    """Refuse an attn_mask buffer that is not the shifted-window mask of this geometry."""
    m = _MASK_KEY.fullmatch(key)
    stage, block = int(m[1]), int(m[2])
    size = image_size // patch_size // 2**stage
    shift = window // 2 if block % 2 == 1 and size > window else 0
    if shift == 0 or not torch.equal(value.float(), shifted_window_mask(size, window, shift)):
        raise ValueError(
            f"{source}: buffer {key!r} is not the shifted-window mask of a {size}x{size} map, "
            f"window {window}, shift {shift}: the checkpoint is for another input size or window"
        )


def from_microsoft_swin(state, source, own, image_size=112, patch_size=2, window=7):
    """A Microsoft-layout face Swin-T state dict -> the same in SwinFace keys (own: the SwinFace's
    state_dict()). Derived buffers are checked (ValueError naming the key) and dropped; keys with no
    counterpart pass unchanged, for the caller to report."""
    out = {}
    for key, value in state.items():
        new = microsoft_swin_key(key) or key
        if _MASK_KEY.fullmatch(key):
            _check_attn_mask(key, value, source, image_size, patch_size, window)
        elif key.endswith("relative_position_index"):
            if new not in own or not torch.equal(value.reshape(-1).to(own[new].dtype), own[new]):
                raise ValueError(
                    f"{source}: buffer {key!r} differs from the relative position index of a "
                    f"{window}x{window} window; the checkpoint is for another geometry"
                )
        else:
            out[new] = value
    return out
