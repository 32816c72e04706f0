"""The whole training loop's speed, against two baselines measured in the same run.

    (a) bare      a bare fp32 eager ResNet-18 + Linear cross-entropy step on a batch already in
                  memory (no data path, no evaluation): the hardware's plain-PyTorch baseline
    (a') limit    the same step in bf16 autocast and channels-last: the fastest plain step, so
                  (b) / (a') is the fraction of the bf16 step's limit the whole loop reaches
    (b) train.py  `python train.py` on synthetic faces, as a subprocess: cached uint8 images, batched
                  augmentation, autocast, KE2NT losses, per-epoch evaluation and checkpoints included;
                  images/s = training images seen / the sum of the epochs' wall time (log.jsonl)
    (c) released  a loop written the released code's way (hangyu94/KE2NT swint_raf_main.py): JPEG
                  files decoded and augmented per sample by a DataLoader (torchvision transforms),
                  the CLIP text tower run every step (ViT-B/16 size, random init, no_grad), fp32, and
                  a per-epoch evaluation that also runs the text tower per batch

All three train ResNet-18 at the same image size and batch. (b) and (c) see the same number of training
and test images. The peak resident memory of the train.py run is read from the child's rusage.

    python benchmarks/bench_loop.py --out runs/bench_loop.json
    python benchmarks/bench_loop.py --device cuda --num-train 12271 --num-test 3068 --epochs 50  # RAF-DB-sized
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
import torchvision
from torchvision import transforms as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import clip_text  # noqa: E402
import data  # noqa: E402
import losses  # noqa: E402
import model  # noqa: E402
from benchmarks.common import write_json  # noqa: E402
import text_prompts  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-train", type=int, default=1280)
    p.add_argument("--num-test", type=int, default=320)
    p.add_argument("--epochs", type=int, default=3, help="train.py epochs (the first is warm-up, not counted)")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bare-steps", type=int, default=12)
    p.add_argument("--released-steps", type=int, default=12, help="timed training steps of (c)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of (c)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where all three loops run")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step_rate(args, bf16=False):
    """(a) / (a'): images/s of eager ResNet-18 + Linear, cross-entropy, SGD, on one in-memory batch;
    fp32 and contiguous, or (bf16=True) bf16 autocast and channels-last."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    net = torchvision.models.resnet18(num_classes=7).to(device, memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=2e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)  # (B, 3, S, S)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (args.batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(args.bare_steps):
        step()
    _sync(device)
    return args.batch_size * args.bare_steps / (time.perf_counter() - t)


def train_py_rate(args, folder):
    """(b): train.py's training images/s over epochs 2..E (epoch 1 pays one-off warm-up), wall time of
    each epoch including its evaluation and checkpoint writes; all E epochs' seconds; peak RSS in MiB."""
    encoder = clip_text.TextEncoder().eval()  # ViT-B/16 text tower size, random init
    names = text_prompts.class_names("synthetic")
    with torch.no_grad():
        anchors = text_prompts.build_anchors(encoder, names)
    anchor_file = os.path.join(folder, "anchors.pt")
    text_prompts.save_anchors(anchor_file, anchors, names, None, "random-init ViT-B/16 text tower")
    out = os.path.join(folder, "run")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--dataset", "synthetic", "--anchors", anchor_file,
           "--num-train", str(args.num_train), "--num-test", str(args.num_test), "--epochs", str(args.epochs),
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--device", args.device,
           "--output", out, "--quiet"]
    subprocess.run(cmd, check=True)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    timed = rows[1:] or rows
    seen = len(timed) * (args.num_train // args.batch_size) * args.batch_size
    return seen / sum(r["epoch_seconds"] for r in timed), sum(r["epoch_seconds"] for r in rows), peak_mib


def released_rate(args, folder):
    """(c): images/s of a loop written the released code's way, evaluation share included."""
    torch.manual_seed(0)
    source = data.build_dataset("synthetic", None, "train", num_train=args.num_train, num_test=args.num_test)
    jpeg_dir = os.path.join(folder, "jpeg")
    os.makedirs(jpeg_dir, exist_ok=True)
    lines = []
    for i in range(args.released_steps * args.batch_size + args.batch_size * 2):
        image, label = source[i % len(source)]
        name = f"{i:05d}.jpg"
        image.resize((100, 100)).save(os.path.join(jpeg_dir, name), quality=95)  # like RAF-DB aligned faces
        lines.append(f"{name} {label}\n")
    with open(os.path.join(folder, "train_label.txt"), "w") as f:
        f.writelines(lines)
    mean, std = data.IMAGENET_MEAN, data.IMAGENET_STD
    S = args.image_size
    train_tf = T.Compose([T.Resize(S), T.RandomApply([T.RandomCrop(S, padding=4)], p=0.5),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std),
                          T.RandomErasing(scale=(0.02, 0.25))])
    dataset = data.build_dataset("list", jpeg_dir, "train", transform=train_tf,
                                 list_file=os.path.join(folder, "train_label.txt"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.num_workers)
    device = torch.device(args.device)
    text = clip_text.TextEncoder().eval().to(device)
    prompts = [row[0] for row in text_prompts.prompts_for(text_prompts.class_names("synthetic"))]
    tokens = clip_text.tokenize(prompts).to(device)  # (7, 77)
    net = model.KE2NT(model.build_backbone("resnet18"), torch.randn(7, 512), neutral_index=6).to(device)
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
    epoch_seconds = (train_seconds / n_train) * args.num_train + eval_seconds_per_image * args.num_test
    return args.num_train / epoch_seconds


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        bare = bare_step_rate(args)
        limit = bare_step_rate(args, bf16=True)
        loop, loop_seconds, peak_mib = train_py_rate(args, folder)
        released = released_rate(args, folder)
        bare_after = bare_step_rate(args)  # again, so load drift shows
    result = dict(
        date=datetime.date.today().isoformat(), machine=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
        args=vars(args), bare_fp32_images_per_s=[bare, bare_after], bare_bf16_images_per_s=limit,
        train_py_images_per_s=loop, train_py_seconds_all_epochs=loop_seconds, fraction_of_bf16_step=loop / limit,
        released_style_images_per_s=released, train_py_peak_rss_mib=peak_mib,
        ratio_vs_bare=loop / max(bare, bare_after), ratio_vs_released=loop / released)
    print(f"{'loop':<42}{'images/s':>10}{'ratio':>8}")
    print(f"{'(a) bare fp32 eager ResNet-18 CE step':<42}{max(bare, bare_after):>10.1f}{1:>8.2f}"
          f"   (runs: {bare:.1f}, {bare_after:.1f})")
    label = "(a') bare bf16 channels-last step"
    print(f"{label:<42}{limit:>10.1f}{limit / max(bare, bare_after):>8.2f}")
    print(f"{'(b) train.py, whole loop':<42}{loop:>10.1f}{result['ratio_vs_bare']:>8.2f}")
    print(f"{'(c) released-style loop':<42}{released:>10.1f}{released / max(bare, bare_after):>8.2f}")
    print(f"train.py vs released-style: {result['ratio_vs_released']:.2f}x; train.py reaches "
          f"{100 * result['fraction_of_bf16_step']:.0f}% of the bare bf16 step; "
          f"train.py peak RSS {peak_mib:.0f} MiB; its {args.epochs} epochs took {loop_seconds:.1f} s")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
