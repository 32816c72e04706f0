"""The data path: the uint8 cache + BatchAugment against a per-sample DataLoader, both measured in
the same run on synthetic 100 px faces (as RAF-DB's) written as JPEG (--out FILE.json keeps it).

    per-sample  the baseline (the released code's way, and --cache off's): each JPEG decoded and
                put through streaming.build_transforms, collated, moved to --device
    cached      face_images.cache_images once, then each epoch batches of a random permutation
                augmented whole by face_images.BatchAugment on --device
The last line: cached / per-sample, best epochs' images/s, also with the cache fill in one epoch.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from torchvision.datasets import ImageFolder

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from lib.checkpoint import save_atomic  # noqa: E402
from lib.face_images import BatchAugment, cache_images  # noqa: E402
from lib.streaming import build_transforms  # noqa: E402
from lib.synthetic_faces import SyntheticFaces  # noqa: E402
from model import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def epoch_rates(args, batches_of_epoch):
    """images/s of each of --epochs epochs; batches_of_epoch() yields one epoch's batches."""
    rates = []
    for _ in range(args.epochs):
        t = time.perf_counter()
        n = sum(len(x) for x in batches_of_epoch())
        if args.device.startswith("cuda"):
            torch.cuda.synchronize(args.device)
        rates.append(n / (time.perf_counter() - t))
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=112, help="working size S")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where batches go (and the cache, on CUDA)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    S, B, w, device = args.image_size, args.batch_size, args.num_workers, torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        faces = SyntheticFaces(args.num_images, data.RAFDB_CLASSES, image_size=100)
        for i, (image, label) in enumerate(faces):  # folder/<label>/<i>.jpg
            os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
            image.save(os.path.join(folder, str(label), f"{i:05d}.jpg"), quality=95)
        dataset = ImageFolder(folder)  # items: (PIL RGB image, label), or transform(image)
        dataset.transform = build_transforms(True, S, IMAGENET_MEAN, IMAGENET_STD)  # as streamed
        loader = torch.utils.data.DataLoader(
            dataset, B, shuffle=True, drop_last=True, num_workers=w, persistent_workers=w > 0
        )
        per_sample = epoch_rates(args, lambda: (x.to(device) for x, _ in loader))
        dataset.transform, t = None, time.perf_counter()
        images = cache_images(dataset, S, num_workers=w)[0].to(device)
        fill = time.perf_counter() - t
    augment = BatchAugment(S, IMAGENET_MEAN, IMAGENET_STD, train=True).to(device)
    gen = torch.Generator(device).manual_seed(0)

    def cached_epoch():
        order = torch.randperm(len(images), generator=gen, device=device)
        for i in range(len(images) // B):
            yield augment(images[order[i * B : (i + 1) * B]], generator=gen)

    cached = epoch_rates(args, cached_epoch)
    n = len(images) // B * B
    ratio = max(cached) / max(per_sample)
    with_fill = n / (n / max(cached) + fill) / max(per_sample)
    print(
        f"{args.num_images} JPEGs, 100 px -> {S} px, batch {B}, {args.device}, "
        f"{w} workers, {torch.get_num_threads()} threads\n"
        f"{'per-sample DataLoader + torchvision':44}{max(per_sample):>9.0f} images/s\n"
        f"{'uint8 cache + BatchAugment':44}{max(cached):>9.0f} images/s\n"
        f"cached / per-sample {ratio:.2f}x, {with_fill:.2f}x with the one-off cache fill "
        f"({fill:.2f} s) in one epoch"  # the last line: the key figures
    )
    result = dict(args=vars(args), torch=torch.__version__, ratio=ratio, ratio_with_fill=with_fill)
    result.update(cache_fill_s=fill, per_sample_images_per_s=per_sample, cached_images_per_s=cached)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_atomic(json.dumps(result, indent=2), args.out)
    return result


if __name__ == "__main__":
    main()
