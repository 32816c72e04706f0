"""Training's batches: CachedBatches over a uint8 cache of every image decoded once at the working
size (RAF-DB at 112 px: 440 MiB), or per-sample decoding and transforms (lib/streaming.py) when the
cache would not fit in memory (_cache_splits) or cache=False. An epoch's order and augmentation come
only from generators re-seeded from (seed, epoch) at its start (seed_epoch), so a resumed run
replays its batches from the epoch number alone (exactly on the same device type).
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os

import torch

from lib.face_images import BatchAugment, available_memory, cache_images


def derived_seed(*parts):
    """A 63-bit seed of its own for each tuple of parts, e.g. (seed, "augment", epoch, rank): a
    hash, so that no two streams share their numbers (seed + rank would: rank 1 of seed 5 is rank 0
    of seed 6)."""
    digest = hashlib.sha256(repr(("ke2nt",) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_epoch(generators, seed, epoch, rank=0):
    """Re-seed every draw of epoch `epoch` from (seed, epoch), as DistributedSampler.set_epoch
    does: the batch order alike on every process; the augmentation and torch's global generator
    (per-sample transforms, the decoding workers' seeds, any dropout) per process."""
    for name, generator in generators.items():  # "order"; "augment" or "workers" (streaming)
        per_process = () if name == "order" else (rank,)
        generator.manual_seed(derived_seed(seed, name, epoch, *per_process))
    torch.manual_seed(derived_seed(seed, "torch", epoch, rank))


def data_record(dataset):
    """Images, images per class, items dropped by reason, the form of the release read (AffectNet's
    csv or npy release, FERPlus's label source; None where a dataset ships in one form), and a short
    fingerprint of the label list (file names and labels, not folders), so that two runs can tell
    whether they read the same data, and --resume whether it reads the run's data."""
    targets, classes = torch.as_tensor(dataset.targets), dataset.classes
    counts = torch.bincount(targets, minlength=len(classes)).tolist()
    samples = getattr(dataset, "samples", None)
    names = [os.path.basename(s[0]) for s in samples] if samples else list(range(len(dataset)))
    listing = json.dumps([list(classes), list(zip(names, dataset.targets, strict=True))])
    return dict(
        images=len(dataset),
        per_class=dict(zip(classes, counts, strict=True)),
        dropped=dict(getattr(dataset, "dropped", {})),
        release=getattr(dataset, "release", None),
        fingerprint=hashlib.sha256(listing.encode()).hexdigest()[:12],
    )


@dataclasses.dataclass
class Splits:
    """What training reads: batch iterables per split (val None without one), the class names, the
    generators that make the batches resumable, and the record of the data read."""

    train: object
    val: object
    test: object
    class_names: list
    generators: dict
    record: dict


class CachedBatches:
    """Batches of (augmented float images (B, 3, S, S), labels (B,)) on `device`, sliced from a
    uint8 cache (on the device, or gathered in pinned host memory and copied without blocking).
    Train: a fresh permutation (or class-balanced draw) per epoch from `order_gen`, drop_last;
    augmentation from `aug_gen`. Eval: sequential, normalisation only. Process `rank` of `world`
    takes rows rank*b .. (rank+1)*b (b = batch_size / world) of each global batch of the
    one-process order in training, the whole batches i with i % world == rank in evaluation."""

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
        y = labels.cpu()
        self.weights = 1.0 / torch.bincount(y).double()[y] if balanced else None  # (N,)

    def __len__(self):
        """Steps per epoch (global batches) in training; this process's batches in evaluation."""
        return len(self._rows())

    def _rows(self):
        """(start, end) in the epoch's order of each batch this process takes."""
        B, n = self.batch_size, len(self.labels)
        if self.train:
            b = B // self.world
            return [(i * B + self.rank * b, i * B + (self.rank + 1) * b) for i in range(n // B)]
        return [(i * B, (i + 1) * B) for i in range(self.rank, math.ceil(n / B), self.world)]

    def __iter__(self):
        n = len(self.labels)  # the epoch's order (N,), drawn on the CPU by the order generator
        if not self.train:
            order = torch.arange(n)
        elif self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.order_gen)
        else:
            order = torch.randperm(n, generator=self.order_gen)
        # once per epoch, not per step
        order_at_cache = order.to(self.images.device, non_blocking=True)
        order_at_device = order.to(self.device, non_blocking=True)
        for start, end in self._rows():
            x = self.images[order_at_cache[start:end]]  # (b, 3, S, S) uint8
            # a host cache for a GPU run (compared by type: "cuda" and "cuda:0" are one GPU)
            if x.device.type != self.device.type:
                x = x.pin_memory().to(self.device, non_blocking=True)
            yield (
                self.augment(x, generator=self.aug_gen),
                self.labels[order_at_device[start:end]],
            )


@dataclasses.dataclass
class Recipe:
    """How the batches are made: the working image size and normalisation, the batch sizes,
    class-balanced sampling or not, and the image-decoding processes."""

    size: int
    mean: tuple
    std: tuple
    batch_size: int
    eval_batch_size: int
    balanced: bool
    workers: int


def make_batches(pool, test_set, train_idx, val_idx, recipe, ddp, cache=True, log=print):
    """((train, val, test) batch iterables, their generators) over the datasets `pool` (train_idx
    and val_idx index it) and `test_set`: the uint8 cache with BatchAugment, or per-sample
    streaming when the cache would not fit or cache is False. The generators are re-seeded each
    epoch (seed_epoch); ddp is this process's place (lib/device.py)."""
    generators = {"order": torch.Generator()}
    cached = _cache_splits(pool, test_set, recipe, ddp, log) if cache else None
    if cached is None:  # the streaming code is loaded only then
        from lib.streaming import streamed_batches

        made = streamed_batches(pool, test_set, train_idx, val_idx, generators, recipe, ddp)
    else:
        made = _cached_batches(*cached, train_idx, val_idx, generators, recipe, ddp)
    return made, generators


def _cache_splits(train_set, test_set, recipe, ddp, log):
    """Both splits decoded into uint8 tensors (the sizes are printed first), or None when they
    would not fit: the train split in 60% of the memory available, the test split in 30%, that
    memory shared by the processes torchrun started on this machine (each holds a cache). Decided
    before anything is decoded, and by every process together (ddp.all_agree): processes that
    cached beside processes that streamed would draw different global orders."""
    avail = available_memory()
    share = None if avail is None else avail / ddp.local_world
    need = [len(s) * 3 * recipe.size**2 for s in (train_set, test_set)]
    fits = share is None or (need[0] <= 0.6 * share and need[1] <= 0.3 * share)
    if not ddp.all_agree(fits):
        log(
            f"the image cache ({sum(need) / 2**20:,.1f} MiB per process) would not fit in memory: "
            "streaming with per-sample transforms instead"
        )
        return None
    # cache_images prints the cache's size: through log, which a quiet run silences
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        cached = tuple(
            cache_images(s, recipe.size, recipe.workers, max_bytes=float("inf"))
            for s in (train_set, test_set)
        )
    log(printed.getvalue().rstrip("\n"))
    return cached


def _cached_batches(train, test, train_idx, val_idx, generators, recipe, ddp):
    """CachedBatches over the uint8 caches: kept on the GPU when both splits take less than 30% of
    its free memory on every process, and augmented on the training device in any case."""
    (train_x, train_y), (test_x, test_y) = train, test
    device = ddp.device
    nbytes = train_x.numel() + test_x.numel()
    fits = device.type == "cuda" and nbytes < 0.3 * torch.cuda.mem_get_info(device)[0]
    on_device = ddp.all_agree(fits)
    cache_at = device if on_device else torch.device("cpu")
    generators["augment"] = torch.Generator(device=device)  # seeded each epoch (seed_epoch)
    augment = {
        train: BatchAugment(recipe.size, recipe.mean, recipe.std, train=train).to(device)
        for train in (True, False)
    }
    train_x, test_x = train_x.to(cache_at), test_x.to(cache_at)

    common = dict(balanced=recipe.balanced, order_gen=generators["order"])
    common.update(aug_gen=generators["augment"], device=device, rank=ddp.rank, world=ddp.world)

    def batches(x, y, train):
        size = recipe.batch_size if train else recipe.eval_batch_size
        return CachedBatches(x, y, size, augment[train], train, **common)

    # no gathered copy of the whole cache when train is all of it (no val split)
    whole = len(train_idx) == len(train_x)
    train_b = batches(
        train_x if whole else train_x[train_idx.to(cache_at)], train_y[train_idx], True
    )
    val_b = (
        batches(train_x[val_idx.to(cache_at)], train_y[val_idx], False) if len(val_idx) else None
    )
    return train_b, val_b, batches(test_x, test_y, False)
