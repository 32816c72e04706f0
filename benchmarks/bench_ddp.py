"""train.py on N devices against one, at the same global batch: images/s and the scaling.

    python benchmarks/bench_ddp.py --nproc 2 --device cuda --num-train 12271 --num-test 3068
    python benchmarks/bench_ddp.py --nproc 2 --device cpu --num-train 256 --num-test 64  # gloo

Runs `python train.py` (one process) and `torchrun --standalone --nproc_per_node=N train.py` on
synthetic faces with the same flags (--batch-size is the global batch either way), then with
--sync-bn on CUDA as well. images/s = training images seen / the sum of the epochs' wall time over
epochs 2..E (log.jsonl; epoch 1 pays one-off warm-up), evaluation and checkpoints included. The
scaling is rate(N) / (N * rate(1)): 1.0 would be perfect. The test accuracies are printed beside:
they differ between one and N processes (per-process BatchNorm and augmentation draws), so they are
only a check that the N-process runs learn.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import clip_text  # noqa: E402
import text_prompts  # noqa: E402
from benchmarks.common import write_json  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="processes (devices) of the N-process run")
    p.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo)")
    p.add_argument("--num-train", type=int, default=12271)
    p.add_argument("--num-test", type=int, default=3068)
    p.add_argument("--epochs", type=int, default=4, help="the first is warm-up, not counted")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument(
        "--train-flags", default="", help="more train.py flags, e.g. --train-flags=--amp=off"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def run(args, folder, name, launcher, extra=()):
    """One train.py run: its images/s over epochs 2..E, all epochs' seconds, last test accuracy."""
    out = os.path.join(folder, name)
    flags = [
        *("--dataset", "synthetic", "--quiet", "--amp", "auto", "--warmup-epochs", "0"),
        *("--anchors", os.path.join(folder, "anchors.pt"), "--output", out),
        *("--num-train", str(args.num_train), "--num-test", str(args.num_test)),
        *("--epochs", str(args.epochs), "--image-size", str(args.image_size)),
        *("--batch-size", str(args.batch_size), "--device", args.device),
        *("--num-workers", str(args.num_workers), *args.train_flags.split(), *extra),
    ]
    subprocess.run([*launcher, os.path.join(ROOT, "train.py"), *flags], check=True, cwd=ROOT)
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    timed = rows[1:] or rows
    seen = len(timed) * (args.num_train // args.batch_size) * args.batch_size
    return dict(
        images_per_s=seen / sum(r["epoch_seconds"] for r in timed),
        seconds_all_epochs=sum(r["epoch_seconds"] for r in rows),
        test_accuracy=rows[-1]["test_accuracy"],
    )


def main(argv=None):
    args = parse_args(argv)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun.append(f"--nproc_per_node={args.nproc}")
    result = dict(config=vars(args), torch=torch.__version__, runs={})
    with tempfile.TemporaryDirectory() as folder:
        names = text_prompts.class_names("synthetic")
        with torch.no_grad():
            anchors = text_prompts.build_anchors(clip_text.TextEncoder().eval(), names)
        text_prompts.save_anchors(
            os.path.join(folder, "anchors.pt"), anchors, names, None, "random-init text tower"
        )
        legs = [("1 process", [sys.executable], ()), (f"{args.nproc} processes", torchrun, ())]
        if args.device.startswith("cuda"):
            legs.append((f"{args.nproc} processes --sync-bn", torchrun, ("--sync-bn",)))
        for i, (name, launcher, extra) in enumerate(legs):
            result["runs"][name] = run(args, folder, f"run{i}", launcher, extra)
    one = result["runs"]["1 process"]["images_per_s"]
    for name, r in result["runs"].items():
        world = 1 if name == "1 process" else args.nproc
        r["scaling"] = r["images_per_s"] / (world * one)
        print(
            f"{name:>28}: {r['images_per_s']:8.1f} images/s, {r['images_per_s'] / one:.2f}x one "
            f"process, scaling {r['scaling']:.2f}, test accuracy {r['test_accuracy']:.2f}%"
        )
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
