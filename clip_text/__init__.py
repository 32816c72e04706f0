"""A vendored CLIP text side with OpenAI CLIP's numerics: tokenizer, text encoder, and the
finding, downloading, verifying and reading of CLIP checkpoints (this file).

    tokens = clip_text.tokenize(["a photo of a person making an anger facial expression."])
    encoder = clip_text.load_text_encoder("ViT-B/16")   # cached in ~/.cache/clip, else downloaded
    features = encoder(tokens)                           # (1, 77) -> (1, 512), not normalised

Named models are OpenAI's releases, checked against the SHA256 in their URLs. Named `clip_text`
(not `clip`) so it never shadows OpenAI's package.
"""

import contextlib
import hashlib
import os
import pathlib
import pickle
import sys
import warnings
import zipfile

import torch

from .encoder import ACTIVATIONS, TextEncoder, text_tower_state_dict  # noqa: F401 (re-exported)
from .tokenizer import SimpleTokenizer, tokenize  # noqa: F401 (re-exported)

CACHE_ENV = "KE2NT_CLIP_CACHE"
_BASE = "https://openaipublic.azureedge.net/clip/models"
_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # a name with one of these is taken for a file
# name -> (SHA256 of OpenAI's file, text width); each text tower has 12 layers of width // 64 heads
_MODELS = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", 512),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", 512),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", 640),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", 768),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", 1024),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", 512),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", 512),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", 768),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", 768),
}
OPENAI_URLS = {  # "ViT-L/14@336px" -> .../ViT-L-14-336px.pt
    name: f"{_BASE}/{sha}/{name.replace('/', '-').replace('@', '-')}.pt"
    for name, (sha, _) in _MODELS.items()
}


def _lookup(name):
    """Model name (or its file stem, e.g. "ViT-B-16") -> (name, url); unknown -> ValueError."""
    for known, url in OPENAI_URLS.items():
        if str(name) in (known, url.rsplit("/", 1)[-1].rsplit(".", 1)[0]):
            return known, url
    raise ValueError(f"unknown CLIP model {str(name)!r} (known: {', '.join(OPENAI_URLS)})")


def _file_sha256(path):  # hashlib.file_digest needs Python 3.11
    return hashlib.sha256(pathlib.Path(path).expanduser().read_bytes()).hexdigest()


def text_config(name):
    """Known model name -> TextEncoder keyword arguments, OpenAI's sizes (QuickGELU is default)."""
    name = _lookup(name)[0]
    width = _MODELS[name][1]
    embed_dim = 1024 if name == "RN50" else width  # RN50 alone projects its text to another width
    return dict(embed_dim=embed_dim, width=width, heads=width // 64, layers=12, context_length=77)


def cached_model_path(name, download_root=None):
    """The named model's file (maybe absent): in download_root, $KE2NT_CLIP_CACHE, ~/.cache/clip."""
    root = download_root or os.environ.get(CACHE_ENV) or "~/.cache/clip"
    return pathlib.Path(root).expanduser() / _lookup(name)[1].rsplit("/", 1)[-1]


def read_checkpoint(path):
    """A checkpoint file -> (state dict of CPU tensors, its text tower's activation or None): a
    TorchScript archive (OpenAI's releases) names its modules, torch.load(weights_only=True) not."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such CLIP checkpoint file")
    try:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
        if not any(n.endswith("/constants.pkl") for n in names):
            return torch.load(path, map_location="cpu", weights_only=True), None
        with warnings.catch_warnings():  # torch.jit is deprecated but reads these archives
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except pickle.UnpicklingError as e:  # torch's advice to unpickle anyway is not passed on
        raise ValueError(f"{path}: not a checkpoint: holds pickled Python objects") from e
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, ...
        raise ValueError(f"{path}: cannot read the checkpoint; truncated or corrupt? ({e})") from e
    text = [m.original_name for n, m in module.named_modules() if n.startswith("transformer.")]
    found = {a for a, module_class in ACTIVATIONS.items() if module_class.__name__ in text}
    return module.state_dict(), found.pop() if len(found) == 1 else None


def resolve(name_or_path, download_root=None):
    """A model name's cached file (downloaded when absent, SHA256-checked), else the path as given
    (names win over files, as in OpenAI's clip). A failed download leaves no folder it made."""
    try:
        name, url = _lookup(name_or_path)
    except ValueError:
        path = pathlib.Path(name_or_path).expanduser()
        if path.is_file() or isinstance(name_or_path, os.PathLike) or path.suffix in _SUFFIXES:
            return path  # read_checkpoint raises FileNotFoundError when it is missing
        raise
    path, sha = cached_model_path(name, download_root), url.split("/")[-2]
    if path.is_file():
        if _file_sha256(path) != sha:
            raise ValueError(f"{path}: SHA256 is not {sha}; delete the file to fetch it again")
        return path
    print(f"downloading {url} -> {path}", file=sys.stderr)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # a temporary file beside `path`, moved there only when its SHA256 matches
        torch.hub.download_url_to_file(url, str(path), hash_prefix=sha)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a wrong hash a RuntimeError
        with contextlib.suppress(OSError):  # each folder only while empty
            for folder in made:
                folder.rmdir()
        message = f"could not download {url} ({e}); offline, put that file at {path}"
        raise RuntimeError(f"{message} (or in ${CACHE_ENV}, or pass the file's path)") from e
    return path


def load_text_encoder(name_or_path, activation=None, device="cpu", download_root=None):
    """Model name ("ViT-B/16", ...) or checkpoint path -> frozen TextEncoder (eval, fp32). Its
    activation, "quick_gelu" or "gelu", is not in the weights: a TorchScript archive (OpenAI's
    releases) names it, any other file is refused unless it is chosen."""
    path = resolve(name_or_path, download_root)
    state_dict, known = read_checkpoint(path)
    if known is None and activation is None:
        raise ValueError(
            f"{path}: its activation is not in the file; --clip-activation (activation=) quick_gelu"
            " for OpenAI-trained and open_clip -quickgelu weights, gelu for LAION / open_clip ones"
        )
    if None not in (known, activation) and known != activation:
        raise ValueError(f"{path}: its text tower uses {known}, not --clip-activation {activation}")
    encoder = TextEncoder.from_state_dict(state_dict, activation or known, source=str(path))
    return encoder.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def checkpoint_id(name_or_path):
    """Provenance: "ViT-B/16 sha256:5806e77c..." (the URL's) or "<path> sha256:..." (the file's)."""
    with contextlib.suppress(ValueError):  # not a model name
        name, url = _lookup(name_or_path)
        return f"{name} sha256:{url.split('/')[-2]}"
    return f"{name_or_path} sha256:{_file_sha256(name_or_path)}"
