"""The whole training loop's speed, against the best bare step this machine can do, measured in the
same run.

    (a) bare      a bare eager ResNet-18 + Linear cross-entropy SGD step on a batch in memory (no
                  data path, no evaluation), in four variants taken round-robin: fp32, fp32
                  channels-last, bf16 autocast, bf16 autocast channels-last; measured before and
                  after (b) so load drift shows. The fastest variant's rate is the machine's best
                  bare step, and (b) / best is the fraction of it the whole loop reaches (target:
                  >= 0.9).
    (b) train.py  `python train.py` on synthetic faces, as a subprocess, with its --amp (default
                  auto: the precision it measures and picks): cached uint8 images, batched
                  augmentation, KE2NT losses, per-epoch evaluation and checkpoints included;
                  images/s = training images seen / the sum of the epochs' wall time (log.jsonl);
                  its wall time, start-up included, for --wall-epochs epochs (scaled from
                  --epochs at the timed epochs' mean when more)
    (c) released  a loop written the released code's way (hangyu94/KE2NT swint_raf_main.py): JPEG
                  files decoded and augmented per sample by a DataLoader (torchvision transforms),
                  the CLIP text tower run every step (ViT-B/16 size, random init, no_grad), fp32,
                  and a per-epoch evaluation that also runs the text tower per batch
                  (--released-steps 0 skips it)

The CPU is named (model name from /proc/cpuinfo) in the output and the JSON: which precision is
fastest depends on it (bf16 is ~2x fp32 on an AMD EPYC with avx512_bf16, slower on an Intel Xeon
with avx512_bf16 but no AMX). All three train the same backbone (--backbone, ResNet-18 by default)
at the same image size and batch. (b) and (c) see the same number of training and test images. The
train.py run's peak memory: resident from the child's rusage, GPU from its metrics.json.

    python benchmarks/bench_loop.py --out runs/bench_loop.json
    python benchmarks/bench_loop.py --device cuda --num-train 12271 --num-test 3068 --epochs 4 \
        --wall-epochs 50 --released-steps 0     # RAF-DB-sized, 50 epochs' wall time scaled from 4

One run of the defaults (ResNet-18, 112 px, batch 64, 1,280 training and 320 test faces; (b) over
epochs 2-3) on a 2-core Intel Xeon with avx512_bf16 and no AMX (24 GiB, torch 2.14.1, otherwise
idle), an earlier version of train.py:

    loop                                       images/s                   of the best bare step
    (a) fp32 / fp32 cl / bf16 / bf16 cl        71.1 / 76.6 / 52.9 / 56.2  0.93 / 1.00 / 0.69 / 0.73
    (b) train.py (--amp auto: fp32 cl)         68.6                       0.90
    (c) the released code's way                51.8                       0.68

(cl: channels-last.)
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import clip_text  # noqa: E402
import data  # noqa: E402
import losses  # noqa: E402
import model  # noqa: E402
import text_prompts  # noqa: E402
from benchmarks.common import write_json  # noqa: E402
from lib.precision import cpu_name, describe, device_name, paired_rates  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-train", type=int, default=1280)
    p.add_argument("--num-test", type=int, default=320)
    p.add_argument(
        "--epochs", type=int, default=3, help="train.py epochs (the first is warm-up, not counted)"
    )
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bare-steps", type=int, default=12)
    p.add_argument("--wall-epochs", type=int, help="train.py wall time for this many epochs")
    p.add_argument("--released-steps", type=int, default=12, help="(c)'s timed steps; 0 skips it")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of (c)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where all three loops run")
    p.add_argument(
        "--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="train.py's --amp"
    )
    p.add_argument(
        "--backbone", default="resnet18", help="train.py's --backbone, and the bare steps' network"
    )
    p.add_argument(
        "--train-flags", default="", help="more train.py flags, e.g. --train-flags=--compile"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BARE_VARIANTS = ("fp32", "fp32 channels-last", "bf16", "bf16 channels-last")


def bare_step_rates(args):
    """(a): images/s of each BARE_VARIANTS step of eager ResNet-18 + Linear, cross-entropy, SGD, on
    one in-memory batch; 3 untimed rounds then args.bare_steps timed rounds, one step of each
    variant per round, back to back; rates from same-round ratios to fp32 (precision.paired_rates),
    so a burst of load from other processes that slows a whole round cancels out."""
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as train.py on a GPU
    nets = {}
    for cl in (False, True):
        torch.manual_seed(0)
        fmt = torch.channels_last if cl else torch.contiguous_format
        trunk = model.build_backbone(args.backbone)
        net = nn.Sequential(trunk, nn.Linear(trunk.out_dim, 7)).to(device, memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), lr=2e-3, momentum=0.9, weight_decay=5e-4)
        # (B, 3, S, S)
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        nets[cl] = (net, opt, x.contiguous(memory_format=fmt))
    y = torch.randint(0, 7, (args.batch_size,), device=device)

    def step(variant):
        net, opt, x = nets[variant.endswith("channels-last")]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.startswith("bf16")):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {v: [] for v in BARE_VARIANTS}
    for r in range(3 + args.bare_steps):
        for v in BARE_VARIANTS:
            _sync(device)
            t = time.perf_counter()
            step(v)
            _sync(device)
            if r >= 3:
                times[v].append(time.perf_counter() - t)
    return paired_rates(times, args.batch_size)


def train_py_rate(args, folder):
    """(b): train.py's training images/s over epochs 2..E (epoch 1 pays one-off warm-up), wall time
    of each epoch including its evaluation and checkpoint writes; the process's wall time for
    --wall-epochs epochs; peak RSS and GPU memory (None on the CPU) in MiB; its precision choice."""
    encoder = clip_text.TextEncoder().eval()  # ViT-B/16 text tower size, random init
    names = text_prompts.class_names("synthetic")
    with torch.no_grad():
        anchors = text_prompts.build_anchors(encoder, names)
    anchor_file = os.path.join(folder, "anchors.pt")
    text_prompts.save_anchors(anchor_file, anchors, names, None, "random-init ViT-B/16 text tower")
    out = os.path.join(folder, "run")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--dataset",
        "synthetic",
        "--anchors",
        anchor_file,
        "--num-train",
        str(args.num_train),
        "--num-test",
        str(args.num_test),
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--amp",
        args.amp,
        "--backbone",
        args.backbone,
        "--output",
        out,
        "--quiet",
        *args.train_flags.split(),
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    with open(os.path.join(out, "log.jsonl")) as f:
        timed = [json.loads(line)["epoch_seconds"] for line in f]
    timed = timed[1:] or timed
    with open(os.path.join(out, "metrics.json")) as f:
        env = json.load(f)["environment"]
    seen = len(timed) * (args.num_train // args.batch_size) * args.batch_size
    # the epochs not run, at the timed epochs' mean
    wall += (args.wall_epochs - args.epochs) * sum(timed) / len(timed)
    return seen / sum(timed), wall, rss_mib, env.get("peak_gpu_memory_mib"), env.get("precision")


def released_rate(args, folder):
    """(c): images/s of a loop written the released code's way, evaluation share included."""
    torch.manual_seed(0)
    source = data.build_dataset(
        "synthetic", None, "train", num_train=args.num_train, num_test=args.num_test
    )
    jpeg_dir = os.path.join(folder, "jpeg")
    os.makedirs(jpeg_dir, exist_ok=True)
    lines = []
    for i in range(args.released_steps * args.batch_size + args.batch_size * 2):
        image, label = source[i % len(source)]
        name = f"{i:05d}.jpg"
        # like RAF-DB aligned faces
        image.resize((100, 100)).save(os.path.join(jpeg_dir, name), quality=95)
        lines.append(f"{name} {label}\n")
    with open(os.path.join(folder, "train_label.txt"), "w") as f:
        f.writelines(lines)
    mean, std = model.IMAGENET_MEAN, model.IMAGENET_STD
    S = args.image_size
    train_tf = T.Compose(
        [
            T.Resize(S),
            T.RandomApply([T.RandomCrop(S, padding=4)], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
            T.RandomErasing(scale=(0.02, 0.25)),
        ]
    )
    dataset = data.build_dataset(
        "list",
        jpeg_dir,
        "train",
        transform=train_tf,
        list_file=os.path.join(folder, "train_label.txt"),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
    )
    device = torch.device(args.device)
    text = clip_text.TextEncoder().eval().to(device)
    prompts = [row[0] for row in text_prompts.prompts_for(text_prompts.class_names("synthetic"))]
    tokens = clip_text.tokenize(prompts).to(device)  # (7, 77)
    net = model.KE2NT(model.build_backbone(args.backbone), torch.randn(7, 512), neutral_index=6).to(
        device
    )
    opt = torch.optim.SGD(net.parameters(), lr=2e-3, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t = text(tokens)  # (7, 512): the released code runs the text tower every step
        net.anchors.copy_(t)
        f, n, logits = net(x)
        loss, _ = losses.ke2nt_loss(f, n, logits, net.anchors, y, 6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_batch(x):
        with torch.no_grad():
            net.anchors.copy_(text(tokens))
            return net.classify(x).argmax(1)

    batches = iter(loader)
    for _ in range(2):
        step(*next(batches))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.released_steps):
        step(*next(batches))
    _sync(device)
    train_seconds = time.perf_counter() - t0
    net.eval()
    x_eval = torch.randn(100, 3, S, S, device=device)  # the released test batch size
    eval_batch(x_eval)
    _sync(device)
    t0 = time.perf_counter()
    eval_batch(x_eval)
    _sync(device)
    eval_seconds_per_image = (time.perf_counter() - t0) / 100
    n_train = args.released_steps * args.batch_size
    # one epoch = num_train training images + num_test evaluated images, at the measured rates
    epoch_seconds = (
        train_seconds / n_train
    ) * args.num_train + eval_seconds_per_image * args.num_test
    return args.num_train / epoch_seconds


def main(argv=None):
    args = parse_args(argv)
    args.wall_epochs = args.wall_epochs or args.epochs
    with tempfile.TemporaryDirectory() as folder:
        bare = bare_step_rates(args)
        loop, wall, rss_mib, gpu_mib, choice = train_py_rate(args, folder)
        released = released_rate(args, folder) if args.released_steps else None
        bare_after = bare_step_rates(args)  # again, so load drift shows
    best_rate = {v: max(bare[v], bare_after[v]) for v in BARE_VARIANTS}
    best = max(best_rate, key=best_rate.get)
    name = device_name(args.device)
    scaled_from = args.epochs if args.wall_epochs != args.epochs else None
    result = dict(
        date=datetime.date.today().isoformat(),
        cpu=cpu_name(),
        device_name=name,
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        args=vars(args),
        bare_images_per_s={v: [bare[v], bare_after[v]] for v in BARE_VARIANTS},
        best_bare_step=best,
        best_bare_images_per_s=best_rate[best],
        train_py_images_per_s=loop,
        train_py_precision=choice,
        fraction_of_best_step=loop / best_rate[best],
        train_py_wall_seconds=wall,
        wall_epochs=args.wall_epochs,
        wall_scaled_from_epochs=scaled_from,
        peak_gpu_memory_mib=gpu_mib,
        train_py_peak_rss_mib=rss_mib,
        released_style_images_per_s=released,
        ratio_vs_released=released and loop / released,
    )
    print(
        f"{name}: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.backbone} at {args.image_size} px, batch {args.batch_size}"
    )
    print(f"{'loop':<50}{'images/s':>10}{'of best':>9}")
    for v in BARE_VARIANTS:
        label = f"(a) bare step, {v}" + (" (best)" if v == best else "")
        print(
            f"{label:<50}{best_rate[v]:>10.1f}{best_rate[v] / best_rate[best]:>9.2f}"
            f"   (runs: {bare[v]:.1f}, {bare_after[v]:.1f})"
        )
    picked = describe(choice) if choice else "precision not recorded"
    label = f"(b) train.py --amp {args.amp} ({picked})"
    print(f"{label:<50}{loop:>10.1f}{result['fraction_of_best_step']:>9.2f}")
    if released:
        print(f"{'(c) released-style loop':<50}{released:>10.1f}{released / best_rate[best]:>9.2f}")
    print(  # the last line: the key figures
        f"train.py {loop:.1f} images/s, {result['fraction_of_best_step']:.2f} of the best bare "
        f"step ({best}); {args.wall_epochs} epochs {wall:.0f} s"
        + (f" (scaled from {scaled_from} epochs)" if scaled_from else "")
        + (f"; peak GPU {gpu_mib:.0f} MiB" if gpu_mib is not None else "")
        + f"; peak RSS {rss_mib:.0f} MiB"
        + (f"; {loop / released:.2f}x the released-style loop" if released else "")
    )
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
