"""Checkpoint key layouts -> the OpenAI CLIP text-tower layout that TextEncoder uses.

Accepted layouts (the visual tower's keys are always dropped):
  OpenAI / open_clip:  token_embedding.weight, positional_embedding,
                       transformer.resblocks.{i}.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
                       mlp.c_fc, mlp.c_proj}, ln_final, text_projection [W, E], logit_scale
  the same wrapped as {"state_dict": ...} and/or with every key prefixed "module."
  Hugging Face CLIPModel / CLIPTextModelWithProjection:
                       text_model.embeddings.{token,position}_embedding.weight,
                       text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj,
                       layer_norm1/2, mlp.fc1/fc2, text_model.final_layer_norm,
                       text_projection.weight [E, W] (a Linear: transposed here), logit_scale
"""

import re

import torch

# Hugging Face name (inside text_model.encoder.layers.{i}.) -> OpenAI name (inside
# transformer.resblocks.{i}.)
_HF_BLOCK_NAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPENAI_TEXT_KEY = re.compile(
    r"^(token_embedding\.weight|positional_embedding|transformer\.resblocks\.\d+\.|"
    r"ln_final\.|text_projection$|logit_scale$)"
)


def unwrap(checkpoint, source="state dict"):
    """Strip {"state_dict": ...} wrappers and "module." prefixes -> flat dict name -> tensor."""
    while (
        isinstance(checkpoint, dict)
        and "state_dict" in checkpoint
        and isinstance(checkpoint["state_dict"], dict)
    ):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{source}: expected a state dict (name -> tensor), got {type(checkpoint).__name__}"
        )
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return checkpoint


def _from_hugging_face(sd, source):
    """Hugging Face CLIP text keys -> OpenAI keys (q, k, v fused into in_proj; projection
    transposed)."""
    out = {}
    for key, value in sd.items():
        if key == "text_projection.weight":  # Linear weight (E, W) -> projection matrix (W, E)
            out["text_projection"] = value.t()
            continue
        if key == "logit_scale":
            out["logit_scale"] = value
            continue
        if not key.startswith("text_model."):
            continue  # vision_model.*, visual_projection.*
        name = key[len("text_model.") :]
        if name == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            out["ln_final." + name.split(".")[-1]] = value
        else:
            match = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
            if match is None:
                continue  # e.g. embeddings.position_ids
            layer, module, kind = match.groups()
            prefix = f"transformer.resblocks.{layer}."
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                continue  # fused below
            if module not in _HF_BLOCK_NAMES:
                raise ValueError(f"{source}: unexpected Hugging Face key {key!r}")
            out[prefix + _HF_BLOCK_NAMES[module] + "." + kind] = value
    layers = sorted(
        {
            int(m.group(1))
            for k in sd
            for m in [re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)]
            if m
        }
    )
    for layer in layers:
        for kind in ("weight", "bias"):
            parts = [f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv"]
            missing = [p for p in parts if p not in sd]
            if missing:
                raise ValueError(f"{source}: missing key {missing[0]!r}")
            out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
                [sd[p] for p in parts], 0
            )
    return out


def text_tower_state_dict(checkpoint, source="state dict"):
    """Any accepted layout -> dict with only the text tower's OpenAI-named tensors.

    Raises ValueError naming `source` when no text tower is found or a value is not a tensor.
    """
    sd = unwrap(checkpoint, source)
    for key, value in sd.items():
        if not isinstance(key, str):
            raise ValueError(f"{source}: state dict key {key!r} is not a string")
        text_key = (
            _OPENAI_TEXT_KEY.match(key)
            or key.startswith("text_model.")
            or key == "text_projection.weight"
        )
        if text_key and not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: {key!r} holds a {type(value).__name__}, not a tensor")
    if any(k.startswith("text_model.") for k in sd):
        return _from_hugging_face(sd, source)
    text = {k: v for k, v in sd.items() if _OPENAI_TEXT_KEY.match(k)}
    if "token_embedding.weight" not in text:
        sample = ", ".join(repr(k) for k in list(sd)[:5]) or "none"
        raise ValueError(
            f"{source}: no CLIP text tower found (no 'token_embedding.weight' or "
            f"'text_model.embeddings.token_embedding.weight'; first keys: {sample})"
        )
    return text
