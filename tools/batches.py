"""The fast path from a dataset to augmented batches: a uint8 image cache and batched augmentation.

train.py and evaluate.py take their batches from here (build_batches, cache_images + BatchAugment).

The cache. cache_images decodes every image once (lib/face_images.py: load_rgb, then square_uint8:
Resize(S) of the shorter side and CenterCrop(S)) into one uint8 tensor (N, 3, S, S): RAF-DB at 112
px is 12,271 x 3 x 112 x 112 bytes = 440 MiB. Its size is printed before it fills; training falls
back to per-sample loading (tools/streaming.py) when the training split would take more than 60% of
the memory available (the test split: 30%), shared by the processes torchrun started on the
machine. On a GPU the cache moves to the GPU when both splits take less than 30% of its free
memory, and the batches are augmented there. Under torchrun every process takes the same path.

Batched augmentation. BatchAugment applies the released recipe (with p=0.5 a random crop of the
4-pixel zero-padded image, a horizontal flip, Normalize, with p=0.5 random erasing) to whole
batches, on any device. Its randomness, and the per-epoch order of CachedBatches, come only from
torch.Generators re-seeded from (seed, epoch) at the start of every epoch (seed_epoch), so a
resumed run replays the same batches from the epoch number alone. The replay is exact on the same
device type: a CUDA generator draws other numbers than a CPU one.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os

import torch
import torch.nn as nn
from PIL import Image

import data
from lib import errors, face_images
from model import IMAGENET_MEAN, IMAGENET_STD, input_normalization
from tools import dataset_check
from tools.distributed import derived_seed, local_world_size
from tools.streaming import streamed_batches, uses_balanced_sampler


def available_memory():
    """Bytes of RAM available now (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class _Resized(torch.utils.data.Dataset):
    """A dataset of PIL items seen as (uint8 (3, S, S), label) through face_images.square_uint8."""

    def __init__(self, dataset, size):
        self.dataset, self.size = dataset, size

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        if not isinstance(image, Image.Image):
            raise TypeError(
                "cache_images needs a dataset built with transform=None (PIL items), got "
                f"{type(image)}"
            )
        return face_images.square_uint8(image, self.size), label


def cache_images(dataset, image_size, num_workers=0, max_bytes=None, batch_size=256):
    """Decode every image once: (uint8 [N, 3, S, S], LongTensor [N]), or None when it would not fit.

    Images go through face_images.square_uint8 (Resize(S) + CenterCrop(S)), the deterministic part
    of build_transforms.
    max_bytes defaults to half the RAM available now.
    """
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
    loader = torch.utils.data.DataLoader(
        _Resized(dataset, image_size), batch_size=batch_size, num_workers=num_workers, shuffle=False
    )
    i = 0
    for x, y in loader:
        images[i : i + len(x)], labels[i : i + len(x)] = x, y
        i += len(x)
    return images, labels


class BatchAugment(nn.Module):
    """The released recipe on a batch: uint8 [B, 3, S, S] -> normalised float [B, 3, S, S].

    train=True: per sample, with p=0.5 a random crop of the 4-pixel zero-padded image, a horizontal
    flip with p=0.5, Normalize, then with p=0.5 a zero (in normalised space) rectangle of area
    fraction U(0.02, 0.25) and aspect exp(U(log 0.3, log 3.3)) (torchvision's RandomErasing, 10
    tries). train=False: Normalize only. All randomness comes from `generator` (its device; CPU by
    default).
    """

    def __init__(
        self,
        image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=True,
        crop_p=0.5,
        padding=4,
        flip_p=0.5,
        erase_p=0.5,
        erase_scale=(0.02, 0.25),
        erase_ratio=(0.3, 3.3),
    ):
        super().__init__()
        self.image_size, self.train_mode, self.padding = image_size, train, padding
        self.crop_p, self.flip_p, self.erase_p = crop_p, flip_p, erase_p
        self.erase_scale, self.erase_ratio = erase_scale, erase_ratio
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, images, generator=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(
                f"BatchAugment expects uint8 [B, 3, S, S], got {images.dtype} {tuple(images.shape)}"
            )
        if self.train_mode:
            # still uint8: a quarter of the memory traffic
            images = self._crop_flip(images, generator)
        x = (
            images.float()
            .mul_(1.0 / 255)
            .sub_(self.mean.to(images.device))
            .div_(self.std.to(images.device))
        )
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
        crop = u[:, 0] < self.crop_p
        # (B,) in 0..2P
        off_i = torch.where(crop, (u[:, 1] * (2 * P + 1)).long().clamp_(max=2 * P), P)
        off_j = torch.where(crop, (u[:, 2] * (2 * P + 1)).long().clamp_(max=2 * P), P)
        r, c = torch.arange(H, device=dev), torch.arange(W, device=dev)
        rows = off_i[:, None] + r  # (B, H)
        # (B, W), flip folded in
        cols = off_j[:, None] + torch.where((u[:, 3] < self.flip_p)[:, None], c.flip(0), c)
        # (B, C, H+2P, W+2P), zeros = black as in RandomCrop
        padded = nn.functional.pad(images, (P, P, P, P))
        out = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * P))
        return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))

    def _erase_mask(self, x, generator):
        B, _, H, W = x.shape
        # 10 tries: area, log-ratio, top, left
        u = self._rand(generator, B, 10, 4).to(x.device).double()
        lo, hi = self.erase_scale
        area = H * W * (lo + (hi - lo) * u[..., 0])
        log_r = (
            math.log(self.erase_ratio[0])
            + (math.log(self.erase_ratio[1]) - math.log(self.erase_ratio[0])) * u[..., 1]
        )
        h = torch.sqrt(area * torch.exp(log_r)).round().long()  # (B, 10)
        w = torch.sqrt(area / torch.exp(log_r)).round().long()
        ok = (h < H) & (w < W)
        # first fitting try, (B, 1)
        first = torch.where(ok.any(1), ok.float().argmax(1), 0)[:, None]
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]  # (B,)
        top = (u[..., 2].gather(1, first)[:, 0] * (H - h + 1)).long().clamp_(max=H - h)
        left = (u[..., 3].gather(1, first)[:, 0] * (W - w + 1)).long().clamp_(max=W - w)
        on = (self._rand(generator, B).to(x.device) < self.erase_p) & ok.any(1)  # (B,)
        r = torch.arange(H, device=x.device)[None, :, None]
        c = torch.arange(W, device=x.device)[None, None, :]
        # (B, H, W)
        m = (
            (r >= top[:, None, None])
            & (r < (top + h)[:, None, None])
            & (c >= left[:, None, None])
            & (c < (left + w)[:, None, None])
        )
        return (m & on[:, None, None])[:, None]  # (B, 1, H, W)


class CachedBatches:
    """Batches of (augmented float images (B, 3, S, S), labels (B,)) on `device`, sliced from a
    uint8 cache. Train: a fresh permutation (or class-balanced draw) per epoch from `order_gen`,
    drop_last; augmentation from `aug_gen` (on `device`). Eval: sequential, normalisation only.

    Process `rank` of `world` (tools/distributed.py): in training it takes rows rank*b ..
    (rank+1)*b, b = batch_size / world, of each global batch of the one-process order; in
    evaluation the whole batches i with i % world == rank.

    A cache on the device is sliced there. A cache in host memory for a GPU run is gathered on the
    host into pinned memory, copied without blocking, and augmented on the GPU."""

    def __init__(
        self,
        images,
        labels,
        batch_size,
        augment,
        train,
        balanced=False,
        order_gen=None,
        aug_gen=None,
        device=None,
        rank=0,
        world=1,
    ):
        self.device = torch.device(device) if device is not None else images.device
        self.images, self.labels = images, labels.to(self.device)  # (N, 3, S, S) uint8, (N,)
        self.batch_size, self.augment, self.train = batch_size, augment, train
        self.order_gen, self.aug_gen = order_gen, aug_gen
        self.rank, self.world = rank, world
        # (N,)
        self.weights = (
            1.0 / torch.bincount(labels.cpu()).double()[labels.cpu()] if balanced else None
        )

    def __len__(self):
        """Steps per epoch (global batches) in training; this process's batches in evaluation."""
        n = len(self.labels)
        if self.train:
            return n // self.batch_size
        return len(range(self.rank, math.ceil(n / self.batch_size), self.world))

    def _rows(self):
        """(start, end) in the epoch's order of each batch this process takes."""
        B, n = self.batch_size, len(self.labels)
        if self.train:
            b = B // self.world
            return [(i * B + self.rank * b, i * B + (self.rank + 1) * b) for i in range(len(self))]
        return [(i * B, (i + 1) * B) for i in range(self.rank, math.ceil(n / B), self.world)]

    def _order(self):
        """The epoch's sample order (N,), drawn on the CPU by the order generator."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(n)
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=self.order_gen)
        return torch.randperm(n, generator=self.order_gen)

    def __iter__(self):
        order = self._order()
        # once per epoch, not per step
        order_at_cache = order.to(self.images.device, non_blocking=True)
        order_at_device = order.to(self.device, non_blocking=True)
        for start, end in self._rows():
            x = self.images[order_at_cache[start:end]]  # (b, 3, S, S) uint8
            # host cache, GPU run: pinned memory, asynchronous copy (compared by type: "cuda" and
            # "cuda:0" are one GPU)
            if x.device.type != self.device.type:
                x = x.pin_memory().to(self.device, non_blocking=True)
            yield (
                self.augment(x, generator=self.aug_gen),
                self.labels[order_at_device[start:end]],
            )


@dataclasses.dataclass
class Splits:
    """What training reads: batch iterables per split, the class names, the generators that make the
    batches resumable, and the data record metrics.json keeps (data_record)."""

    train: object
    val: object
    test: object
    class_names: list
    generators: dict
    record: dict


def seed_epoch(generators, seed, epoch, rank=0):
    """Re-seed every random draw of training epoch `epoch` from (seed, epoch), as
    DistributedSampler.set_epoch does: the batch order alike on every process; the augmentation and
    torch's global generator (per-sample transforms, the decoding workers' seeds in streaming, any
    dropout) per process. A resumed run replays its epochs from the epoch number alone: no
    generator state is saved."""
    generators["order"].manual_seed(derived_seed(seed, "order", epoch))
    if "augment" in generators:
        generators["augment"].manual_seed(derived_seed(seed, "augment", epoch, rank))
    torch.manual_seed(derived_seed(seed, "torch", epoch, rank))


def build_batches(args, ddp, log=print):
    """The training data as Splits: cached uint8 batches, or per-sample streaming when the cache
    would not fit (--cache off forces it). The val split (--val-fraction) is carved from train by a
    seeded permutation. args: train.py's flags (dataset, data_root, image_size, batch_size,
    eval_batch_size, seed, sampler, val_fraction, cache, num_workers, normalization, backbone,
    quiet, dataset options). ddp: this process's place (tools/distributed.py); process r of W gets
    its part of every batch (CachedBatches)."""
    options = data.dataset_options(args)
    if args.dataset == "synthetic":
        options.update(
            num_train=args.num_train,
            num_test=args.num_test,
            seed=args.seed,
            image_size=args.image_size,
        )
    train_set = data.build_dataset(args.dataset, args.data_root, "train", **options)
    test_set = data.build_dataset(args.dataset, args.data_root, "test", **options)
    data.require_disjoint(train_set, test_set)
    # FERPlus ships its own validation split (FER2013Valid): best.pt is selected on it, as
    # Microsoft's src/train.py does, unless --val-fraction carves one from train instead
    val_set = None
    if args.dataset == "ferplus" and not args.val_fraction:
        val_set = data.build_dataset(args.dataset, args.data_root, "valid", **options)
    counts = {"train": len(train_set), "test": len(test_set)}
    if args.dataset != "synthetic":
        log(dataset_check.one_line_comparison(args.dataset, counts, train_set.release))
    generators = {"order": torch.Generator()}  # seeded each epoch (seed_epoch)
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed + 1))
    n_val = int(round(args.val_fraction * len(train_set)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    # the images the train and val batches index: train, and behind it a shipped val split
    pool = train_set
    if val_set is not None:
        val_idx = torch.arange(len(train_set), len(train_set) + len(val_set))
        pool = data.FaceImages(train_set.samples + val_set.samples, train_set.classes)
    errors.check_train_batches(len(train_idx), args.batch_size, args.val_fraction)
    cached = _cache_splits(pool, test_set, args, ddp, log) if args.cache == "auto" else None
    make = _cached_batches if cached is not None else streamed_batches
    splits = cached or (pool, test_set)
    train_b, val_b, test_b = make(args, ddp, generators, splits, train_idx, val_idx)
    record = dict(
        train=data_record(train_set),
        test=data_record(test_set),
        val_carved_from_train=0 if val_set is not None else len(val_idx),
        train_after_val=len(train_idx),
    )
    if val_set is not None:
        record["val"] = data_record(val_set)
    return Splits(train_b, val_b, test_b, list(train_set.classes), generators, record)


def data_record(dataset):
    """Images, images per class, items dropped by reason, the form of the release read (AffectNet's
    csv or npy release, FERPlus's label source; None where a dataset ships in one form), and a short
    fingerprint of the label list (file names and labels, not folders), so that two runs can tell
    whether they read the same data."""
    counts = torch.bincount(
        torch.as_tensor(dataset.targets), minlength=len(dataset.classes)
    ).tolist()
    names = [os.path.basename(s[0]) for s in getattr(dataset, "samples", [])] or list(
        range(len(dataset))
    )
    listing = json.dumps([list(dataset.classes), list(zip(names, dataset.targets, strict=True))])
    return dict(
        images=len(dataset),
        per_class=dict(zip(dataset.classes, counts, strict=True)),
        dropped=dict(getattr(dataset, "dropped", {})),
        release=getattr(dataset, "release", None),
        fingerprint=hashlib.sha256(listing.encode()).hexdigest()[:12],
    )


def _cached_batches(args, ddp, generators, cached, train_idx, val_idx):
    """CachedBatches over the uint8 caches: kept on the GPU when both splits fit there on every
    process, and augmented on the training device in any case."""
    (train_x, train_y), (test_x, test_y) = cached
    device, rank, world = ddp.device, ddp.rank, ddp.world
    nbytes = train_x.numel() + test_x.numel()
    on_device = device.type == "cuda" and ddp.all_agree(_fits_on_device(nbytes, device))
    cache_at = device if on_device else torch.device("cpu")
    generators["augment"] = torch.Generator(device=device)  # seeded each epoch (seed_epoch)
    S, (mean, std) = args.image_size, input_normalization(args.backbone, args.normalization)
    augment = {train: BatchAugment(S, mean, std, train=train).to(device) for train in (True, False)}
    train_x, test_x = train_x.to(cache_at), test_x.to(cache_at)

    def batches(x, y, train):
        return CachedBatches(
            x,
            y,
            args.batch_size if train else args.eval_batch_size,
            augment[train],
            train,
            uses_balanced_sampler(args),
            generators["order"],
            generators["augment"],
            device,
            rank,
            world,
        )

    # no gathered copy of the whole cache when train is all of it (no val split)
    whole = len(train_idx) == len(train_x)
    train_b = batches(
        train_x if whole else train_x[train_idx.to(cache_at)], train_y[train_idx], True
    )
    val_b = (
        batches(train_x[val_idx.to(cache_at)], train_y[val_idx], False) if len(val_idx) else None
    )
    return train_b, val_b, batches(test_x, test_y, False)


def _cache_splits(train_set, test_set, args, ddp, log):
    """Both splits decoded into uint8 tensors (the sizes are printed first), or None when they
    would not fit: the train split in 60% of the memory available, the test split in 30%, that
    memory shared by the processes torchrun started on this machine (each holds a cache). Decided
    before anything is decoded, and by every process together (ddp.all_agree): processes that
    cached beside processes that streamed would draw different global orders."""
    avail = available_memory()
    share = None if avail is None else avail / local_world_size()
    need = [len(s) * 3 * args.image_size**2 for s in (train_set, test_set)]
    fits = share is None or (need[0] <= 0.6 * share and need[1] <= 0.3 * share)
    if not ddp.all_agree(fits):
        log(
            f"the image cache ({sum(need) / 2**20:,.1f} MiB per process) would not fit in memory: "
            "streaming with per-sample transforms instead"
        )
        return None
    with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
        return tuple(
            cache_images(s, args.image_size, args.num_workers, max_bytes=float("inf"))
            for s in (train_set, test_set)
        )


def _fits_on_device(nbytes, device):
    """True when nbytes take less than 30% of the GPU's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.3 * free
