"""A vendored CLIP text side: tokenizer + text encoder with OpenAI CLIP's numerics.

    texts = ["a photo of a person making an anger facial expression."]
    tokens = clip_text.tokenize(texts)                   # (1, 77)
    encoder = clip_text.load_text_encoder("ViT-B/16")   # cached in ~/.cache/clip, else downloaded
    features = encoder(tokens)                           # (1, 512), not normalised

Named `clip_text` (not `clip`) so it never shadows OpenAI's package.
"""

from .encoder import TextEncoder
from .loading import (
    CACHE_ENV,
    OPENAI_URLS,
    cache_dir,
    cached_model_path,
    checkpoint_id,
    load_text_encoder,
    read_checkpoint,
    text_config,
)
from .tokenizer import SimpleTokenizer, tokenize

__all__ = [
    "TextEncoder",
    "tokenize",
    "SimpleTokenizer",
    "load_text_encoder",
    "cached_model_path",
    "cache_dir",
    "text_config",
    "checkpoint_id",
    "read_checkpoint",
    "OPENAI_URLS",
    "CACHE_ENV",
]
