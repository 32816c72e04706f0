r"""The training loop's overhead and what autocast buys: train.py against a bare training step of
the same network, measured in the same run (python benchmarks/bench_loop.py --out FILE.json).

    bare      forward + backward + SGD of backbone + Linear on one batch in memory, channels-last,
              fp32 / bf16 (/ fp16 on CUDA) interleaved, before and after train.py: images/s of
              the median step (the better run), the ratio to fp32
    train.py  `train.py --demo` (same backbone, size, batch): images/s over epochs 2..E against
              the best bare step, wall time for --wall-epochs (scaled), peak RSS and GPU memory
    --nproc N also under torchrun on N processes: images/s against one process, the scaling
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model  # noqa: E402
from lib.checkpoint import save_atomic  # noqa: E402
from lib.device import autocast, device_name  # noqa: E402


def bare_rates(args, dtypes, rounds):
    """{dtype: images/s of its median step after 3 untimed rounds}, peak GPU MiB (CPU: None)."""
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as train.py on a GPU
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trunk = model.build_backbone(args.backbone)
    net = nn.Sequential(trunk, nn.Linear(trunk.out_dim, 7))
    net = net.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=2e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
    y = torch.randint(0, 7, (args.batch_size,), device=device)
    times = {d: [] for d in dtypes}
    for r in range(3 + rounds):
        for d in dtypes:
            t = time.perf_counter()
            with autocast(dict(amp=d), device):  # fp32: autocast off
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()  # waits for the GPU
            if r >= 3:
                times[d].append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {d: args.batch_size / statistics.median(t) for d, t in times.items()}, peak


def train_py(args, folder, name, launcher):
    """One train.py run: images/s over epochs 2..E, wall seconds, peak memory, its precision."""
    out = os.path.join(folder, name)
    flags = ["--demo", "--quiet", "--output", out, "--device", args.device, "--amp", args.amp]
    for k in ("backbone", "image_size", "batch_size", "num_train", "num_test", "epochs"):
        flags += ["--" + k.replace("_", "-"), str(getattr(args, k))]
    start = time.perf_counter()
    cmd = [*launcher, os.path.join(ROOT, "train.py"), *flags, *args.train_flags.split()]
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "log.jsonl")) as f:
        seconds = [json.loads(line)["epoch_seconds"] for line in f]
    timed = seconds[1:] or seconds
    with open(os.path.join(out, "metrics.json")) as f:
        env = json.load(f).get("environment", {})
    seen = len(timed) * (args.num_train // args.batch_size) * args.batch_size
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child's
    extra = (args.wall_epochs - args.epochs) * statistics.fmean(timed)  # the epochs not run
    run = dict(images_per_s=seen / sum(timed), wall_seconds=wall + extra, peak_rss_mib=rss)
    return dict(run, peak_gpu_mib=env.get("peak_gpu_memory_mib"), precision=env["precision"]["amp"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--backbone", default="resnet18", help="train.py's --backbone and the bare step's network")
    a("--image-size", type=int, default=112)
    a("--batch-size", type=int, default=64)
    a("--num-train", type=int, default=1280)
    a("--num-test", type=int, default=320)
    a("--epochs", type=int, default=3, help="train.py's epochs; the first is not timed")
    a("--wall-epochs", type=int, help="train.py's wall time for this many epochs (scaled)")
    a("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="train.py's --amp")
    a("--train-flags", default="", help="more train.py flags, e.g. --train-flags=--compile")
    a("--nproc", type=int, default=1, help="also train.py under torchrun on N processes")
    a("--bare-steps", type=int, default=12, help="timed rounds of the bare steps")
    a("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.wall_epochs = args.wall_epochs or args.epochs
    cuda = args.device.startswith("cuda")
    dtypes = ["fp32", "bf16"] + ["fp16"] * cuda
    with tempfile.TemporaryDirectory() as folder:
        before, _ = bare_rates(args, dtypes, args.bare_steps)
        runs = {"1 process": train_py(args, folder, "one", [sys.executable])}
        if args.nproc > 1:
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            torchrun.append(f"--nproc_per_node={args.nproc}")
            runs[f"{args.nproc} processes"] = train_py(args, folder, "ddp", torchrun)
        after, _ = bare_rates(args, dtypes, args.bare_steps)  # again: load drift shows
    bare = {d: max(before[d], after[d]) for d in dtypes}
    best = max(bare, key=bare.get)
    bare_peak = bare_rates(args, [best], 1)[1] if cuda else None  # the best alone
    one = runs["1 process"]
    rate, p = one["images_per_s"], one["precision"]
    for run in runs.values():
        run["vs_1_process"] = run["images_per_s"] / rate
        run["scaling"] = run["vs_1_process"] / (1 if run is one else args.nproc)
    name = device_name(torch.device(args.device))
    print(
        f"{name}: torch {torch.__version__}, {torch.get_num_threads()} threads, {args.backbone} "
        f"at {args.image_size} px, batch {args.batch_size}\n{'':32}{'images/s':>10}{'ratio':>7}"
    )
    for d in dtypes:
        print(f"{'bare step, ' + d:32}{bare[d]:>10.1f}{bare[d] / bare['fp32']:>7.2f} to fp32")
    for label, run in list(runs.items())[1:]:
        ratio = f"{run['vs_1_process']:>7.2f} to 1 process (scaling {run['scaling']:.2f})"
        print(f"{'train.py, ' + label:32}{run['images_per_s']:>10.1f}{ratio}")
    gpu = f"; peak GPU {one['peak_gpu_mib']} MiB, bare step {bare_peak:.0f} MiB" if cuda else ""
    print(  # the last line: the key figures
        f"train.py ({p}) {rate:.1f} images/s = {rate / bare[best]:.2f} of the bare step ({best});"
        f" bare bf16/fp32 {bare['bf16'] / bare['fp32']:.2f}; {args.wall_epochs} epochs (est.) "
        f"{one['wall_seconds']:.0f} s; peak RSS {one['peak_rss_mib']:.0f} MiB{gpu}"
    )
    result = dict(device=name, torch=torch.__version__, args=vars(args), best_bare=best)
    result.update(bare_before=before, bare_after=after, bare_peak_gpu_mib=bare_peak, train_py=runs)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_atomic(json.dumps(result, indent=2), args.out)
    return result


if __name__ == "__main__":
    main()
