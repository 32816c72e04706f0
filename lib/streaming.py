"""The streaming fallback for data too large for the uint8 cache (or --cache off): per-sample
decoding and the released code's per-sample transforms (build_transforms, torchvision.transforms.v2,
which BatchAugment reproduces on whole batches) through DataLoaders. Used by lib/batches.py only."""

import copy

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Subset
from torchvision.transforms import v2

from lib.face_images import resize_crop


def build_transforms(train, image_size, mean, std):
    """PIL -> float [3, S, S]: resize_crop, then for training RandomApply(RandomCrop(S, padding=4),
    p=0.5), a horizontal flip, RandomErasing(scale=(0.02, 0.25)) after Normalize, as released."""
    ops = resize_crop(image_size)
    if train:
        ops += [
            v2.RandomApply([v2.RandomCrop(image_size, padding=4)], p=0.5),
            v2.RandomHorizontalFlip(),
        ]
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train:
        ops += [v2.RandomErasing(scale=(0.02, 0.25))]
    return v2.Compose(ops)


def class_balanced_sampler(targets, generator=None):
    """Sampler drawing len(targets) indices with replacement, each class equally likely."""
    t = torch.as_tensor(list(targets), dtype=torch.long)
    weights = 1.0 / torch.bincount(t).double()[t]  # (N,)
    return torch.utils.data.WeightedRandomSampler(
        weights, len(t), replacement=True, generator=generator
    )


class RankSlices(torch.utils.data.Sampler):
    """Process `rank` of `world`'s rows of each global batch of `batches` (a BatchSampler): rows
    rank*b .. (rank+1)*b, b = batch size / world (the whole batch in a run of one process)."""

    def __init__(self, batches, rank, world):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        b = self.batches.batch_size // self.world
        for batch in self.batches:
            yield batch[self.rank * b : (self.rank + 1) * b]


def _eval_shard(n, batch_size, rank, world):
    """The indices of the whole evaluation batches i with i % world == rank."""
    starts = range(rank * batch_size, n, world * batch_size)
    return [j for s in starts for j in range(s, min(s + batch_size, n))]


def streamed_batches(train_set, test_set, train_idx, val_idx, generators, recipe, ddp):
    """DataLoaders with per-sample transforms (build_transforms). Process `rank` of `world` takes
    its rows of each global batch (RankSlices) and its whole evaluation batches (as CachedBatches
    does); the global order is the one-process order."""
    rank, world, workers = ddp.rank, ddp.world, recipe.workers
    batch_size, eval_size = recipe.batch_size, recipe.eval_batch_size
    train_set.transform = build_transforms(True, recipe.size, recipe.mean, recipe.std)
    test_set.transform = build_transforms(False, recipe.size, recipe.mean, recipe.std)
    targets = [train_set.targets[i] for i in train_idx.tolist()]
    sampler = (
        class_balanced_sampler(targets, generator=generators["order"])
        if recipe.balanced
        else RandomSampler(range(len(targets)), generator=generators["order"])
    )
    common = dict(num_workers=workers, pin_memory=ddp.device.type == "cuda")
    # the decoding workers' seeds (their augmentation), re-seeded each epoch (seed_epoch); the
    # workers are not persistent, so a resumed epoch draws the same
    generators["workers"] = torch.Generator()
    slices = RankSlices(BatchSampler(sampler, batch_size, drop_last=True), rank, world)
    subset = Subset(train_set, train_idx.tolist())
    train_b = DataLoader(subset, batch_sampler=slices, generator=generators["workers"], **common)
    common.update(persistent_workers=workers > 0)
    val_b = None
    if len(val_idx):  # the same images with the evaluation transform
        val_set = copy.copy(train_set)
        val_set.transform = test_set.transform
        val_idx = val_idx.tolist()
        val_idx = [val_idx[j] for j in _eval_shard(len(val_idx), eval_size, rank, world)]
        val_b = DataLoader(Subset(val_set, val_idx), batch_size=eval_size, **common)
    test_idx = _eval_shard(len(test_set), eval_size, rank, world)
    test_set = test_set if world == 1 else Subset(test_set, test_idx)
    return train_b, val_b, DataLoader(test_set, batch_size=eval_size, **common)
