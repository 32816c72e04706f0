"""Find, download, verify and read CLIP checkpoints -> TextEncoder.

Named models are OpenAI's public releases. Each URL's second-to-last component is the
file's SHA256; the file is cached under its URL's last component (ViT-B/16 -> ViT-B-16.pt) in
    download_root, else $KE2NT_CLIP_CACHE, else ~/.cache/clip   (where OpenAI's `clip` keeps them).
"""

import hashlib
import os
import pathlib
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile

import torch

from .encoder import TextEncoder

CACHE_ENV = "KE2NT_CLIP_CACHE"
_BASE = "https://openaipublic.azureedge.net/clip/models"
# OpenAI's files: <base>/<SHA256 of the file>/<file name>
_OPENAI_FILES = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": (
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        "ViT-L-14-336px.pt",
    ),
}
OPENAI_URLS = {name: f"{_BASE}/{sha}/{file}" for name, (sha, file) in _OPENAI_FILES.items()}
# Text towers of the named models: (embed_dim, width, heads); all have 12 layers, 77 positions,
# 49408 tokens.
_TEXT_SIZES = {
    "RN50": (1024, 512, 8),
    "RN101": (512, 512, 8),
    "RN50x4": (640, 640, 10),
    "RN50x16": (768, 768, 12),
    "RN50x64": (1024, 1024, 16),
    "ViT-B/32": (512, 512, 8),
    "ViT-B/16": (512, 512, 8),
    "ViT-L/14": (768, 768, 12),
    "ViT-L/14@336px": (768, 768, 12),
}


def _lookup(name, urls):
    """Model name (or its file stem, e.g. "ViT-B-16") -> (name, url); unknown -> ValueError listing
    names."""
    for known, url in urls.items():
        if name in (known, url.rsplit("/", 1)[-1].rsplit(".", 1)[0]):
            return known, url
    raise ValueError(
        f"unknown CLIP model {name!r}; known models: {', '.join(urls)} (or give a checkpoint path)"
    )


def text_config(name):
    """Known model name -> dict of TextEncoder keyword arguments (OpenAI's sizes,
    quick_gelu=True)."""
    name, _ = _lookup(name, {k: OPENAI_URLS[k] for k in _TEXT_SIZES})
    embed_dim, width, heads = _TEXT_SIZES[name]
    return dict(
        embed_dim=embed_dim,
        context_length=77,
        vocab_size=49408,
        width=width,
        heads=heads,
        layers=12,
        quick_gelu=True,
    )


def cache_dir(download_root=None):
    """download_root, else $KE2NT_CLIP_CACHE, else ~/.cache/clip (not created here)."""
    root = download_root or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "clip")
    return pathlib.Path(root).expanduser()


def cached_model_path(name, download_root=None, urls=None):
    """Where the named model's file lives in the cache (.exists() tells whether it is there). Never
    downloads."""
    _, url = _lookup(name, urls or OPENAI_URLS)
    return cache_dir(download_root) / url.rsplit("/", 1)[-1]


def expected_sha256(url):
    """OpenAI's URLs carry the file's SHA256 as their second-to-last path component."""
    return url.rsplit("/", 2)[-2].lower()


def file_sha256(path, chunk=1 << 20):
    """Hex SHA256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url, path, timeout=30.0):
    """Fetch url into path atomically (temp file in the same folder, SHA256 check, os.replace).

    A failed fetch or a wrong checksum raises RuntimeError and leaves nothing behind.
    """
    path = pathlib.Path(path)
    sha = expected_sha256(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while block := response.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError) as e:
                raise RuntimeError(
                    f"could not download {url} ({e}). Without a network, fetch that file on "
                    "another machine "
                    f"and put it at {path} (or set ${CACHE_ENV} to the folder holding it, or pass "
                    f"the file's path instead of the model name)"
                ) from e
        if digest.hexdigest() != sha:
            raise RuntimeError(
                f"{url}: downloaded file has SHA256 {digest.hexdigest()}, expected {sha}; "
                f"nothing was written to {path}"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _is_torchscript(path):
    """TorchScript archives are zip files holding code/ and constants.pkl next to data.pkl."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def read_checkpoint(path):
    """A checkpoint file -> its state dict (CPU tensors).

    OpenAI's releases are TorchScript archives: torch.jit.load reads them (TorchScript's own loader,
    which builds only TorchScript types and runs no arbitrary Python) and only their state_dict()
    is kept. Anything else is read with torch.load(weights_only=True).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint {path} does not exist")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                # torch.jit is deprecated but reads these archives
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as e:  # torch raises RuntimeError, UnpicklingError, EOFError, BadZipFile, ... here
        raise ValueError(
            f"{path}: cannot read the checkpoint; is it truncated or corrupt? ({type(e).__name__}: "
            f"{e})"
        ) from e


def _named(name_or_path, urls):
    """(name, url) when name_or_path is a known model name (names win over files, as in OpenAI's
    clip), else None."""
    try:
        return _lookup(str(name_or_path), urls or OPENAI_URLS)
    except ValueError:
        return None


def resolve(name_or_path, download_root=None, urls=None):
    """A model name's cached file (downloaded and verified when absent), or a checkpoint path as
    given."""
    named = _named(name_or_path, urls)
    if named is None:
        path = pathlib.Path(name_or_path).expanduser()
        if path.is_file():
            return path
        if isinstance(name_or_path, os.PathLike) or path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            raise FileNotFoundError(f"CLIP checkpoint {name_or_path} does not exist")
        raise ValueError(
            f"{str(name_or_path)!r} is neither a checkpoint file nor a known CLIP model; "
            f"known models: {', '.join(urls or OPENAI_URLS)}"
        )
    name, url = named
    path = cached_model_path(name, download_root, urls)
    if path.is_file():
        actual = file_sha256(path)
        if actual != expected_sha256(url):
            raise ValueError(
                f"{path}: SHA256 is {actual}, expected {expected_sha256(url)} for {url}; "
                f"delete the file to download it again"
            )
        return path
    print(f"downloading {url} -> {path}", file=sys.stderr)
    return download(url, path)


def load_text_encoder(name_or_path, device="cpu", download_root=None, quick_gelu=True, urls=None):
    """Model name ("ViT-B/16", ...) or checkpoint path -> frozen TextEncoder (eval, fp32, on
    `device`).

    urls maps names to download URLs (default OPENAI_URLS; tests point it at a local server).
    quick_gelu=False for LAION-style open_clip checkpoints.
    """
    path = resolve(name_or_path, download_root, urls)
    encoder = TextEncoder.from_state_dict(
        read_checkpoint(path), quick_gelu=quick_gelu, source=str(path)
    )
    return encoder.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def checkpoint_id(name_or_path, urls=None):
    """Provenance for anchors: "ViT-B/16 sha256:5806e77c..." (from the URL) or "<path> sha256:..."
    (hashed)."""
    named = _named(name_or_path, urls)
    if named is not None:
        return f"{named[0]} sha256:{expected_sha256(named[1])}"
    return f"{name_or_path} sha256:{file_sha256(pathlib.Path(name_or_path).expanduser())}"
