"""Train KE2NT: one plain loop, no framework.

    python train.py --demo                                   # offline, CPU, synthetic faces
    python train.py --dataset rafdb --data-root data/raf_db  # the paper's RAF-DB run (ResNet-18)
    python train.py --resume runs/rafdb-resnet18/last.pt     # continue a stopped run exactly
    torchrun --standalone --nproc_per_node=4 train.py ...    # one model on 4 GPUs (DDP)

Defaults follow the released code (hangyu94/KE2NT, swint_raf_main.py): SGD, momentum 0.9, lr 2e-3,
weight decay 5e-4, batch 64 with drop_last, 50 epochs, the first at a constant 1e-4, then cosine
annealing. The anchors t_k are computed once, never per step. Batches come from tools/batches.py (a
uint8 image cache with batched augmentation, or per-sample streaming when the cache would not fit);
their randomness is re-seeded from (seed, epoch) at the start of every epoch, so --resume needs only
the epoch number and is bit-exact on the CPU.

Outputs in --output: last.pt (everything --resume needs), best.pt (the model of the best epoch),
log.jsonl (one line per epoch) and metrics.json (the last epoch's test report: the number to
report).

Under torchrun (tools/distributed.py) each process drives one device, --batch-size stays the global
batch, the losses' means run over it, and only process 0 prints and writes.
"""

import argparse
import contextlib
import functools
import math
import os
import random
import time

import torch

import data
import text_prompts
from evaluate import class_metrics, confusion_matrix, predict
from lib import checkpoint, errors, finite_guard
from lib.checkpoint_fields import check_saved_flags
from lib.precision import autocast, choose_precision, memory_format, uses_grad_scaler
from losses import ke2nt_loss
from model import BACKBONES, KE2NT, build_backbone
from tools import batches, distributed
from tools.run_anchors import run_anchors
from tools.run_records import (
    environment_record,
    epoch_line,
    new_run,
    prepare_output,
    progress_logger,
    record_epoch,
    report_finish,
    resume_run,
    save_checkpoints,
    start_line,
    write_metrics,
)

# --demo: synthetic faces, ResNet-18 from scratch, a higher lr, no warm-up epoch (README). 8 epochs
# of 3,000 faces at 48 px cost 8 x 3,000 x (48/64)^2 = 13,500 image-steps at 64 px.
DEMO_PRESET = dict(
    dataset="synthetic",
    backbone="resnet18",
    image_size=48,
    num_train=3000,
    num_test=700,
    epochs=8,
    batch_size=32,
    lr=0.05,
    warmup_epochs=0,
    device="cpu",
    num_workers=2,
    log_every=20,
    output=os.path.join("runs", "demo"),
)
# flags that may differ between a run and its --resume (everything else comes from the checkpoint)
RESUME_OVERRIDES = {"resume", "output", "quiet", "num_workers", "device", "log_every", "overwrite"}


def build_parser():
    p = argparse.ArgumentParser(
        description="Train KE2NT (defaults: the released code's RAF-DB recipe)."
    )
    a = p.add_argument
    a("--dataset", choices=data.DATASETS, default="rafdb")
    a("--data-root", default=None, help="dataset folder (see README for each layout)")
    a("--fold", type=int, default=None, help="CK+: the test fold (0-9, subject-independent)")
    a(
        "--include-neutral",
        action="store_true",
        help="CK+: add the neutral first frames (8 classes)",
    )
    a(
        "--skip-missing",
        action="store_true",
        help="skip listed images that do not exist (their count is printed)",
    )
    a("--crop-face", action="store_true", help="AffectNet: crop each image to the csv's face box")
    a(
        "--list-file",
        default=None,
        help="list: 'relative/path label' file (default <root>/<split>_label.txt)",
    )
    a(
        "--classes",
        default=None,
        help="list/folder: class order, a dataset name or comma-separated words",
    )
    a("--backbone", choices=sorted(BACKBONES), default="resnet18")
    a(
        "--backbone-weights",
        default=None,
        help="pretrained backbone state_dict file (e.g. MS-Celeb-1M)",
    )
    a("--clip", default="ViT-B/16", help="CLIP model name or path for the text anchors")
    a(
        "--anchors",
        default=None,
        help="anchors file from text_prompts.save_anchors (overrides --clip)",
    )
    a("--epochs", type=int, default=50)
    a("--batch-size", type=int, default=64)
    a("--lr", type=float, default=2e-3)
    a("--momentum", type=float, default=0.9)
    a("--weight-decay", type=float, default=5e-4)
    a(
        "--warmup-epochs",
        type=int,
        default=1,
        help="epochs at the constant --warmup-lr before cosine",
    )
    a("--warmup-lr", type=float, default=1e-4)
    a(
        "--normalization",
        choices=["backbone", "imagenet"],
        default="backbone",
        help=(
            "input mean/std: the backbone's (face Swin-T: 0.5/0.5), or ImageNet's as the "
            "released script uses"
        ),
    )
    a(
        "--image-size",
        type=int,
        default=None,
        help="working size (default: the backbone's, 112 for resnet18)",
    )
    a("--seed", type=int, default=29)
    a(
        "--num-workers",
        type=int,
        default=None,
        help="image-decoding processes (default: on CUDA the cores, shared among torchrun's "
        "processes; else 0)",
    )
    a("--output", default=None, help="output folder (default runs/<dataset>-<backbone>)")
    a("--resume", default=None, help="last.pt (or its folder) of a run to continue")
    a(
        "--overwrite",
        action="store_true",
        help="replace the run already in --output (refused without it)",
    )
    a("--lambda-s", type=float, default=1.0)
    a("--lambda-t", type=float, default=1.0)
    a("--lambda-c", type=float, default=1.0)
    a("--contrast", choices=["all_pairs", "per_sample"], default="all_pairs")
    a("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    a("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    a("--compile", action="store_true", help="torch.compile the model (GPU)")
    a("--sync-bn", action="store_true", help="torchrun on CUDA: SyncBatchNorm over all GPUs")
    a(
        "--sampler",
        choices=["auto", "random", "balanced"],
        default="auto",
        help="balanced = class-balanced sampling with replacement (auto: on for AffectNet)",
    )
    a(
        "--cache",
        choices=["auto", "off"],
        default="auto",
        help="off forces the streaming DataLoader",
    )
    a(
        "--val-fraction",
        type=float,
        default=0.0,
        help="carve this fraction of train to select best.pt on",
    )
    a("--num-train", type=int, default=2800, help="synthetic only")
    a("--num-test", type=int, default=700, help="synthetic only")
    a("--eval-batch-size", type=int, default=256)
    a("--log-every", type=int, default=50, help="steps between progress lines")
    a("--quiet", action="store_true")
    a("--demo", action="store_true", help="offline CPU demo on synthetic faces (see README)")
    return p


def get_args(argv=None):
    """Parse flags; apply the demo preset and, with --resume, the checkpoint's own arguments."""
    args = build_parser().parse_args(argv)
    shadow = build_parser()  # the same flags with no defaults: tells which ones were given
    for act in shadow._actions:
        act.default = argparse.SUPPRESS
    given = vars(shadow.parse_args(argv))
    if args.demo and not args.resume:
        for k, v in DEMO_PRESET.items():
            if k not in given:
                setattr(args, k, v)
    if args.resume:
        path = checkpoint.resolve_checkpoint_path(args.resume, "train")
        saved = checkpoint.load_checkpoint(path, "train")["args"]
        check_saved_flags(saved, build_parser(), path)  # every flag there, of its type
        clash = {
            k: (v, saved.get(k))
            for k, v in given.items()
            if k not in RESUME_OVERRIDES and k != "demo" and saved.get(k) != v
        }
        if clash:
            raise errors.BadInputError(
                f"--resume {path}: the checkpoint was made with different settings: "
                + ", ".join(
                    f"--{k.replace('_', '-')} {o} (checkpoint: {s})" for k, (o, s) in clash.items()
                )
            )
        args = argparse.Namespace(
            **{**saved, **{k: given[k] for k in given if k in RESUME_OVERRIDES}}
        )
        args.resume = path
        if "output" not in given:
            args.output = os.path.dirname(os.path.abspath(path))
    if args.image_size is None:
        args.image_size = BACKBONES[args.backbone]["input_size"] or 112
    if args.output is None:
        args.output = os.path.join("runs", f"{args.dataset}-{args.backbone}")
    errors.check_flags(args, errors.TRAIN_FLAGS)
    return args


def lr_factor(epoch, warmup_epochs, warmup_lr, base_lr, epochs):
    """Released schedule as a multiple of base_lr. Epochs < warmup_epochs: the constant warmup_lr;
    then cosine annealing with T_max = epochs counted from the first post-warm-up epoch (released:
    ConstantWarmupScheduler around CosineAnnealingLR(T_max=MAX_EPOCH)), so the last lr stays above
    0."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def _averages(sums, seen, ddp):
    """The running sums (ls, lt, lc, loss, correct) over every process's images, as averages, and
    the images."""
    totals = ddp.sum_(torch.cat([sums, sums.new_tensor([seen])]))
    names = ("ls", "lt", "lc", "loss", "correct")
    return dict(zip(names, (totals[:-1] / totals[-1]).tolist(), strict=True)), int(totals[-1])


def train_step(model, net, x, y, optimizer, scaler, args, precision, global_sum=None):
    """One SGD step on a batch; returns its (L_s, L_t, L_c, loss, accuracy) as a (5,) tensor on the
    device. Nothing is read back to the host and nothing is copied from it (under fp16 the
    GradScaler's own check for inf excepted), so a GPU is never made to wait. `model` is net or
    its compiled form, wrapped in DistributedDataParallel under torchrun; `global_sum` the
    reduction hook of the losses under torchrun (None for one process)."""
    device = next(net.parameters()).device
    # (B, 3, S, S), (B,)
    x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format(precision))
    y = y.to(device, non_blocking=True)
    # forward under autocast; the losses compute in float32 whatever the autocast dtype
    with autocast(precision, device):
        f, n, logits = model(x)  # (B, D), (B, D), (B, K)
    loss, terms = ke2nt_loss(
        features=f,
        neutral_features=n,
        logits=logits,
        anchors=net.anchors,
        labels=y,
        neutral_index=net.neutral_index,
        lambdas=(args.lambda_s, args.lambda_t, args.lambda_c),
        contrast=args.contrast,
        global_sum=global_sum,
    )
    # backward and SGD step (the scaler only acts under fp16)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        correct = (logits.argmax(1) == y).float().mean()
        return torch.stack([terms["ls"], terms["lt"], terms["lc"], loss.detach().float(), correct])


def train_one_epoch(
    net, model, train_batches, optimizer, scaler, args, precision, log_progress, ddp
):
    """One pass over the training batches; returns the epoch's averages over images (ls, lt, lc,
    loss, train_accuracy in %), the images seen and the seconds taken (over every process). The
    losses' means run over the global batch under torchrun (ddp.global_sum)."""
    net.train()
    # summed over images, kept on device: no host sync per step
    sums = torch.zeros(5, dtype=torch.float64, device=ddp.device)
    seen, started = 0, time.time()
    global_sum = ddp.global_sum if ddp.enabled else None
    for step, (x, y) in enumerate(train_batches, 1):
        batch = train_step(model, net, x, y, optimizer, scaler, args, precision, global_sum)
        sums += batch.double() * len(y)  # (5,)
        seen += len(y)
        if step % args.log_every == 0:
            avg, images = _averages(sums, seen, ddp)
            log_progress(step, avg, images / (time.time() - started))
    avg, seen = _averages(sums, seen, ddp)
    return dict(
        ls=avg["ls"],
        lt=avg["lt"],
        lc=avg["lc"],
        loss=avg["loss"],
        train_accuracy=100 * avg["correct"],
        images=seen,
        seconds=time.time() - started,
    )


def build_training(args, anchors, class_names, device, precision=None, log=print, ddp=None):
    """KE2NT on the device, its precision and memory layout (measured for --amp auto on a CPU, or
    the checkpoint's `precision` on --resume; under torchrun by process 0 at its share of the
    batch), SGD, the released lr schedule and the fp16 loss scaler."""
    ddp = ddp or distributed.Distributed()
    # a text-only "neutral" last if the data has none
    anchor_names = text_prompts.anchor_names(class_names)
    # a file that fits no layout
    with errors.user_errors(ValueError, prefix="--backbone-weights: "):
        backbone = build_backbone(args.backbone, weights=args.backbone_weights)
    net = KE2NT(
        backbone, anchors, text_prompts.neutral_index(anchor_names), num_classes=len(class_names)
    ).to(device)
    if precision is None:
        precision = ddp.from_main(
            lambda: choose_precision(
                args.amp,
                device,
                model=net,
                batch_size=args.batch_size // ddp.world,
                image_size=args.image_size,
                say=log,
            )
        )
    net = net.to(memory_format=memory_format(precision))
    optimizer = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, args.warmup_epochs, args.warmup_lr, args.lr, args.epochs)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=uses_grad_scaler(precision))
    return net, precision, optimizer, scheduler, scaler


def evaluate_epoch(model, splits, class_names, device, precision, ddp):
    """Test (and val) reports of this epoch's model, and the score best.pt is selected on: val
    accuracy when there is a val split, else test accuracy, as the released code does. Under
    torchrun each process predicts its whole batches and the confusion matrices are summed."""

    def report(split_batches):
        cm = torch.zeros(len(class_names), len(class_names), dtype=torch.long)
        if len(split_batches):
            preds, labels = predict(model, split_batches, device, precision)
            cm = confusion_matrix(preds, labels, len(class_names))
        return class_metrics(ddp.sum_(cm.to(ddp.device)).cpu(), class_names)

    test = report(splits.test)
    val = report(splits.val) if splits.val is not None else None
    return test, val, (val or test)["accuracy"]


def main(argv=None):
    args = get_args(argv)
    # one process, or one of torchrun's: its rank, device and backend; only process 0 prints, and
    # holds the --output folder's lock (`held`) until main ends, however it ends
    with distributed.process_group(args) as ddp, contextlib.ExitStack() as held:
        log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
        device = ddp.device
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        last_pt = os.path.join(args.output, "last.pt")
        if ddp.is_main:
            prepare_output(args, log, held)

        # data: batches and their generators (re-seeded every epoch); anchors t_k, computed once
        splits = batches.build_batches(args, ddp, log)
        class_names = splits.class_names
        resumed = checkpoint.load_checkpoint(args.resume, "train") if args.resume else None
        anchors, clip_id = ddp.from_main(lambda: run_anchors(args, class_names, resumed, log))

        # model, optimizer, lr schedule, loss scaler and the run's record; from last.pt on --resume
        net, precision, optimizer, scheduler, scaler = build_training(
            args, anchors, class_names, device, resumed and resumed.get("precision"), log, ddp
        )
        net = ddp.sync_bn(net, getattr(args, "sync_bn", False))  # SyncBatchNorm, torchrun --sync-bn
        run = new_run(args, anchors, class_names, clip_id, precision)
        training = (net, optimizer, scheduler, scaler)
        if resumed is not None:
            resume_run(resumed, training, run, args, log, ddp.world)
        model = net
        if args.compile:  # training's forward, and evaluation's classify, compiled
            model, net.classify = torch.compile(net), torch.compile(net.classify)
        trained = ddp.wrap(model)  # DistributedDataParallel under torchrun
        log(start_line(args, class_names, splits.train, device, precision, clip_id))

        progress = progress_logger(args, log, len(splits.train), run["epoch"])
        # checkpoints are written in the background; every way out of main waits for the last
        # write before the lock is released (an ExitStack closes in reverse order)
        writer = held.enter_context(checkpoint.BackgroundWriter())
        for epoch in range(run["epoch"] + 1, args.epochs + 1):
            # this epoch's draws from (seed, epoch); train at this epoch's lr, step the schedule,
            # evaluate process 0's model
            batches.seed_epoch(splits.generators, args.seed, epoch, ddp.rank)
            lr, started = optimizer.param_groups[0]["lr"], time.time()
            epoch_progress = functools.partial(progress, epoch, lr=lr)
            avg = train_one_epoch(
                net, trained, splits.train, optimizer, scaler, args, precision, epoch_progress, ddp
            )
            scheduler.step()
            ddp.share_buffers(net)
            test, val, score = evaluate_epoch(net, splits, class_names, device, precision, ddp)
            # record and save; nothing non-finite ever reaches a checkpoint, every process stops
            states = {"model": net.state_dict(), "optimizer": optimizer.state_dict()}
            hint = f"lower --lr (now {args.lr:g}) or try --amp off"
            when = f"after epoch {epoch}"
            finite_guard.require_finite(states, when, last_pt, hint, agree=ddp.all_agree)
            row = record_epoch(run, epoch, avg, lr, test, val, score, time.time() - started)
            if ddp.is_main:
                save_checkpoints(run, *training, args, test, writer, ddp.world)
            log(epoch_line(row, args.epochs))

        # report the last epoch (the honest number) beside the best-on-test one
        writer.wait()
        if not ddp.is_main:
            return None
        environment = environment_record(device, precision, run["clip"], ddp.record())
        metrics = write_metrics(args, last_pt, environment, splits.record)
        report_finish(metrics, args, last_pt, log)
        return metrics


if __name__ == "__main__":
    with errors.cli_errors(distributed.error_stream()):
        main()
