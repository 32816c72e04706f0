"""Face images from files to the model's input: one decoder (load_rgb), one resize (resize_crop),
the dataset every layout of data.py returns (FaceImages), the uint8 cache and BatchAugment, the
released augmentation on whole uint8 batches on any device (torchvision draws once per batch)."""

import contextlib
import functools
import io
import math
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lib.errors import BadInputError, UnreadableImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_EXTENSIONS += (".ppm", ".pgm")  # netpbm, as some face sets ship


def load_rgb(path):
    """Any readable image file -> PIL RGB: EXIF orientation applied, 16- and 32-bit grey scaled to 8
    bits, transparency composited over white, palette, CMYK and the rest converted. A file that
    cannot be read is an errors.UnreadableImageError naming it in one line (a worker's too)."""
    content = b""
    try:
        with open(path, "rb") as f:
            content = f.read()  # read once: verified, then decoded from memory
        # verify() checks a PNG's chunk CRCs, which decoding does not: a changed byte in the image
        # data would otherwise decode as other pixels without a word
        with Image.open(io.BytesIO(content)) as im:
            im.verify()
        with Image.open(io.BytesIO(content)) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except Exception as e:  # truncated or corrupt file, not an image, unreadable
        why = f"{type(e).__name__}: {e}"
        if isinstance(e, UnidentifiedImageError):  # whose message names the in-memory copy
            why = "an empty file" if not content else "not an image file Pillow can read"
        raise UnreadableImageError(f"cannot read image {path}: {why}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if a.max() > 65535 or a.min() < 0:
            a = (a - a.min()) * (255.0 / max(a.max() - a.min(), 1e-12))
        elif a.max() > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    transparent = im.mode in ("RGBA", "LA", "PA", "La", "RGBa")
    if transparent or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


def resize_crop(image_size):
    """Resize(S) of the shorter side, then CenterCrop(S): a no-op crop on square faces (RAF-DB,
    FERPlus) that makes other shapes batchable; the first step of every path to the model."""
    return [v2.Resize(image_size), v2.CenterCrop(image_size)]


def square_uint8(image, image_size):
    """PIL image -> uint8 (3, S, S) by resize_crop: what the cache holds and inference feeds."""
    return v2.Compose(resize_crop(image_size) + [v2.PILToTensor()])(image)


class FaceImages(torch.utils.data.Dataset):
    """Image files with labels: .samples [(path, label) or (path, label, (x, y, w, h) face box)],
    .classes, .targets, .dropped {reason: count} of the items listed but left out, and .release:
    the form of the dataset's release read (AffectNet's csv or npy, FERPlus's label source)."""

    def __init__(self, samples, classes, transform=None, name="", dropped=None, release=None):
        self.samples, self.classes = samples, list(classes)
        self.transform, self.name, self.release = transform, name, release
        self.targets = [s[1] for s in samples]
        self.dropped = {k: v for k, v in (dropped or {}).items() if v}

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label, *box = self.samples[index]
        image = load_rgb(path)
        if box:  # a crop holds only image pixels: the box clipped to the image
            (x, y, w, h), (W, H) = box[0], image.size
            inside = (max(x, 0), max(y, 0), min(x + w, W), min(y + h, H))
            if inside[0] >= inside[2] or inside[1] >= inside[3]:
                raise BadInputError(
                    f"face box (x, y, w, h) {box[0]} of {path} lies outside its {W}x{H} image: "
                    "correct the box in the csv, or leave out --crop-face"
                )
            image = image.crop(inside)
        return (self.transform(image) if self.transform is not None else image), label


def available_memory():
    """Bytes of RAM available now (MemAvailable), or None when unknown."""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _square_batch(items, size):
    """cache_images' collate_fn, in its workers: [(PIL, label)] -> (uint8 (B, 3, S, S), [B])."""
    for image, _ in items:
        if not isinstance(image, Image.Image):  # square_uint8 would take a tensor without a word
            raise TypeError(f"cache_images needs transform=None (PIL items), got {type(image)}")
    images = torch.stack([square_uint8(image, size) for image, _ in items])
    return images, torch.tensor([label for _, label in items])


def cache_images(dataset, image_size, num_workers=0, max_bytes=None, batch_size=256):
    """Every image decoded once by square_uint8: (uint8 [N, 3, S, S], LongTensor [N]), or None
    when it would take more than max_bytes (default: half the RAM available now)."""
    n = len(dataset)
    n_bytes = n * 3 * image_size * image_size
    if max_bytes is None:
        avail = available_memory()
        max_bytes = avail // 2 if avail is not None else float("inf")
    print(f"cache: {n:,} images at {image_size}x{image_size} uint8 = {n_bytes / 2**20:,.1f} MiB")
    if n_bytes > max_bytes:
        print(
            f"cache: {n_bytes / 2**20:,.1f} MiB exceeds the limit of {max_bytes / 2**20:,.1f} MiB; "
            "not caching (images will be decoded per step)"
        )
        return None
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    square = functools.partial(_square_batch, size=image_size)
    loader = DataLoader(dataset, batch_size, num_workers=num_workers, collate_fn=square)
    for i, (x, y) in zip(range(0, n, batch_size), loader, strict=True):  # all full but the last
        images[i : i + len(x)], labels[i : i + len(x)] = x, y
    return images, labels


class BatchAugment(nn.Module):
    """The released recipe on a batch: uint8 [B, 3, S, S] -> normalised float [B, 3, S, S].

    train=True: per sample, with p=crop_p a random crop of the 4-pixel zero-padded image, a
    horizontal flip with p=flip_p, Normalize, then with p=erase_p a zero (in normalised space)
    rectangle of area fraction U(0.02, 0.25) and aspect exp(U(log 0.3, log 3.3)) (torchvision's
    RandomErasing, 10 tries). train=False: Normalize only. All randomness comes from `generator`
    (its device; CPU by default).
    """

    padding, erase_scale, erase_ratio = 4, (0.02, 0.25), (0.3, 3.3)  # the released recipe's

    def __init__(self, image_size, mean, std, train=True, crop_p=0.5, flip_p=0.5, erase_p=0.5):
        super().__init__()
        self.image_size, self.train_mode = image_size, train
        self.crop_p, self.flip_p, self.erase_p = crop_p, flip_p, erase_p
        self.register_buffer("mean", torch.tensor(mean).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).float().view(1, 3, 1, 1), persistent=False)

    def forward(self, images, generator=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(
                f"BatchAugment expects uint8 [B, 3, S, S], got {images.dtype} {tuple(images.shape)}"
            )
        if self.train_mode:
            images = self._crop_flip(images, generator)  # still uint8: 1/4 of the memory traffic
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        x = images.float().mul_(1.0 / 255).sub_(mean).div_(std)
        if self.train_mode:
            x.masked_fill_(self._erase_mask(x, generator), 0.0)
        return x  # (B, 3, S, S)

    def _rand(self, generator, *shape):
        dev = generator.device if generator is not None else "cpu"
        return torch.rand(*shape, generator=generator, device=dev)

    def _crop_flip(self, images, generator):
        B, C, H, W = images.shape
        P, dev = self.padding, images.device
        u = self._rand(generator, B, 4).to(dev)  # (B, 4): crop?, row offset, column offset, flip?
        crop = u[:, :1] < self.crop_p  # (B, 1)
        off = torch.where(crop, (u[:, 1:3] * (2 * P + 1)).long().clamp_(max=2 * P), P)  # (B, 2)
        r, c = torch.arange(H, device=dev), torch.arange(W, device=dev)
        rows = off[:, :1] + r  # (B, H)
        cols = off[:, 1:] + torch.where((u[:, 3] < self.flip_p)[:, None], c.flip(0), c)  # (B, W)
        padded = nn.functional.pad(images, (P, P, P, P))  # zeros: black, as in RandomCrop
        out = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * P))
        return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))

    def _erase_mask(self, x, generator):
        B, _, H, W = x.shape
        # 10 tries: area, log-ratio, top, left; float32 as torchvision draws (MPS has no float64)
        u = self._rand(generator, B, 10, 4).to(x.device)
        (lo, hi), (lo_r, hi_r) = self.erase_scale, (math.log(r) for r in self.erase_ratio)
        area = H * W * (lo + (hi - lo) * u[..., 0])
        log_r = lo_r + (hi_r - lo_r) * u[..., 1]
        h = torch.sqrt(area * torch.exp(log_r)).round().long()  # (B, 10)
        w = torch.sqrt(area / torch.exp(log_r)).round().long()
        ok = (h < H) & (w < W)
        first = torch.where(ok.any(1), ok.float().argmax(1), 0)[:, None]  # first that fits (B, 1)
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]  # (B,)
        top = (u[..., 2].gather(1, first)[:, 0] * (H - h + 1)).long().clamp_(max=H - h)
        left = (u[..., 3].gather(1, first)[:, 0] * (W - w + 1)).long().clamp_(max=W - w)
        on = (self._rand(generator, B).to(x.device) < self.erase_p) & ok.any(1)  # (B,)
        r, c = torch.arange(H, device=x.device)[:, None], torch.arange(W, device=x.device)
        rows = (r >= top[:, None, None]) & (r < (top + h)[:, None, None])  # (B, H, 1)
        cols = (c >= left[:, None, None]) & (c < (left + w)[:, None, None])  # (B, 1, W)
        return (rows & cols & on[:, None, None])[:, None]  # (B, 1, H, W)
