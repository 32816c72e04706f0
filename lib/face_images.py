"""Image files as a dataset: decoding any image the same way, and bringing it to the working size.

load_rgb is the one decoder (training, the dataset check and inference all use it); resize_crop and
square_uint8 are the deterministic first step of every path to the model; FaceImages is the dataset
of (path, label[, face box]) samples that data.build_dataset returns for every shipped layout.
"""

import io
import struct
import zlib

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from lib.errors import UnreadableImageError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)


def load_rgb(path):
    """Any readable image file -> PIL RGB, decoded the same way for training and inference: EXIF
    orientation applied, 16-bit (and 32-bit) grey scaled to 8 bits, transparency composited over
    white, palette, CMYK and the rest converted. A file that cannot be read raises
    errors.UnreadableImageError (a RuntimeError) naming it: one line, from a DataLoader worker
    too."""
    try:
        with open(path, "rb") as f:
            content = f.read()  # read once: checked, then decoded from memory
        _check_png_chunks(content)
        with Image.open(io.BytesIO(content)) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except Exception as e:  # truncated or corrupt file, not an image, unreadable
        raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if a.max() > 65535 or a.min() < 0:
            a = (a - a.min()) * (255.0 / max(a.max() - a.min(), 1e-12))
        elif a.max() > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(content):
    """A PNG's chunks (the file's bytes) against their CRC-32s: Pillow checks none of the image
    data's, so one changed byte there decoded as other pixels without a word. ValueError on a
    mismatch; other files, and a file cut short (Pillow names that), pass."""
    if not content.startswith(_PNG_SIGNATURE):
        return
    at = len(_PNG_SIGNATURE)
    while at + 12 <= len(content):
        (length,) = struct.unpack(">I", content[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(content):
            return
        (crc,) = struct.unpack(">I", content[end : end + 4])
        if zlib.crc32(content[at + 4 : end]) != crc:
            kind = content[at + 4 : at + 8].decode("latin-1")
            raise ValueError(f"the {kind!r} chunk at byte {at} fails its CRC-32 check (damaged)")
        at = end + 4


def resize_crop(image_size):
    """Resize(S) of the shorter side, then CenterCrop(S): a no-op crop on square faces (RAF-DB,
    FERPlus) that makes other shapes batchable. The deterministic first step of every path to the
    model."""
    return [v2.Resize(image_size), v2.CenterCrop(image_size)]


def square_uint8(image, image_size):
    """PIL image -> uint8 (3, S, S) through _resize_crop: what the cache holds and inference
    feeds."""
    return v2.Compose(resize_crop(image_size) + [v2.PILToTensor()])(image)


class FaceImages(torch.utils.data.Dataset):
    """Image files with labels: .samples [(path, label) or (path, label, (x, y, w, h) face box)],
    .classes, .targets, .dropped {reason: count} of the items the layout listed but the split
    leaves out, and .release: which variant of the dataset's release was read (AffectNet's csv or
    npy release, FERPlus's label source), or None where a dataset ships in one form."""

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
        if box:
            x, y, w, h = box[0]
            image = image.crop((x, y, x + w, y + h))
        return (self.transform(image) if self.transform is not None else image), label
