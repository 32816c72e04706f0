"""Train KE2NT: one plain loop, no framework.

    python train.py --demo                                   # offline, CPU, synthetic faces
    python train.py --dataset rafdb --data-root data/raf_db  # the paper's RAF-DB run (ResNet-18)
    python train.py --resume runs/rafdb-resnet18/last.pt     # continue a stopped run exactly

Defaults follow the released code (hangyu94/KE2NT, swint_raf_main.py): SGD, momentum 0.9, lr 2e-3, weight
decay 5e-4, batch 64 with drop_last, 50 epochs, the first at a constant 1e-4, then cosine annealing. The
anchors t_k are computed once, never per step. Batches come from tools/batches.py (a uint8 image cache with
batched augmentation, or per-sample streaming when the cache would not fit); their randomness is drawn
from generators saved in every checkpoint, so --resume is bit-exact on the CPU.

Outputs in --output: last.pt (everything --resume needs), best.pt (the model of the best epoch),
log.jsonl (one line per epoch) and metrics.json (the last epoch's test report: the number to report).
"""
import argparse
import datetime
import json
import math
import os
import random
import time

import torch

from tools import batches
from lib import checkpoint
import data
from lib import errors
import text_prompts
from evaluate import class_metrics, confusion_matrix, predict
from losses import ke2nt_loss
from model import BACKBONES, KE2NT, build_backbone
from lib.precision import autocast, choose_precision, describe, device_name, memory_format, uses_grad_scaler

# --demo: 64 px synthetic faces, ResNet-18 from scratch, a higher lr and no warm-up epoch (README).
DEMO_PRESET = dict(dataset="synthetic", backbone="resnet18", image_size=64, num_train=2800, num_test=700,
                   epochs=12, lr=0.05, warmup_epochs=0, device="cpu", num_workers=2, log_every=20,
                   output=os.path.join("runs", "demo"))
# flags that may differ between a run and its --resume (everything else comes from the checkpoint)
RESUME_OVERRIDES = {"resume", "output", "quiet", "num_workers", "device", "log_every", "overwrite"}


def build_parser():
    p = argparse.ArgumentParser(description="Train KE2NT (defaults: the released code's RAF-DB recipe).")
    a = p.add_argument
    a("--dataset", choices=data.DATASETS, default="rafdb")
    a("--data-root", default=None, help="dataset folder (see README for each layout)")
    a("--fold", type=int, default=None, help="CK+: the test fold (0-9, subject-independent)")
    a("--include-neutral", action="store_true", help="CK+: add the neutral first frames (8 classes)")
    a("--skip-missing", action="store_true", help="skip listed images that do not exist (their count is printed)")
    a("--crop-face", action="store_true", help="AffectNet: crop each image to the csv's face box")
    a("--list-file", default=None, help="list: 'relative/path label' file (default <root>/<split>_label.txt)")
    a("--classes", default=None, help="list/folder: class order, a dataset name or comma-separated words")
    a("--backbone", choices=sorted(BACKBONES), default="resnet18")
    a("--backbone-weights", default=None, help="pretrained backbone state_dict file (e.g. MS-Celeb-1M)")
    a("--clip", default="ViT-B/16", help="CLIP model name or path for the text anchors")
    a("--anchors", default=None, help="anchors file from text_prompts.save_anchors (overrides --clip)")
    a("--epochs", type=int, default=50)
    a("--batch-size", type=int, default=64)
    a("--lr", type=float, default=2e-3)
    a("--momentum", type=float, default=0.9)
    a("--weight-decay", type=float, default=5e-4)
    a("--warmup-epochs", type=int, default=1, help="epochs at the constant --warmup-lr before cosine")
    a("--warmup-lr", type=float, default=1e-4)
    a("--normalization", choices=["backbone", "imagenet"], default="backbone",
      help="input mean/std: the backbone's (face Swin-T: 0.5/0.5), or ImageNet's as the released script uses")
    a("--image-size", type=int, default=None, help="working size (default: the backbone's, 112 for resnet18)")
    a("--seed", type=int, default=29)
    a("--num-workers", type=int, default=None, help="image-decoding processes (default: the cores on CUDA, else 0)")
    a("--output", default=None, help="output folder (default runs/<dataset>-<backbone>)")
    a("--resume", default=None, help="last.pt (or its folder) of a run to continue")
    a("--overwrite", action="store_true", help="replace the run already in --output (refused without it)")
    a("--lambda-s", type=float, default=1.0)
    a("--lambda-t", type=float, default=1.0)
    a("--lambda-c", type=float, default=1.0)
    a("--contrast", choices=["all_pairs", "per_sample"], default="all_pairs")
    a("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    a("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    a("--compile", action="store_true", help="torch.compile the model (GPU)")
    a("--sampler", choices=["auto", "random", "balanced"], default="auto",
      help="balanced = class-balanced sampling with replacement (auto: on for AffectNet)")
    a("--cache", choices=["auto", "off"], default="auto", help="off forces the streaming DataLoader")
    a("--val-fraction", type=float, default=0.0, help="carve this fraction of train to select best.pt on")
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
        clash = {k: (v, saved.get(k)) for k, v in given.items()
                 if k not in RESUME_OVERRIDES and k != "demo" and saved.get(k) != v}
        if clash:
            raise errors.BadInputError(f"--resume {path}: the checkpoint was made with different settings: " +
                             ", ".join(f"--{k.replace('_', '-')} {o} (checkpoint: {s})" for k, (o, s) in clash.items()))
        args = argparse.Namespace(**{**saved, **{k: given[k] for k in given if k in RESUME_OVERRIDES}})
        args.resume = path
        if "output" not in given:
            args.output = os.path.dirname(os.path.abspath(path))
    if args.image_size is None:
        args.image_size = BACKBONES[args.backbone]["input_size"] or 112
    if args.output is None:
        args.output = os.path.join("runs", f"{args.dataset}-{args.backbone}")
    if args.num_workers is None:  # a GPU waits for one decoding process; the CPU has no cores to spare
        on_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        args.num_workers = len(os.sched_getaffinity(0)) if on_cuda and hasattr(os, "sched_getaffinity") else 0
    errors.check_flags(args, errors.TRAIN_FLAGS)
    return args


def lr_factor(epoch, warmup_epochs, warmup_lr, base_lr, epochs):
    """Released schedule as a multiple of base_lr. Epochs < warmup_epochs: the constant warmup_lr; then
    cosine annealing with T_max = epochs counted from the first post-warm-up epoch (released:
    ConstantWarmupScheduler around CosineAnnealingLR(T_max=MAX_EPOCH)), so the last lr stays above 0."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def make_anchors(args, class_names, log):
    """t_k (K, D), raw text-tower outputs, and the name of their source, computed once: from --anchors,
    else from --clip (random[:NAME] for a seeded random-init tower; the demo falls back to one when the
    CLIP weights are not in the cache). See text_prompts.anchors_for."""
    if args.anchors:
        saved = text_prompts.load_anchors(args.anchors, class_names=text_prompts.anchor_names(class_names))
        return saved["anchors"].float(), saved["clip"]
    clip = args.clip
    if args.demo and not text_prompts.is_random(clip) and not text_prompts.clip_weights_available(clip):
        clip = f"random:{clip}"
    with errors.user_errors(ValueError, FileNotFoundError, RuntimeError, prefix="--clip: "):
        return text_prompts.anchors_for(class_names, clip, args.seed, log)


def train_one_epoch(net, model, train_batches, optimizer, scaler, args, device, precision, log_progress):
    """One pass over the training batches; returns the epoch's averages over images (ls, lt, lc, loss,
    train_accuracy in %), the images seen and the seconds taken. `model` is net or its compiled form."""
    net.train()
    names = ("ls", "lt", "lc", "loss", "correct")
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)  # summed over images, kept on device
    seen, started = 0, time.time()
    lambdas = (args.lambda_s, args.lambda_t, args.lambda_c)
    for step, (x, y) in enumerate(train_batches, 1):
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format(precision))  # (B, 3, S, S)
        y = y.to(device, non_blocking=True)                                              # (B,)
        # forward under autocast; the losses compute in float32 whatever the autocast dtype
        with autocast(precision, device):
            f, n, logits = model(x)  # (B, D), (B, D), (B, K)
        loss, terms = ke2nt_loss(features=f, neutral_features=n, logits=logits, anchors=net.anchors, labels=y,
                                 neutral_index=net.neutral_index, lambdas=lambdas, contrast=args.contrast)
        # backward and SGD step (the scaler only acts under fp16)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        # running sums stay on the device: no host sync per step
        with torch.no_grad():
            correct = (logits.argmax(1) == y).float().mean()
            batch = torch.stack([terms["ls"], terms["lt"], terms["lc"], loss.detach().float(), correct])  # (5,)
            sums += batch.double() * len(y)
        seen += len(y)
        if step % args.log_every == 0:
            log_progress(step, dict(zip(names, (sums / seen).tolist())), seen / (time.time() - started))
    avg = dict(zip(names, (sums / seen).tolist()))
    return dict(ls=avg["ls"], lt=avg["lt"], lc=avg["lc"], loss=avg["loss"], train_accuracy=100 * avg["correct"],
                images=seen, seconds=time.time() - started)


def save_checkpoints(run, net, optimizer, scheduler, scaler, generators, args, test, writer=None):
    """After an epoch: best.pt when the selection score improved, then last.pt and log.jsonl, each written
    atomically; by a checkpoint.BackgroundWriter when given (on a GPU), else here. `run` holds the run's
    record (epoch, history, best, anchors, class_names, clip, meta, precision: the choice of
    lib/precision.py, reused by --resume and by evaluate.py)."""
    model_state = dict(model=net.state_dict(), args=vars(args), class_names=run["class_names"], anchors=run["anchors"],
                       clip=run["clip"], meta=run["meta"], epoch=run["epoch"], precision=run["precision"])
    files = [(model_state, "best.pt")] if run["best"]["epoch"] == run["epoch"] else []
    files.append((dict(model_state, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                       scaler=scaler.state_dict(), rng=batches.rng_state(generators), history=run["history"],
                       best=run["best"], last_test=test), "last.pt"))
    files.append(("".join(json.dumps(r) + "\n" for r in run["history"]), "log.jsonl"))
    files = [(obj, os.path.join(args.output, name)) for obj, name in files]
    if writer is not None:
        writer.write(files)
    else:
        for obj, path in files:
            checkpoint.save_atomic(obj, path)


def environment_record(device, precision, clip_id):
    """What a run needs beside its flags to be compared with another: versions, device, precision, the
    code's git commit (None outside a checkout) and the CLIP checkpoint's name and SHA256."""
    import platform
    import subprocess
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name, _, sha = clip_id.partition(" sha256:")
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                device=device_name(device), precision=precision,
                git_commit=commit, clip=name, clip_sha256=sha or None,
                random_anchors=text_prompts.is_random_source(clip_id))


def write_metrics(args, last_pt, environment, data_record):
    """metrics.json from the finished last.pt: the last epoch's test report (the number to report), the
    best epoch labelled with what it was selected on, the training time, and what is needed to compare
    runs: config (every resolved flag), environment and data (images per split and class, drops, a
    fingerprint of the label list)."""
    final = checkpoint.load_checkpoint(last_pt, "train")  # the finished state, also when resuming a run that had ended
    last, best = final["last_test"], final["best"]
    metrics = dict(test_accuracy=last["accuracy"], mean_class_accuracy=last["mean_class_accuracy"],
                   per_class_accuracy=last["per_class_accuracy"], confusion_matrix=last["confusion_matrix"],
                   class_names=final["class_names"], epochs=args.epochs, last_epoch=final["history"][-1],
                   best_epoch=best["epoch"], best=dict(best, note=(
                       "selected on the validation split carved from train (--val-fraction)"
                       if best["selected_on"] == "val" else
                       "selected on the TEST set, as the released code reports: optimistic, not a held-out number")),
                   anchors=final["clip"], train_seconds=sum(r["epoch_seconds"] for r in final["history"]),
                   config=vars(args), environment=environment, data=data_record)
    checkpoint.save_atomic(json.dumps(metrics, indent=2) + "\n", os.path.join(args.output, "metrics.json"))
    return metrics


def build_training(args, anchors, class_names, device, precision=None, log=print):
    """KE2NT on the device, its precision and memory layout (measured for --amp auto on a CPU, or the
    checkpoint's `precision` on --resume), SGD, the released lr schedule and the fp16 loss scaler."""
    anchor_names = text_prompts.anchor_names(class_names)  # a text-only "neutral" last if the data has none
    with errors.user_errors(ValueError, prefix="--backbone-weights: "):  # a file that fits no layout
        backbone = build_backbone(args.backbone, weights=args.backbone_weights)
    net = KE2NT(backbone, anchors, text_prompts.neutral_index(anchor_names), num_classes=len(class_names)).to(device)
    if precision is None:
        precision = choose_precision(args.amp, device, model=net, batch_size=args.batch_size,
                                     image_size=args.image_size, say=log)
    net = net.to(memory_format=memory_format(precision))
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, args.warmup_epochs, args.warmup_lr, args.lr, args.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=uses_grad_scaler(precision))
    return net, precision, optimizer, scheduler, scaler


def evaluate_epoch(model, test_batches, val_batches, class_names, device, precision):
    """Test (and val) reports of this epoch's model, and the score best.pt is selected on: val accuracy
    when there is a val split, else test accuracy, as the released code does."""
    def report(split_batches):
        preds, labels = predict(model, split_batches, device, precision)
        return class_metrics(confusion_matrix(preds, labels, len(class_names)), class_names)
    test = report(test_batches)
    val = report(val_batches) if val_batches is not None else None
    return test, val, (val or test)["accuracy"]


def prepare_output(args, log):
    """The output folder, made; a run already there is refused (unless --overwrite, or it is the run
    being resumed); temporary files of an interrupted save are removed. Returns the path of last.pt."""
    last_pt = os.path.join(args.output, "last.pt")
    if not (args.resume and os.path.abspath(last_pt) == os.path.abspath(args.resume)):
        checkpoint.refuse_overwrite(args.output, args.overwrite)  # a new run never replaces another's files
    os.makedirs(args.output, exist_ok=True)
    for stale in checkpoint.remove_stale_temporaries(args.output, names=checkpoint.RUN_FILES):
        log(f"removed {stale}: the temporary file of an interrupted save")
    return last_pt


def resume_run(resumed, parts, generators, run, args, log):
    """Load last.pt's states into (net, optimizer, scheduler, scaler), the generators and the run record."""
    for part, key in zip(parts, ("model", "optimizer", "scheduler", "scaler")):
        part.load_state_dict(resumed[key])
    batches.restore_rng_state(resumed["rng"], generators, log)
    run.update(epoch=resumed["epoch"], history=resumed["history"], best=resumed["best"])
    log(f"resumed from {args.resume} at epoch {run['epoch']}/{args.epochs}")


def record_epoch(run, epoch, avg, lr, test, val, score, seconds):
    """The epoch's row of log.jsonl, appended to the run's history; the best epoch so far updated."""
    row = dict(epoch=epoch, ls=avg["ls"], lt=avg["lt"], lc=avg["lc"], train_accuracy=avg["train_accuracy"], lr=lr,
               images_per_s=avg["images"] / avg["seconds"], test_accuracy=test["accuracy"],
               mean_class_accuracy=test["mean_class_accuracy"], epoch_seconds=seconds)
    row.update({"val_accuracy": val["accuracy"]} if val else {})
    run["epoch"] = epoch
    run["history"].append(row)
    if run["best"] is None or score > run["best"]["score"]:
        run["best"] = dict(score=score, epoch=epoch, selected_on="val" if val else "test",
                           test_accuracy=test["accuracy"], mean_class_accuracy=test["mean_class_accuracy"])
    return row


def report_finish(metrics, args, last_pt, log):
    b = metrics["best"]
    log(f"finished: last epoch test accuracy {metrics['test_accuracy']:.2f}%, mean class accuracy "
        f"{metrics['mean_class_accuracy']:.2f}% (the number to report); best-on-{b['selected_on']} epoch "
        f"{b['epoch']}: test accuracy {b['test_accuracy']:.2f}%")
    print(f"outputs in {args.output}: last.pt best.pt log.jsonl metrics.json", flush=True)
    if args.demo:
        log(f"next: python evaluate.py --checkpoint {last_pt} --dataset synthetic\n"
            f"      python evaluate.py --checkpoint {last_pt} --images YOUR_PHOTOS")


def main(argv=None):
    args = get_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    last_pt = prepare_output(args, log)

    # data: batches and the generators that make them resumable; anchors t_k, computed once
    splits = batches.build_batches(args, device, log)
    class_names = splits.class_names
    resumed = checkpoint.load_checkpoint(args.resume, "train") if args.resume else None
    if resumed is not None and resumed["class_names"] != class_names:
        raise errors.BadInputError(f"--resume {args.resume}: checkpoint classes {resumed['class_names']} "
                         f"differ from the dataset's {class_names}")
    anchors, clip_id = (resumed["anchors"], resumed["clip"]) if resumed else make_anchors(args, class_names, log)
    log("anchor cosines (text-tower outputs):\n" +
        text_prompts.similarity_table(anchors, text_prompts.anchor_names(class_names)))

    # model, optimizer, lr schedule, loss scaler and the run's record; restored from last.pt on --resume
    net, precision, optimizer, scheduler, scaler = build_training(
        args, anchors, class_names, device, resumed.get("precision") if resumed else None, log)
    mean, std = batches.input_normalization(args.backbone, args.normalization)
    meta = dict(backbone=args.backbone, image_size=args.image_size, mean=list(mean), std=list(std),
                dataset=args.dataset)
    run = dict(epoch=0, history=[], best=None, anchors=anchors, class_names=class_names, clip=clip_id,
               precision=precision, meta=meta)
    if resumed is not None:
        resume_run(resumed, (net, optimizer, scheduler, scaler), splits.generators, run, args, log)
    model = torch.compile(net) if args.compile else net
    log(f"{args.dataset}: {len(class_names)} classes, train batches/epoch {len(splits.train)}, "
        f"backbone {args.backbone} at {args.image_size} px, device {device}, precision {describe(precision)}, "
        f"anchors from {clip_id}, output {args.output}")

    progress = _progress_logger(args, log, len(splits.train), run["epoch"])
    writer = checkpoint.BackgroundWriter() if device.type == "cuda" else None  # CPU: epochs dwarf the writes
    for epoch in range(run["epoch"] + 1, args.epochs + 1):
        # train one epoch at this epoch's lr, step the schedule, evaluate
        lr, started = optimizer.param_groups[0]["lr"], time.time()
        avg = train_one_epoch(net, model, splits.train, optimizer, scaler, args, device, precision,
                              lambda step, a, rate: progress(epoch, step, a, rate, lr))
        scheduler.step()
        test, val, score = evaluate_epoch(model, splits.test, splits.val, class_names, device, precision)
        # record and save; nothing non-finite ever reaches a checkpoint
        states = {"model": net.state_dict(), "optimizer": optimizer.state_dict()}
        checkpoint.require_finite(states, f"after epoch {epoch}", last_pt,
                                  hint=f"lower --lr (now {args.lr:g}) or try --amp off")
        row = record_epoch(run, epoch, avg, lr, test, val, score, time.time() - started)
        save_checkpoints(run, net, optimizer, scheduler, scaler, splits.generators, args, test, writer)
        log(_epoch_line(row, args.epochs))

    # report the last epoch (the honest number) beside the best-on-test one
    if writer is not None:
        writer.wait()
    metrics = write_metrics(args, last_pt, environment_record(device, precision, run["clip"]), splits.record)
    report_finish(metrics, args, last_pt, log)
    return metrics


def _epoch_line(row, epochs):
    return (f"epoch {row['epoch']}/{epochs} done | Ls {row['ls']:.4f} Lt {row['lt']:.4f} Lc {row['lc']:.4f} | "
            f"train acc {row['train_accuracy']:.1f}% | test acc {row['test_accuracy']:.2f}% mean class "
            f"{row['mean_class_accuracy']:.2f}%" +
            (f" | val acc {row['val_accuracy']:.2f}%" if "val_accuracy" in row else "") +
            f" | {row['images_per_s']:.0f} img/s | {row['epoch_seconds']:.1f} s")


def _progress_logger(args, log, steps_per_epoch, start_epoch):
    """A progress line every --log-every steps: running averages, lr, speed and the time left."""
    started, total = time.time(), (args.epochs - start_epoch) * steps_per_epoch

    def progress(epoch, step, avg, rate, lr):
        done = (epoch - 1 - start_epoch) * steps_per_epoch + step
        eta = datetime.timedelta(seconds=int((time.time() - started) / done * (total - done)))
        log(f"epoch {epoch}/{args.epochs} step {step}/{steps_per_epoch} | Ls {avg['ls']:.4f} Lt {avg['lt']:.4f} "
            f"Lc {avg['lc']:.4f} | acc {100 * avg['correct']:.1f}% | lr {lr:.2e} | {rate:.0f} img/s | eta {eta}")
    return progress


if __name__ == "__main__":
    with errors.cli_errors():
        main()
