"""Train KE2NT: one plain loop, no framework.

    python train.py --demo                                   # offline, CPU, synthetic faces
    python train.py --dataset rafdb --data-root data/raf_db  # the paper's RAF-DB run (ResNet-18)
    python train.py --resume runs/rafdb-resnet18/last.pt     # continue a stopped run exactly
    torchrun --standalone --nproc_per_node=4 train.py ...    # one model on 4 GPUs (DDP)

Defaults follow the released code (hangyu94/KE2NT, swint_raf_main.py): SGD, momentum 0.9, lr 2e-3,
weight decay 5e-4, batch 64 with drop_last, 50 epochs, the first at a constant 1e-4, then cosine
annealing. The anchors t_k are computed once. Each epoch's batches draw from (seed, epoch), so
--resume needs only the epoch and the run's flags (last.pt keeps both) to continue bit-exact.
Outputs in --output: last.pt, best.pt (the best epoch's model), log.jsonl (a line per epoch) and
metrics.json (the last epoch's test report: the number to report). Under torchrun each process
drives one device, --batch-size stays the global batch, and only process 0 prints and writes.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import time

import torch

import data
import text_prompts
from lib import batches, checkpoint, errors
from lib.device import autocast, choose_precision, describe, error_stream, process_group
from lib.metrics import class_metrics, confusion_matrix, environment, predict_logits, run_metrics
from losses import ke2nt_loss
from model import BACKBONES, KE2NT, build_backbone, input_normalization

# --demo: synthetic faces, ResNet-18 from scratch, a higher lr, no warm-up epoch (README)
DEMO_PRESET = dict(
    dataset="synthetic",
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
# flags a --resume may change; every other flag comes from the run's own (last.pt keeps them)
RESUME_OVERRIDES = {"resume", "output", "quiet", "num_workers", "device", "log_every", "overwrite"}


def build_parser():
    p = argparse.ArgumentParser(
        description="Train KE2NT (defaults: the released code's RAF-DB recipe).", allow_abbrev=False
    )
    a, whole, number = p.add_argument, errors.bounded(int, 1), errors.bounded(float, 0)
    count, fraction = errors.bounded(int, 0), errors.bounded(float, 0, 1)  # fraction: [0, 1)
    a("--dataset", choices=data.DATASETS, default="rafdb")
    a("--data-root", default=None, help="dataset folder (see README for each layout)")
    a("--fold", type=errors.bounded(int, 0, 10), default=None, help="CK+: the test fold (0-9)")
    a("--include-neutral", action="store_true", help="CK+: add the neutral first frames")
    a("--skip-missing", action="store_true", help="skip listed images that do not exist")
    a("--crop-face", action="store_true", help="AffectNet: crop each image to the csv's face box")
    a("--list-file", default=None, help="list: 'path label' file (<root>/<split>_label.txt)")
    a("--classes", default=None, help="list/folder: class order, a dataset name or 'w1,w2,...'")
    a("--backbone", choices=sorted(BACKBONES), default="resnet18")
    a("--backbone-weights", default=None, help="pretrained backbone state_dict (e.g. MS-Celeb-1M)")
    a("--clip", default="ViT-B/16", help="CLIP model name or path for the text anchors")
    a("--anchors", default=None, help="anchors file from text_prompts.py (overrides --clip)")
    a("--epochs", type=whole, default=50)
    a("--batch-size", type=whole, default=64)
    a("--lr", type=errors.bounded(float, 0, low_open=True), default=2e-3)
    a("--momentum", type=fraction, default=0.9)
    a("--weight-decay", type=number, default=5e-4)
    a("--warmup-epochs", type=count, default=1, help="epochs at --warmup-lr")
    a("--warmup-lr", type=number, default=1e-4)
    a("--normalization", choices=["backbone", "imagenet"], default="backbone", help="mean/std")
    a("--image-size", type=whole, default=None, help="default: the backbone's, 112 for resnet18")
    a("--seed", type=errors.bounded(int, 0, 2**63), default=29)
    a("--num-workers", type=count, default=None, help="default: on CUDA the cores, else 0")
    a("--output", default=None, help="output folder (default runs/<dataset>-<backbone>)")
    a("--resume", default=None, help="last.pt (or its folder) of a run to continue")
    a("--overwrite", action="store_true", help="replace the run already in --output")
    a("--lambda-s", type=number, default=1.0)
    a("--lambda-t", type=number, default=1.0)
    a("--lambda-c", type=number, default=1.0)
    a("--contrast", choices=["all_pairs", "per_sample"], default="all_pairs")
    a("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    a("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    a("--compile", action="store_true", help="torch.compile the model (GPU)")
    a("--sync-bn", action="store_true", help="torchrun on CUDA: SyncBatchNorm over all GPUs")
    a("--sampler", choices=["auto", "random", "balanced"], default="auto", help="auto: AffectNet")
    a("--cache", choices=["auto", "off"], default="auto", help="off: stream from disk")
    a("--val-fraction", type=fraction, default=0.0, help="of train, to pick best.pt on")
    a("--num-train", type=whole, default=2800, help="synthetic only")
    a("--num-test", type=whole, default=700, help="synthetic only")
    a("--eval-batch-size", type=whole, default=256)
    a("--log-every", type=whole, default=50, help="steps between progress lines")
    a("--quiet", action="store_true")
    a("--demo", action="store_true", help="offline CPU demo on synthetic faces (see README)")
    return p


def _parse(argv):
    parser = build_parser()
    if "--demo" in argv:
        parser.set_defaults(**DEMO_PRESET)
    return parser.parse_args(argv)


def get_args(argv=None):
    """The flags; with --resume, the run's own flags (kept in its last.pt) with these on top: a
    flag given now that would change the run is refused, except those in RESUME_OVERRIDES."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, args.argv = _parse(argv), argv
    if args.resume:
        path = args.resume
        path = os.path.join(path, "last.pt") if os.path.isdir(path) else path
        saved = checkpoint.load_checkpoint(path, "train")["argv"]
        if not (isinstance(saved, list) and all(isinstance(a, str) for a in saved)):
            raise errors.BadInputError(f"--resume {path}: its 'argv' is not a list of flags")
        before = _parse(saved)
        args = _parse(saved + argv)  # a flag since removed: argparse names it (exit 2)
        clash = [
            k for k, v in vars(args).items() if k not in RESUME_OVERRIDES and v != vars(before)[k]
        ]
        if clash:
            raise errors.BadInputError(
                f"--resume {path}: the run was made with other settings: "
                + ", ".join(
                    f"--{k.replace('_', '-')} {vars(args)[k]} (the run's: {vars(before)[k]})"
                    for k in clash
                )
            )
        args.resume, args.argv = path, saved
        if not any(a == "--output" or a.startswith("--output=") for a in argv):
            args.output = os.path.dirname(os.path.abspath(path))
    args.image_size = args.image_size or BACKBONES[args.backbone]["input_size"] or 112
    args.output = args.output or os.path.join("runs", f"{args.dataset}-{args.backbone}")
    return args


def lr_factor(epoch, warmup_epochs, warmup_lr, base_lr, epochs):
    """Released schedule as a multiple of base_lr. Epochs < warmup_epochs: the constant warmup_lr;
    then cosine annealing with T_max = epochs counted from the first post-warm-up epoch (released:
    ConstantWarmupScheduler around CosineAnnealingLR(T_max=MAX_EPOCH)), so the last lr stays above
    0."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def make_anchors(args, class_names, resumed, log):
    """t_k (K, D), raw text-tower outputs, and the name of their source, computed once: last.pt's
    on --resume, else from --anchors, else from the CLIP text tower --clip (the demo falls back to
    a seeded random-init tower when the CLIP weights are not in the cache)."""
    if resumed is not None:
        if resumed["class_names"] != class_names:
            raise errors.BadInputError(
                f"--resume {args.resume}: its classes {resumed['class_names']} differ from the "
                f"dataset's {class_names}"
            )
        anchors, source = resumed["anchors"], resumed["clip"]
    elif args.anchors:
        with errors.user_errors(ValueError, FileNotFoundError, prefix="--anchors: "):
            saved = text_prompts.load_anchors(args.anchors, text_prompts.anchor_names(class_names))
        anchors, source = saved["anchors"].float(), saved["clip"]
    else:
        clip = args.clip
        if args.demo and not (
            text_prompts.is_random(clip) or text_prompts.clip_weights_available(clip)
        ):
            clip = f"random:{clip}"
        with errors.user_errors(ValueError, FileNotFoundError, RuntimeError, prefix="--clip: "):
            anchors, _, _, source = text_prompts.anchors_for(class_names, clip, args.seed, log)
    names = text_prompts.anchor_names(class_names)
    log("anchor cosines (text-tower outputs):\n" + text_prompts.similarity_table(anchors, names))
    return anchors, source


def build_training(args, anchors, class_names, device, precision, log, ddp):
    """KE2NT on the device in channels-last, its precision (measured for --amp auto on a CPU by
    process 0, or last.pt's on --resume), SGD, the released lr schedule, the fp16 loss scaler."""
    with errors.user_errors(ValueError, FileNotFoundError, prefix="--backbone-weights: "):
        backbone = build_backbone(args.backbone, weights=args.backbone_weights)
    neutral = text_prompts.neutral_index(text_prompts.anchor_names(class_names))
    net = KE2NT(backbone, anchors, len(class_names), neutral).to(device)
    if precision is None:
        b, size = args.batch_size // ddp.world, args.image_size
        precision = ddp.from_main(lambda: choose_precision(args.amp, device, net, b, size))
    log(f"precision: {describe(precision)}")
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, args.warmup_epochs, args.warmup_lr, args.lr, args.epochs)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision["amp"] == "fp16")
    return net, precision, optimizer, scheduler, scaler


def train_step(model, net, x, y, optimizer, scaler, args, precision, global_sum=None):
    """One SGD step on a batch; returns the loss's terms by name (ls, lt, lc, ...), the loss and
    the accuracy, as tensors on the device: nothing is read back to the host, so a GPU never
    waits. `model` is net or its compiled form, in DistributedDataParallel under torchrun;
    `global_sum` the losses' reduction hook under torchrun (None for one process)."""
    device = next(net.parameters()).device
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)  # (B,3,S,S)
    y = y.to(device, non_blocking=True)  # (B,)
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
    # backward and SGD step (the scaler acts under fp16 only)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    accuracy = (logits.detach().argmax(1) == y).float().mean()
    return dict(terms, loss=loss.detach().float(), accuracy=accuracy)


def averages(sums, seen, ddp):
    """Running sums {name: tensor} over this process's `seen` images -> averages over every
    process's images (one all-reduce, one read-back), and the images."""
    totals = ddp.sum_(torch.stack([*sums.values(), torch.full_like(sums["loss"], seen)]))
    values = (totals[:-1] / totals[-1]).tolist()
    return dict(zip(sums, values, strict=True)), int(totals[-1])


def train_one_epoch(net, model, train_batches, optimizer, scaler, args, precision, progress, ddp):
    """One pass over the training batches: the averages of train_step's values over the epoch's
    images (every process's), the images seen and the seconds taken."""
    net.train()
    sums, seen, started = {}, 0, time.time()
    global_sum = ddp.global_sum if ddp.enabled else None
    for step, (x, y) in enumerate(train_batches, 1):
        values = train_step(model, net, x, y, optimizer, scaler, args, precision, global_sum)
        for k, v in values.items():  # summed over images, on the device: no host sync per step
            sums[k] = sums.get(k, 0) + v.double() * len(y)
        seen += len(y)
        if step % args.log_every == 0:
            avg, images = averages(sums, seen, ddp)
            progress(step, avg, images / (time.time() - started))
    avg, seen = averages(sums, seen, ddp)
    return avg, seen, time.time() - started


def evaluate_epoch(model, splits, class_names, device, precision, ddp):
    """This epoch's test (and val) reports and the score best.pt is selected on: val accuracy when
    there is a val split, else test accuracy, as the released code does. Under torchrun each
    process predicts its whole batches and the confusion matrices are summed."""

    def report(split_batches):
        cm = torch.zeros(len(class_names), len(class_names), dtype=torch.long)
        if len(split_batches):
            logits, labels = predict_logits(model, split_batches, device, precision)
            cm = confusion_matrix(logits.argmax(1), labels, len(class_names))
        return class_metrics(ddp.sum_(cm.to(ddp.device)).cpu(), class_names)

    test = report(splits.test)
    val = report(splits.val) if splits.val is not None else None
    return test, val, (val or test)["accuracy"]


def all_finite(net, optimizer):
    """Every floating tensor of the model and the optimizer finite (one host sync)."""
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    tensors = [t for t in [*net.state_dict().values(), *state] if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def main(argv=None):
    args = get_args(argv)
    # one process, or one of torchrun's; only process 0 prints and holds --output's lock (`held`)
    with process_group(args) as ddp, contextlib.ExitStack() as held:
        log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
        device = ddp.device
        torch.manual_seed(args.seed)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        last_pt = os.path.join(args.output, "last.pt")
        if ddp.is_main:  # one run per folder
            held.enter_context(checkpoint.run_folder(args.output, args.resume, args.overwrite))

        # data: batches and their generators (re-seeded every epoch); anchors t_k, computed once
        splits = batches.build_batches(args, ddp, log)
        class_names = splits.class_names
        resumed = checkpoint.load_checkpoint(args.resume, "train") if args.resume else None
        anchors, source = ddp.from_main(lambda: make_anchors(args, class_names, resumed, log))

        # model, optimizer, lr schedule, loss scaler; their states from last.pt on --resume
        precision = resumed and resumed["precision"]
        net, precision, optimizer, scheduler, scaler = build_training(
            args, anchors, class_names, device, precision, log, ddp
        )
        net = ddp.sync_bn(net, args.sync_bn)
        mean, std = input_normalization(args.backbone, args.normalization)
        meta = dict(backbone=args.backbone, image_size=args.image_size, mean=mean, std=std)
        run = dict(epoch=0, history=[], best=None, last_test=None)
        states = dict(model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        if resumed is not None:
            for key, part in states.items():
                try:
                    part.load_state_dict(resumed[key])
                except Exception as e:  # what does not fit of a file's content is the file's
                    why = " ".join(str(e).split())[:200]
                    msg = f"--resume {args.resume}: its {key} does not fit: {why}"
                    raise errors.BadInputError(msg) from None
            run.update({k: resumed[k] for k in run})
            note = "" if resumed["world_size"] == ddp.world else ", not bit-exact (world size)"
            log(f"resumed {args.resume} at epoch {run['epoch']}{note}")
        model = net
        if args.compile:  # training's forward, and evaluation's classify, compiled
            model, net.classify = torch.compile(net), torch.compile(net.classify)
        trained = ddp.wrap(model)  # DistributedDataParallel under torchrun
        log(
            f"{args.dataset}: {len(class_names)} classes, {len(splits.train)} batches/epoch, "
            f"{args.backbone} at {args.image_size} px on {device}, anchors from {source}, "
            f"output {args.output}"
        )

        # checkpoints are written in the background; every way out of main waits for the last
        # write before the lock is released (an ExitStack closes in reverse order)
        writer = held.enter_context(checkpoint.BackgroundWriter())
        started_run, steps, first = time.time(), len(splits.train), run["epoch"]
        for epoch in range(run["epoch"] + 1, args.epochs + 1):
            # this epoch's draws from (seed, epoch); train at this epoch's lr, step the schedule
            batches.seed_epoch(splits.generators, args.seed, epoch, ddp.rank)
            lr, started = optimizer.param_groups[0]["lr"], time.time()

            def progress(step, avg, rate, epoch=epoch, lr=lr):
                done = (epoch - 1 - first) * steps + step
                left = (args.epochs - first) * steps - done
                eta = datetime.timedelta(seconds=int((time.time() - started_run) / done * left))
                terms = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if k != "accuracy")
                log(
                    f"epoch {epoch}/{args.epochs} step {step}/{steps} | {terms} | acc "
                    f"{100 * avg['accuracy']:.1f}% | lr {lr:.2e} | {rate:.0f} img/s | eta {eta}"
                )

            avg, images, seconds = train_one_epoch(
                net, trained, splits.train, optimizer, scaler, args, precision, progress, ddp
            )
            scheduler.step()

            # evaluate process 0's model (its BatchNorm statistics on every process)
            ddp.share_buffers(net)
            test, val, score = evaluate_epoch(net, splits, class_names, device, precision, ddp)

            # nothing non-finite ever reaches a checkpoint: every process stops
            if not ddp.all_agree(all_finite(net, optimizer)):
                kept = f"{last_pt} holds the last good state" if epoch > 1 else "none was saved"
                raise errors.NonFiniteError(
                    f"stopping after epoch {epoch}: nan or inf in the model or optimizer; nothing "
                    f"was saved ({kept}); lower --lr (now {args.lr:g}) or try --amp off"
                )

            # record the epoch: its row of log.jsonl, by name; the best epoch so far
            row = dict(epoch=epoch, **avg, lr=lr, images_per_s=images / seconds)
            row["train_accuracy"] = 100 * row.pop("accuracy")
            row.update(
                {f"{k}_accuracy": r["accuracy"] for k, r in (("test", test), ("val", val)) if r}
            )
            row.update(
                mean_class_accuracy=test["mean_class_accuracy"], epoch_seconds=time.time() - started
            )
            run.update(epoch=epoch, last_test=test, history=run["history"] + [row])
            if run["best"] is None or score > run["best"]["score"]:
                run["best"] = dict(
                    score=score,
                    epoch=epoch,
                    selected_on="val" if val else "test",
                    test_accuracy=test["accuracy"],
                    mean_class_accuracy=test["mean_class_accuracy"],
                )

            # save: best.pt when the score improved, last.pt, log.jsonl (atomic, in background)
            if ddp.is_main:
                model_file = dict(
                    model=net.state_dict(),
                    args=vars(args),
                    class_names=class_names,
                    anchors=anchors,
                    clip=source,
                    meta=meta,
                    precision=precision,
                    epoch=epoch,
                )
                train_file = dict(model_file, **run, argv=args.argv, world_size=ddp.world)
                train_file.update({k: v.state_dict() for k, v in states.items() if k != "model"})
                files = [(model_file, "best.pt")] if run["best"]["epoch"] == epoch else []
                files += [(train_file, "last.pt")]
                files += [("".join(json.dumps(r) + "\n" for r in run["history"]), "log.jsonl")]
                writer.write([(obj, os.path.join(args.output, name)) for obj, name in files])
            done = " | ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            log(f"epoch {epoch}/{args.epochs} done | {done}")

        # report the last epoch (the honest number) beside the best-on-test one
        writer.wait()
        if not ddp.is_main:
            return None
        env = environment(device, precision, source, ddp.world, ddp.backend)
        metrics = run_metrics(run, class_names, vars(args), env, splits.record)
        last, best = run["last_test"], run["best"]
        text = json.dumps(metrics, indent=2) + "\n"
        checkpoint.save_atomic(text, os.path.join(args.output, "metrics.json"))
        log(
            f"finished: last epoch test accuracy {last['accuracy']:.2f}%, mean class accuracy "
            f"{last['mean_class_accuracy']:.2f}% (the number to report); best-on-"
            f"{best['selected_on']} epoch {best['epoch']}: {best['test_accuracy']:.2f}%"
        )
        print(f"outputs in {args.output}: last.pt best.pt log.jsonl metrics.json", flush=True)
        if args.demo:
            log(f"next: python evaluate.py --checkpoint {last_pt} --dataset synthetic")
        return metrics


if __name__ == "__main__":
    with errors.cli_errors(error_stream()):
        main()
