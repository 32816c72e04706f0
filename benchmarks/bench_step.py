"""Cost of one KE2NT training step against a plain cross-entropy step, side by side in one process.

    (a) ce        backbone + Linear(out_dim, K), cross-entropy                    (the baseline)
    (b) ke2nt     KE2NT: backbone, neutral transform g, L_s + L_t + L_c, text anchors cached
    (c) released  (b) plus the released code's per-step text-tower forward: CLIP ViT-B/16 text
                  encoder (random init, same size and cost) over the 7 prompts, under no_grad

Each config has its own copy of the backbone (same initial weights) and its own SGD optimiser (lr
0.002, momentum 0.9, weight decay 5e-4, as released). Steps are interleaved round-robin, in a
rotating order, so drift in machine load hits all three alike; the table reports the median and the
minimum step time and their ratios to (a) (the minimum is the steadier on a shared machine). The
difference between (a) and (b) is also timed in isolation: the two heads (Linear + CE against g +
L_s + L_t + L_c) fwd + bwd on fixed features, min of 50 runs, as a share of the CE step. Autocast:
"--amp auto" times a few bf16 and fp32 steps of (a) and keeps bf16 only when it is 15% faster, as
train.py does (lib/precision.py); the text tower runs in --text-dtype (fp32 default).

    python benchmarks/bench_step.py --out runs/bench_step.json
    python benchmarks/bench_step.py --backbone swin_t_face --batch-size 16 --steps 10
"""

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clip_text  # noqa: E402
import losses  # noqa: E402
import model  # noqa: E402
from benchmarks.common import write_json  # noqa: E402
from lib.precision import autocast_dtype, choose_precision, device_name  # noqa: E402

RAFDB_WORDS = [
    "a surprise",
    "a fear",
    "a disgust",
    "a happiness",
    "a sadness",
    "an anger",
    "a neutral",
]
PROMPTS = [f"a photo of a person making {w} facial expression." for w in RAFDB_WORDS]
NEUTRAL = 6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18", choices=sorted(model.BACKBONES))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="default: the backbone's input size, 112 for resnet18",
    )
    p.add_argument("--steps", type=int, default=12, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per config")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "none"])
    p.add_argument("--text-dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(args, device, amp_dtype):
    """Build the three configs; each entry is a closure running one full training step."""
    torch.manual_seed(args.seed)
    backbone = model.build_backbone(args.backbone).to(device)
    text = clip_text.TextEncoder().to(device).eval()  # ViT-B/16 text tower size, random init
    text_dtype = torch.bfloat16 if args.text_dtype == "bf16" else torch.float32
    text = text.to(text_dtype)
    tokens = clip_text.tokenize(PROMPTS).to(device)  # (7, 77)
    with torch.no_grad():
        anchors = text(tokens).float()  # (7, 512): cached once, the KE2NT way

    K = anchors.shape[0]
    g = torch.Generator().manual_seed(args.seed)
    size = args.image_size
    images = torch.randn(args.batch_size, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, K, (args.batch_size,), generator=g).to(device)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def sgd(params):
        return torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)

    def sgd_step(opt, loss_of_batch):
        """One step: the loss under autocast, then backward and SGD."""
        with autocast():
            loss = loss_of_batch()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    # (a) plain cross-entropy
    ce_net = (
        nn.Sequential(copy.deepcopy(backbone), nn.Linear(backbone.out_dim, K)).to(device).train()
    )
    ce_opt = sgd(ce_net.parameters())

    def step_ce():
        return sgd_step(ce_opt, lambda: F.cross_entropy(ce_net(images).float(), labels))

    # (b) KE2NT, anchors cached
    ke = model.KE2NT(copy.deepcopy(backbone), anchors, NEUTRAL).to(device).train()
    ke_opt = sgd(ke.parameters())

    def ke2nt_loss_of(net):
        f, n, logits = net(images)
        return losses.ke2nt_loss(f, n, logits, net.anchors, labels, NEUTRAL)[0]

    def step_ke2nt():
        return sgd_step(ke_opt, lambda: ke2nt_loss_of(ke))

    # (c) released style: the text tower runs every step
    rel = model.KE2NT(copy.deepcopy(backbone), anchors, NEUTRAL).to(device).train()
    rel_opt = sgd(rel.parameters())

    def step_released():
        with torch.no_grad():
            rel.anchors.copy_(text(tokens).float())  # (7, 512), recomputed each step
        return sgd_step(rel_opt, lambda: ke2nt_loss_of(rel))

    def text_only():
        with torch.no_grad():
            return text(tokens)

    return {"ce": step_ce, "ke2nt": step_ke2nt, "released": step_released}, text_only, anchors


def head_costs(args, device, anchors, reps=50):
    """The parts that differ between (a) and (b), isolated on fixed (B, 512) features, fwd + bwd:
    CE head = Linear(512, K) + cross-entropy; KE2NT head = g + logits + L_s + L_t + L_c.
    Returns the minimum over reps of each, in seconds (min: immune to load spikes)."""
    B, K, D = args.batch_size, anchors.shape[0], anchors.shape[1]
    f0 = torch.randn(B, D, device=device)
    labels = torch.randint(0, K, (B,), device=device)
    linear = nn.Linear(D, K).to(device)
    g = nn.Sequential(nn.Linear(D, 128), nn.ReLU(), nn.Linear(128, D)).to(device)

    def ce_head():
        f = f0.clone().requires_grad_(True)
        F.cross_entropy(linear(f), labels).backward()

    def ke2nt_head():
        f = f0.clone().requires_grad_(True)
        n = g(f)
        logits = losses.similarity_logits(f, anchors, 100.0)
        losses.ke2nt_loss(f, n, logits, anchors, labels, NEUTRAL)[0].backward()

    heads = {"ce_head": ce_head, "ke2nt_head": ke2nt_head}
    for fn in heads.values():
        for _ in range(5):
            fn()
    times = {name: [] for name in heads}
    for _ in range(reps):  # interleaved, like the steps
        for name, fn in heads.items():
            times[name].append(time_once(fn, device))
    return {name: min(t) for name, t in times.items()}


def time_once(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def choose_amp(args, device):
    """'auto': precision.choose_precision times the plain CE network in fp32 and bf16 (the training
    loop's rule: bf16 only when 15% faster); returns the autocast dtype (None means fp32)."""
    if args.amp != "auto":
        return torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(args.seed)
    net = model.build_backbone(args.backbone)
    net = nn.Sequential(net, nn.Linear(net.out_dim, 7)).to(device)
    choice = choose_precision(
        "auto",
        device,
        model=net,
        batch_size=args.batch_size,
        image_size=args.image_size,
        candidates=("fp32", "bf16"),
        steps=3,
    )
    return autocast_dtype(choice)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size is None:
        args.image_size = model.BACKBONES[args.backbone]["input_size"] or 112
    device = torch.device(args.device)
    amp_dtype = choose_amp(args, device)
    amp_name = "bf16" if amp_dtype is not None else "none (fp32)"
    steps, text_only, anchors = make_steps(args, device, amp_dtype)

    names = list(steps)
    for _ in range(args.warmup):
        for name in names:
            steps[name]()
        text_only()
    times = {name: [] for name in names}
    text_times = []
    for i in range(args.steps):
        order = names[i % 3 :] + names[: i % 3]  # rotate who goes first
        for name in order:
            times[name].append(time_once(steps[name], device))
        text_times.append(time_once(text_only, device))

    base, base_min = statistics.median(times["ce"]), min(times["ce"])
    labels = {
        "ce": "(a) plain CE step",
        "ke2nt": "(b) KE2NT step, anchors cached",
        "released": "(c) released style, text tower each step",
    }
    rows = []
    for name in names:
        med = statistics.median(times[name])
        rows.append(
            dict(
                config=name,
                label=labels[name],
                median_ms=med * 1e3,
                mean_ms=statistics.fmean(times[name]) * 1e3,
                min_ms=min(times[name]) * 1e3,
                ratio_vs_ce=med / base,
                ratio_min_vs_ce=min(times[name]) / base_min,
            )
        )
    text_ms = statistics.median(text_times) * 1e3
    text_min_ms = min(text_times) * 1e3
    heads = head_costs(args, device, anchors)
    extra = heads["ke2nt_head"] - heads["ce_head"]

    cpu = device_name(device)
    result = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(
            device=str(device),
            name=cpu,
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            python=platform.python_version(),
            load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        ),
        settings=dict(
            backbone=args.backbone,
            batch_size=args.batch_size,
            image_size=args.image_size,
            steps=args.steps,
            warmup=args.warmup,
            amp=amp_name,
            text_dtype=args.text_dtype,
            prompts=len(PROMPTS),
        ),
        text_tower_forward_ms=text_ms,
        text_tower_forward_min_ms=text_min_ms,
        isolated_heads_ms={k: v * 1e3 for k, v in heads.items()},
        isolated_overhead_vs_ce_min=extra / base_min,
        rows=rows,
    )

    print(
        f"\n{args.backbone}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"{args.steps} steps, backbone autocast: {amp_name}, text tower: {args.text_dtype}, "
        f"{device} ({torch.get_num_threads()} threads)"
    )
    print(f"{'config':44s} {'median ms':>10s} {'min ms':>9s} {'median/(a)':>11s} {'min/(a)':>8s}")
    for r in rows:
        print(
            f"{r['label']:44s} {r['median_ms']:10.1f} {r['min_ms']:9.1f} {r['ratio_vs_ce']:11.3f} "
            f"{r['ratio_min_vs_ce']:8.3f}"
        )
    print(f"{'text tower forward alone (7 prompts)':44s} {text_ms:10.1f} {text_min_ms:9.1f}")
    print(
        f"isolated heads, fwd+bwd on ({args.batch_size}, 512) features, min of 50: CE head "
        f"{heads['ce_head'] * 1e3:.3f} ms, KE2NT head (g + L_s + L_t + L_c) "
        f"{heads['ke2nt_head'] * 1e3:.3f} ms;"
        f" difference = {100 * extra / base_min:.2f}% of the min CE step"
    )
    la = result["machine"]["load_average"]
    if la and la[0] > torch.get_num_threads():
        print(
            f"note: load average {la[0]:.1f} on {os.cpu_count()} cores during the run; other "
            f"processes shared the CPU, so whole-step ratios are noisy (min/(a) is the steadier)"
        )
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
