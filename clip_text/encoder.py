"""CLIP's text tower: token ids [N, L] -> text features [N, embed_dim] (not normalised).

    x = token_embedding(ids) + positional_embedding          # (N, L, W)
    x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))               # x layers, causal self-attention
    t = ln_final(x)[n, argmax(ids[n])] @ text_projection      # pool at EOT (the largest id), (N, E)

Parameter names are OpenAI's, so an OpenAI / open_clip state dict loads as it is; other
layouts are converted by clip_text.state_dict.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .state_dict import text_tower_state_dict


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP models were trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i sees positions <= i.

    q, k, v come from one fused projection (in_proj_weight [3W, W], as in nn.MultiheadAttention).
    """

    def __init__(self, width, heads):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):  # x: (N, L, W)
        n, length, width = x.shape
        # 3 x (N, L, W)
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(width, dim=-1)
        # (N, H, L, W/H)
        q, k, v = (
            t.view(n, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v)
        )
        # softmax(q k^T / sqrt(W/H) + causal) v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(n, length, width))  # (N, L, W)


class MLP(nn.Module):
    """Linear(W, 4W) -> GELU (quick or exact) -> Linear(4W, W)."""

    def __init__(self, width, quick_gelu):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, width, heads, quick_gelu):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, quick_gelu)

    def forward(self, x):  # (N, L, W)
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (kept as a module so the keys read
    transformer.resblocks.i)."""

    def __init__(self, width, heads, layers, quick_gelu):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)
        )

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


class TextEncoder(nn.Module):
    """CLIP text tower. forward(tokens [N, L<=context_length]) -> [N, embed_dim], not normalised.

    A fresh TextEncoder has CLIP's random initialisation (usable offline, e.g. for a demo);
    TextEncoder.from_state_dict / clip_text.load_text_encoder give trained weights.
    logit_scale is a float: exp(logit_scale) of the checkpoint, 100 when it has none.
    """

    def __init__(
        self,
        embed_dim=512,
        context_length=77,
        vocab_size=49408,
        width=512,
        heads=8,
        layers=12,
        quick_gelu=True,
        logit_scale=100.0,
    ):
        super().__init__()
        self.context_length = context_length
        self.logit_scale = float(logit_scale)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))  # (L, W)
        self.transformer = Transformer(width, heads, layers, quick_gelu)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))  # (W, E)
        self.initialize_parameters()

    def initialize_parameters(self):
        """CLIP's initialisation: normal with std 0.02 (tokens), 0.01 (positions), and
        width**-0.5 scaled by depth for the blocks; biases zero, LayerNorms identity."""
        width = self.ln_final.normalized_shape[0]
        layers = len(self.transformer.resblocks)
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            for bias in (
                block.attn.in_proj_bias,
                block.attn.out_proj.bias,
                block.mlp.c_fc.bias,
                block.mlp.c_proj.bias,
            ):
                nn.init.zeros_(bias)
        nn.init.normal_(self.text_projection, std=attn_std)

    def forward(self, tokens):
        """tokens: LongTensor [N, L] from clip_text.tokenize (L <= context_length) -> [N,
        embed_dim]."""
        n, length = tokens.shape
        if length > self.context_length:
            raise ValueError(
                f"tokens have length {length}, more than the context length {self.context_length}"
            )
        tokens = tokens.to(self.positional_embedding.device)
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # (N, L, W)
        x = self.ln_final(self.transformer(x))  # (N, L, W)
        eot = tokens.argmax(dim=-1)  # (N,) the end-of-text id 49407 is the largest id
        return x[torch.arange(n, device=x.device), eot] @ self.text_projection  # (N, E)

    @classmethod
    def from_state_dict(cls, state_dict, quick_gelu=True, heads=None, source="state dict"):
        """A TextEncoder (fp32, on the tensors' device) holding a copy of a CLIP state dict's text
        tower.

        Every size is read from the tensors' shapes; heads (not visible in shapes) defaults to width
        // 64, true of all OpenAI and open_clip CLIP text towers. Accepts the layouts listed in
        clip_text.state_dict; visual keys are ignored. quick_gelu=False for LAION-style open_clip
        checkpoints trained with exact GELU. `source` (e.g. the file name) prefixes errors.
        """
        sd = text_tower_state_dict(state_dict, source)
        for key in ("token_embedding.weight", "positional_embedding", "text_projection"):
            if key not in sd:
                raise ValueError(f"{source}: missing key {key!r}")
            if sd[key].dim() != 2:
                raise ValueError(
                    f"{source}: {key!r} has shape {tuple(sd[key].shape)}, expected 2 dimensions"
                )
        vocab_size, width = sd["token_embedding.weight"].shape
        blocks = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.")}
        if heads is None:
            if width % 64:
                raise ValueError(
                    f"{source}: width {width} is not a multiple of 64; pass heads= explicitly"
                )
            heads = width // 64
        logit_scale = sd.pop("logit_scale", None)
        # no memory, no random init: the checkpoint's tensors are assigned below
        with torch.device("meta"):
            model = cls(
                embed_dim=sd["text_projection"].shape[1],
                context_length=sd["positional_embedding"].shape[0],
                vocab_size=vocab_size,
                width=width,
                heads=heads,
                layers=len(blocks),
                quick_gelu=quick_gelu,
                logit_scale=100.0 if logit_scale is None else math.exp(float(logit_scale)),
            )
        expected = model.state_dict()
        for key, target in expected.items():
            if key not in sd:
                raise ValueError(
                    f"{source}: missing key {key!r} (a text tower of {len(blocks)} blocks, width "
                    f"{width})"
                )
            if sd[key].shape != target.shape:
                raise ValueError(
                    f"{source}: {key!r} has shape {tuple(sd[key].shape)}, expected "
                    f"{tuple(target.shape)} (width {width} from token_embedding.weight)"
                )
        unexpected = sorted(set(sd) - set(expected))
        if unexpected:
            raise ValueError(
                f"{source}: unexpected text-tower key {unexpected[0]!r}: not an OpenAI-style CLIP "
                f"text tower"
            )
        model.load_state_dict(
            {k: sd[k].to(torch.float32, copy=True) for k in expected}, assign=True
        )
        return model
