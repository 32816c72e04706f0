"""The streaming fallback: per-sample decoding and transforms through DataLoaders, for data too
large for the uint8 cache of tools/batches.py (or with --cache off).

build_transforms is the released code's per-sample recipe (torchvision.transforms.v2), which the
cache's BatchAugment reproduces on whole batches; class_balanced_sampler draws AffectNet's
class-balanced order.
"""

import copy

import torch
from torchvision.transforms import v2

from lib import face_images
from model import IMAGENET_MEAN, IMAGENET_STD, input_normalization


def build_transforms(train, image_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Per-sample PIL -> float [3, S, S] transform, the released recipe (torchvision.transforms.v2).

    Resize(S) (shorter side) then CenterCrop(S): the crop is a no-op on square faces (RAF-DB,
    FERPlus) and makes other shapes batchable. Train adds RandomApply(RandomCrop(S, padding=4),
    p=0.5), horizontal flip, and RandomErasing(scale=(0.02, 0.25)) after Normalize, as the released
    code does.
    """
    ops = face_images.resize_crop(image_size)
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


def uses_balanced_sampler(args):
    """--sampler balanced, or auto on AffectNet (its classes are very unequal)."""
    return args.sampler == "balanced" or (
        args.sampler == "auto" and args.dataset.startswith("affectnet")
    )


def streamed_batches(args, device, generators, splits, train_idx, val_idx, options):
    """DataLoaders with per-sample transforms (build_transforms), for data too large to cache."""
    from torch.utils.data import DataLoader, RandomSampler, Subset

    train_set, test_set = splits
    S, (mean, std) = args.image_size, input_normalization(args.backbone, args.normalization)
    train_set.transform = build_transforms(True, S, mean, std)
    test_set.transform = build_transforms(False, S, mean, std)
    targets = [train_set.targets[i] for i in train_idx.tolist()]
    sampler = (
        class_balanced_sampler(targets, generator=generators["order"])
        if uses_balanced_sampler(args)
        else RandomSampler(range(len(targets)), generator=generators["order"])
    )
    common = dict(
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )
    train_b = DataLoader(
        Subset(train_set, train_idx.tolist()),
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        generator=generators["order"],
        **common,
    )
    val_b = None
    if len(val_idx):  # the same images with the evaluation transform
        val_set = copy.copy(train_set)
        val_set.transform = build_transforms(False, S, mean, std)
        val_b = DataLoader(
            Subset(val_set, val_idx.tolist()), batch_size=args.eval_batch_size, **common
        )
    return train_b, val_b, DataLoader(test_set, batch_size=args.eval_batch_size, **common)
