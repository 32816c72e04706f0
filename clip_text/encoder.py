"""CLIP's text tower: token ids (N, L) -> text features (N, embed_dim), not normalised.

    x = token_embedding(ids) + positional_embedding          # (N, L, W)
    x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))               # per block, causal self-attention
    t = ln_final(x)[n, argmax(ids[n])] @ text_projection      # pool at EOT (the largest id), (N, E)

Parameter names are OpenAI's (text_tower_state_dict converts Hugging Face's). The MLP's activation
is not in the weights: "quick_gelu" (OpenAI's models) or "gelu" (most LAION-trained ones).
"""

import torch
import torch.nn as nn

_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
# Hugging Face name pieces -> OpenAI's, replaced in this order
_HF_RENAMES = [
    ("text_model.", ""),
    ("embeddings.token_embedding", "token_embedding"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm", "ln_final"),
    ("encoder.layers", "transformer.resblocks"),
    ("self_attn", "attn"),
    ("layer_norm", "ln_"),  # layer_norm1 -> ln_1, layer_norm2 -> ln_2
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
]


def text_tower_state_dict(checkpoint, source="state dict"):
    """A CLIP state dict (OpenAI, open_clip, Hugging Face CLIPModel / CLIPTextModelWithProjection;
    maybe in {"state_dict": ...}, maybe "module."-prefixed) -> its text tower, OpenAI's names."""
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(checkpoint).__name__}")
    sd = {str(k).removeprefix("module."): v for k, v in checkpoint.items()}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: {key!r} holds a {type(value).__name__}, not a tensor")
    if any(k.startswith("text_model.") for k in sd):  # Hugging Face
        if "text_projection.weight" in sd:  # a Linear's weight (E, W) -> a matrix (W, E)
            sd["text_projection"] = sd.pop("text_projection.weight").t()
        for old, new in _HF_RENAMES:
            sd = {k.replace(old, new): v for k, v in sd.items()}
        for key in [k for k in sd if ".attn.q_proj." in k]:  # q, k, v -> in_proj (3W, W)
            block, kind = key.split(".attn.q_proj.")
            parts = [f"{block}.attn.{p}_proj.{kind}" for p in "qkv"]
            if all(p in sd for p in parts):  # else load_state_dict names what is missing
                sd[f"{block}.attn.in_proj_{kind}"] = torch.cat([sd.pop(p) for p in parts])
    text = {k: v for k, v in sd.items() if k.startswith(_TEXT_KEYS) or k == "text_projection"}
    if "token_embedding.weight" not in text:
        raise ValueError(f"{source}: no CLIP text tower found (first keys: {list(sd)[:5]})")
    return text


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP models were trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}  # the MLP's, by open_clip's names


class ResidualAttentionBlock(nn.Module):
    """One causal pre-LayerNorm block (above); nn.MultiheadAttention's names are OpenAI's too."""

    def __init__(self, width, heads, activation):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()  # Linear(W, 4W) -> GELU -> Linear(4W, W)
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", ACTIVATIONS[activation]())  # OpenAI's name, also for GELU
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x, causal_mask):  # x: (N, L, W), causal_mask: (L, L), True above diagonal
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=causal_mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.ln_2(x))


class TextEncoder(nn.Module):
    """CLIP text tower, forward(tokens (N, L <= context_length)) -> (N, embed_dim), not normalised;
    a fresh one has CLIP's random init (offline demos), from_state_dict trained weights."""

    def __init__(self, embed_dim, width, heads, layers, context_length=77, activation="quick_gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: one of {', '.join(ACTIVATIONS)}")
        self.context_length = context_length
        self.token_embedding = nn.Embedding(49408, width)  # the tokenizer's vocabulary
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))  # (L, W)
        blocks = [ResidualAttentionBlock(width, heads, activation) for _ in range(layers)]
        # a container only, so that keys read transformer.resblocks.{i}. as in OpenAI's files
        self.transformer = nn.ModuleDict({"resblocks": nn.ModuleList(blocks)})
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))  # (W, E)
        # CLIP's initialisation: normal, std 0.02 (tokens), 0.01 (positions), width**-0.5 by depth
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_fc.bias)  # nn.MultiheadAttention zeroes its own biases
            nn.init.zeros_(block.mlp.c_proj.bias)
        nn.init.normal_(self.text_projection, std=attn_std)

    def forward(self, tokens):
        """tokens: LongTensor (N, L) from clip_text.tokenize, L <= context_length -> (N, E)."""
        n, length = tokens.shape
        tokens = tokens.to(self.positional_embedding.device)
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # (N, L, W)
        mask = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)  # (L, L)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        eot = tokens.argmax(dim=-1)  # (N,) the end-of-text id 49407 is the largest id
        return self.ln_final(x[torch.arange(n, device=x.device), eot]) @ self.text_projection

    @classmethod
    def from_state_dict(cls, state_dict, activation, heads=None, source="state dict"):
        """A fp32 TextEncoder (on the tensors' device), a copy of a CLIP state dict's text tower
        (any layout text_tower_state_dict accepts) with the activation given (not in the weights),
        heads (nor that) width // 64 unless given; `source` (a file name) prefixes errors."""
        sd = text_tower_state_dict(state_dict, source)
        for key in ("token_embedding.weight", "positional_embedding", "text_projection"):
            if key not in sd or sd[key].dim() != 2:
                raise ValueError(f"{source}: {key!r} is missing or not a matrix")
        context_length, width = sd["positional_embedding"].shape
        embed_dim = sd["text_projection"].shape[1]
        layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        if heads is None and width % 64:
            raise ValueError(f"{source}: width {width} is not a multiple of 64; pass heads=")
        with torch.device("meta"):  # no memory, no random init: the tensors are assigned below
            model = cls(embed_dim, width, heads or width // 64, layers, context_length, activation)
        sd = {k: v.detach().to(torch.float32, copy=True) for k, v in sd.items()}
        try:  # names missing, unexpected or wrongly shaped keys
            model.load_state_dict(sd, assign=True)
        except RuntimeError as e:  # torch's message spans lines: made one
            message = " ".join(str(e).split())
            raise ValueError(f"{source}: not an OpenAI-style CLIP text tower: {message}") from e
        return model
