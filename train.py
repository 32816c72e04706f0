"""Train KE2NT: one plain loop, its phases top to bottom in main(), no framework.

    python train.py --demo                                   # offline, CPU, synthetic faces
    python train.py --dataset rafdb --data-root data/raf_db  # the paper's RAF-DB run (ResNet-18)
    python train.py --resume runs/rafdb-resnet18             # continue a stopped run exactly
    torchrun --standalone --nproc_per_node=4 train.py ...    # one model on 4 GPUs (DDP)

Defaults follow the released code (hangyu94/KE2NT, swint_raf_main.py). Each epoch's batches draw
from (seed, epoch), so --resume needs only the epoch and the run's flags (last.pt keeps both) to
continue bit-exact. Outputs in --output: last.pt, best.pt, log.jsonl and metrics.json (README).
"""

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import sys
import time

import torch

import data
import text_prompts
from lib import batches, checkpoint, errors, metrics
from lib.device import autocast, choose_precision, default_workers, describe, process_group
from losses import ke2nt_loss
from model import BACKBONES, KE2NT, build_backbone, input_normalization

# --demo: synthetic faces, ResNet-18 from scratch, a higher lr, no warm-up epoch (README)
DEMO_PRESET = dict(dataset="synthetic", image_size=48, num_train=3000, num_test=700, epochs=8)
DEMO_PRESET.update(batch_size=32, lr=0.05, warmup_epochs=0, device="cpu", num_workers=2)
DEMO_PRESET.update(log_every=20, output=os.path.join("runs", "demo"))
# flags a --resume may change; every other flag comes from the run's own (last.pt keeps them)
RESUME_OVERRIDES = {"resume", "output", "quiet", "num_workers", "device", "log_every", "overwrite"}


def build_parser():
    p = argparse.ArgumentParser(
        description="Train KE2NT (defaults: the released code's RAF-DB recipe).", allow_abbrev=False
    )
    a, whole, number = p.add_argument, errors.bounded(int, 1), errors.bounded(float, 0)
    count, fraction = errors.bounded(int, 0), errors.bounded(float, 0, 1)  # fraction: [0, 1)
    a("--dataset", choices=data.DATASETS, default="rafdb")
    data.add_flags(p)  # --data-root, --fold, --crop-face, ...
    a("--backbone", choices=sorted(BACKBONES), default="resnet18")
    a("--backbone-weights", default=None, help="pretrained backbone state_dict (e.g. MS-Celeb-1M)")
    a("--clip", default="ViT-B/16", help="CLIP model name or path for the text anchors")
    a("--clip-activation", choices=["quick_gelu", "gelu"], help="quick_gelu: OpenAI; gelu: LAION")
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
        path = args.resume  # a run's folder stands for its last.pt
        path = os.path.join(path, "last.pt") if os.path.isdir(path) else path
        saved = checkpoint.load_checkpoint(path, "train")["argv"]
        if not (isinstance(saved, list) and all(isinstance(a, str) for a in saved)):
            raise errors.BadInputError(f"--resume {path}: its 'argv' is not a list of flags")
        before, args = vars(_parse(saved)), _parse(saved + argv)  # a flag since removed: exit 2
        clash = [
            f"--{k.replace('_', '-')} {v} (the run's: {before[k]})"
            for k, v in vars(args).items()
            if k not in RESUME_OVERRIDES and v != before[k]
        ]
        if clash:
            msg = f"--resume {path}: the run was made with other settings: {', '.join(clash)}"
            raise errors.BadInputError(msg)
        args.resume, args.argv = path, saved
        if not any(a == "--output" or a.startswith("--output=") for a in argv):
            args.output = os.path.dirname(os.path.abspath(path))
    args.image_size = args.image_size or BACKBONES[args.backbone]["input_size"] or 112
    args.output = args.output or os.path.join("runs", f"{args.dataset}-{args.backbone}")
    return args


def lr_factor(epoch, warmup_epochs, warmup_lr, base_lr, epochs):
    """The released schedule as a multiple of base_lr: warmup_lr for the first warmup_epochs, then
    cosine annealing with T_max = epochs from the first epoch after them (released:
    ConstantWarmupScheduler around CosineAnnealingLR(T_max=MAX_EPOCH)): the last lr stays > 0."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


# ---------------------------------------------------------------- data


def load_data(args, ddp, log):
    """The run's data from its flags: the datasets, every split read with the train split's class
    list; the val split (FERPlus's own, or --val-fraction carved from train by a seeded
    permutation); their batches (lib/batches.py); and the record of what was read."""
    if args.num_workers is None:  # decoding processes: on a GPU the cores, shared by torchrun's
        args.num_workers = default_workers(ddp.device, ddp.local_world)
    options = data.dataset_options(args)
    if args.dataset == "synthetic":
        options.update(num_train=args.num_train, num_test=args.num_test, seed=args.seed)
        options.update(image_size=args.image_size)

    def read(split):
        return data.build_dataset(args.dataset, args.data_root, split, **options)

    splits = dict(train=read("train"))
    if args.dataset == "folder":  # train/'s class folders name the classes of every split
        options.setdefault("classes", list(splits["train"].classes))
    splits["test"] = read("test")
    # FERPlus ships its own validation split (FER2013Valid): best.pt is selected on it, as
    # Microsoft's src/train.py does, unless --val-fraction carves one from train instead
    if args.dataset == "ferplus" and not args.val_fraction:
        splits["val"] = read("valid")
    train_set, test_set, classes = splits["train"], splits["test"], splits["train"].classes
    for split, dataset in splits.items():
        if dataset.classes != classes:
            raise errors.BadInputError(
                f"{args.dataset}: the {split} split's classes {dataset.classes} are not the train "
                f"split's {classes}: one label would name two classes"
            )
    data.require_disjoint(train_set, test_set)
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed + 1))
    n_val = int(round(args.val_fraction * len(train_set)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    pool = train_set  # the images the train and val batches index: train, then a shipped val split
    if "val" in splits:
        val_idx = torch.arange(len(train_set), len(train_set) + len(splits["val"]))
        pool = data.FaceImages(train_set.samples + splits["val"].samples, classes)
    if len(train_idx) < args.batch_size:  # the incomplete last batch is dropped
        raise errors.BadInputError(
            f"{len(train_idx)} training images (after --val-fraction {args.val_fraction}), fewer "
            f"than one batch of --batch-size {args.batch_size}: lower it (or --val-fraction)"
        )
    mean, std = input_normalization(args.backbone, args.normalization)
    balanced = args.sampler == "balanced" or (
        args.sampler == "auto" and args.dataset.startswith("affectnet")  # very unequal classes
    )
    sizes = (args.image_size, mean, std, args.batch_size, args.eval_batch_size)
    recipe = batches.Recipe(*sizes, balanced, args.num_workers)
    made, generators = batches.make_batches(
        pool, test_set, train_idx, val_idx, recipe, ddp, args.cache == "auto", log
    )
    record = {split: batches.data_record(dataset) for split, dataset in splits.items()}
    record.update(val_carved_from_train=0 if "val" in splits else len(val_idx))
    record.update(train_after_val=len(train_idx))
    log(
        f"{args.dataset}: {len(classes)} classes, {len(made[0])} batches of {args.batch_size}/epoch"
    )
    return batches.Splits(*made, list(classes), generators, record)


# ---------------------------------------------------------------- anchors, model, resume


def make_anchors(args, splits, resumed, log):
    """t_k (K, D), raw text-tower outputs, and the name of their source, computed once: last.pt's
    on --resume, else from --anchors, else from the CLIP text tower --clip (the demo falls back to
    a seeded random-init tower when the CLIP weights are not in the cache)."""
    class_names = splits.class_names
    if resumed is not None:
        anchors, source = resumed["anchors"], resumed["clip"]
    elif args.anchors:
        with errors.user_errors(ValueError, FileNotFoundError, prefix="--anchors: "):
            anchors, _, _, source = text_prompts.load_anchors(args.anchors, class_names)
    else:
        clip, offline = args.clip, text_prompts.is_random(args.clip)
        if args.demo and not (offline or text_prompts.clip_weights_available(clip)):
            clip = f"random:{clip}"
        with errors.user_errors(ValueError, FileNotFoundError, RuntimeError, prefix="--clip: "):
            text = text_prompts.anchors_for(
                class_names, clip, args.seed, log, activation=args.clip_activation
            )
            anchors, source = text.anchors, text.source
    names = text_prompts.anchor_names(class_names)
    log(f"anchors from {source}; their cosines:\n" + text_prompts.similarity_table(anchors, names))
    return anchors, source


def build_training(args, anchors, class_names, device, resumed, log, ddp):
    """KE2NT on the device in channels-last, its precision (measured for --amp auto on a CPU by
    process 0, or last.pt's on --resume), SGD, the released lr schedule, the fp16 loss scaler."""
    with errors.user_errors(ValueError, FileNotFoundError, prefix="--backbone-weights: "):
        backbone = build_backbone(args.backbone, weights=args.backbone_weights)
    neutral = text_prompts.neutral_index(text_prompts.anchor_names(class_names))
    net = KE2NT(backbone, anchors, len(class_names), neutral).to(device)
    net = ddp.sync_bn(net, args.sync_bn)  # SyncBatchNorm under torchrun, with --sync-bn
    precision = resumed["precision"] if resumed else None
    if precision is None:
        b, size = args.batch_size // ddp.world, args.image_size
        precision = ddp.from_main(lambda: choose_precision(args.amp, device, net, b, size))
    log(f"{args.backbone} at {args.image_size} px on {device}, precision {describe(precision)}")
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, args.warmup_epochs, args.warmup_lr, args.lr, args.epochs)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision["amp"] == "fp16")
    return net, precision, optimizer, scheduler, scaler


def resume(args, resumed, states, run, splits, ddp, log):
    """Continue the run of last.pt: on the same data (the fingerprints of its label lists), from
    the states of its model, optimizer, schedule and scaler, with its record of the epochs."""
    for split in ("train", "val", "test"):
        now, then = splits.record.get(split), resumed["data"].get(split) or {}
        if now and now["fingerprint"] != then.get("fingerprint"):
            raise errors.BadInputError(
                f"--resume {args.resume}: its {split} split was {then.get('images')} images, "
                f"now {now['images']}: the images or labels changed; start a new run instead"
            )
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


# ---------------------------------------------------------------- one step, one epoch


def for_training(args, net, ddp):
    """(the module trained: `net`, compiled (its classify too) and in DistributedDataParallel as
    the run asks; the criterion: ke2nt_loss with the run's anchors, lambdas and reduction)."""
    model = net
    if args.compile:
        model, net.classify = torch.compile(net), torch.compile(net.classify)
    criterion = functools.partial(
        ke2nt_loss,
        anchors=net.anchors,
        neutral_index=net.neutral_index,
        lambdas=(args.lambda_s, args.lambda_t, args.lambda_c),
        contrast=args.contrast,
        global_sum=ddp.global_sum if ddp.enabled else None,
    )
    return ddp.wrap(model), criterion


def train_step(model, criterion, x, y, optimizer, scaler, precision):
    """One SGD step on a batch of `model` (for_training's) under `criterion` (the KE2NT loss):
    the loss's terms by name (ls, lt, lc, ...), the loss and the accuracy, as tensors on the
    device: nothing is read back to the host, so a GPU never waits."""
    device = next(model.parameters()).device
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)  # (B,3,S,S)
    y = y.to(device, non_blocking=True)  # (B,)
    # forward under autocast; the losses compute in float32 whatever the autocast dtype
    with autocast(precision, device):
        f, n, logits = model(x)  # (B, D), (B, D), (B, K)
    loss, terms = criterion(f, n, logits, labels=y)
    # backward and SGD step (the scaler acts under fp16 only)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    accuracy = (logits.detach().argmax(1) == y).float().mean()
    return dict(terms, loss=loss.detach().float(), accuracy=accuracy)


def add_up(sums, values, count):
    """Running sums over images of a step's values {name: tensor}, kept on the device in float32
    (no host sync per step; no float64, which some devices lack)."""
    for k, v in values.items():
        sums[k] = sums.get(k, 0) + v.float() * count
    return sums


def averages(sums, seen, ddp):
    """Running sums {name: tensor} over this process's `seen` images -> averages over every
    process's images (one all-reduce, one read-back), and the images."""
    totals = ddp.sum_(torch.stack([*sums.values(), torch.full_like(sums["loss"], seen)]))
    values = (totals[:-1] / totals[-1]).tolist()
    return dict(zip(sums, values, strict=True)), int(totals[-1])


def train_one_epoch(model, train_batches, criterion, optimizer, scaler, precision, ddp, progress):
    """One pass over the training batches: the averages of train_step's values over the epoch's
    images (every process's) and the images/s; progress(step, averages, images/s) every
    progress.every steps (--log-every)."""
    model.train()
    sums, seen, started = {}, 0, time.time()
    for step, (x, y) in enumerate(train_batches, 1):
        values = train_step(model, criterion, x, y, optimizer, scaler, precision)
        sums, seen = add_up(sums, values, len(y)), seen + len(y)
        if step % progress.every == 0:
            avg, images = averages(sums, seen, ddp)
            progress(step, avg, images / (time.time() - started))
    avg, images = averages(sums, seen, ddp)
    return avg, images / (time.time() - started)


def evaluate_epoch(net, splits, device, precision, ddp):
    """This epoch's test (and val) reports and the score best.pt is selected on: val accuracy when
    there is a val split, else test accuracy, as the released code does. Under torchrun each
    process predicts its whole batches and the confusion matrices are summed."""
    K = len(splits.class_names)

    def report(split_batches):
        cm = torch.zeros(K, K, dtype=torch.long)
        if len(split_batches):
            logits, labels = metrics.predict_logits(net, split_batches, device, precision)
            cm = metrics.confusion_matrix(logits.argmax(1), labels, K)
        return metrics.class_metrics(ddp.sum_(cm.to(ddp.device)).cpu(), splits.class_names)

    test = report(splits.test)
    val = report(splits.val) if splits.val is not None else None
    return test, val, (val or test)["accuracy"]


def all_finite(net, optimizer):
    """Every floating tensor of the model and the optimizer finite (one host sync)."""
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    tensors = [t for t in [*net.state_dict().values(), *state] if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# ---------------------------------------------------------------- the epoch's record and files


def record_epoch(run, epoch, avg, lr, rate, started, test, val, score):
    """The epoch's row of log.jsonl (the loss's terms by name, accuracies, lr, speed) into the run's
    history, its test report as the last one, and the best epoch so far; returns the row."""
    row = dict(epoch=epoch, **avg, lr=lr, images_per_s=rate)
    row["train_accuracy"] = 100 * row.pop("accuracy")
    row.update({f"{k}_accuracy": r["accuracy"] for k, r in (("test", test), ("val", val)) if r})
    row.update(mean_class_accuracy=test["mean_class_accuracy"], epoch_seconds=time.time() - started)
    run.update(epoch=epoch, last_test=test, history=run["history"] + [row])
    if run["best"] is None or score > run["best"]["score"]:
        best = dict(score=score, epoch=epoch, selected_on="val" if val else "test")
        best.update(test_accuracy=test["accuracy"], mean_class_accuracy=row["mean_class_accuracy"])
        run["best"] = best
    return row


def model_record(args, splits, anchors, source, precision):
    """What every checkpoint holds beside the weights: what evaluate.py needs to rebuild the model
    and read images as training did (flags, classes, anchors, input size and normalisation)."""
    mean, std = input_normalization(args.backbone, args.normalization)
    meta = dict(backbone=args.backbone, image_size=args.image_size, mean=mean, std=std)
    record = dict(args=vars(args), class_names=splits.class_names, anchors=anchors, clip=source)
    return dict(record, meta=meta, precision=precision)


def epoch_files(args, run, states, model_file, splits, ddp):
    """best.pt when the score improved (the model, model_record), last.pt (also the optimizer,
    schedule, scaler, the run's record, argv and data, for --resume), log.jsonl."""
    model_file = dict(model_file, model=states["model"].state_dict(), epoch=run["epoch"])
    train_file = dict(model_file, **run, argv=args.argv, world_size=ddp.world, data=splits.record)
    train_file.update({k: v.state_dict() for k, v in states.items() if k != "model"})
    files = [(model_file, "best.pt")] if run["best"]["epoch"] == run["epoch"] else []
    files += [(train_file, "last.pt")]
    files += [("".join(json.dumps(r) + "\n" for r in run["history"]), "log.jsonl")]
    return [(obj, os.path.join(args.output, name)) for obj, name in files]


def finish(args, run, splits, env, log):
    """metrics.json, the run's report: the last epoch's test accuracy (the number to report)
    beside the best epoch's, the flags, the environment and the data read."""
    report = metrics.run_metrics(run, splits.class_names, vars(args), env, splits.record)
    checkpoint.save_atomic(json.dumps(report, indent=2) + "\n", f"{args.output}/metrics.json")
    last, best = run["last_test"], run["best"]
    log(
        f"finished: last epoch test accuracy {last['accuracy']:.2f}%, mean class accuracy "
        f"{last['mean_class_accuracy']:.2f}% (the number to report); best-on-"
        f"{best['selected_on']} epoch {best['epoch']}: {best['test_accuracy']:.2f}%"
    )
    print(f"outputs in {args.output}: last.pt best.pt log.jsonl metrics.json", flush=True)
    if args.demo:
        log(f"next: python evaluate.py --checkpoint {args.output}/last.pt --dataset synthetic")
    return report


def progress_line(log, args, epoch, lr, steps, clock):
    """progress(step, averages, images/s): the line a running epoch prints every --log-every
    steps, with the time the run has left (clock: its start and first epoch)."""
    started, first = clock

    def progress(step, avg, rate):
        done, left = (epoch - 1 - first) * steps + step, (args.epochs + 1 - epoch) * steps - step
        eta = datetime.timedelta(seconds=int((time.time() - started) / done * left))
        terms = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if k != "accuracy")
        log(
            f"epoch {epoch}/{args.epochs} step {step}/{steps} | {terms} | acc "
            f"{100 * avg['accuracy']:.1f}% | lr {lr:.2e} | {rate:.0f} img/s | eta {eta}"
        )

    progress.every = args.log_every
    return progress


# ---------------------------------------------------------------- the run


def non_finite_note(args, epoch):
    kept = f"{args.output}/last.pt holds the last good state" if epoch > 1 else "none was saved"
    return (
        f"stopping after epoch {epoch}: nan or inf in the model or optimizer; nothing was saved "
        f"({kept}); lower --lr (now {args.lr:g}) or try --amp off"
    )


def resume_hint(output):
    """What a Ctrl-C says: the run continues from its last.pt, or was stopped before one."""
    last_pt = os.path.join(output, "last.pt")
    kept = "no epoch had ended"
    if os.path.isfile(last_pt):
        kept = f"{last_pt} holds the last finished epoch"
    return f"stopped (Ctrl-C); {kept}: continue with python train.py --resume {output}"


def main(argv=None):
    args = get_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    # one process, or one of torchrun's (only process 0 prints and holds --output's lock); Ctrl-C
    # ends in one line saying how to go on, once every write was awaited
    stop = errors.on_ctrl_c(lambda: resume_hint(args.output))
    group = process_group(args.device, args.batch_size, args.sync_bn)
    with stop, group as ddp, contextlib.ExitStack() as held:
        device = ddp.device
        torch.manual_seed(args.seed)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        if ddp.is_main:  # one run per folder, locked while it runs
            held.enter_context(checkpoint.run_folder(args.output, args.resume, args.overwrite))

        # data: the splits' batches and their generators (re-seeded every epoch)
        splits = load_data(args, ddp, log)
        resumed = checkpoint.load_checkpoint(args.resume, "train") if args.resume else None
        # anchors t_k, computed once (the run's own on --resume)
        anchors, source = ddp.from_main(lambda: make_anchors(args, splits, resumed, log))

        # model, optimizer, lr schedule, loss scaler; on --resume their states from last.pt
        net, precision, optimizer, scheduler, scaler = build_training(
            args, anchors, splits.class_names, device, resumed, log, ddp
        )
        run = dict(epoch=0, history=[], best=None, last_test=None)
        states = dict(model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        if resumed is not None:
            resume(args, resumed, states, run, splits, ddp, log)
        model, criterion = for_training(args, net, ddp)  # compiled, DDP; the loss
        model_file = model_record(args, splits, anchors, source, precision)  # in every .pt

        # checkpoints are written in the background; every way out waits for the last write
        # before the lock is released (an ExitStack closes in reverse order)
        writer = held.enter_context(checkpoint.BackgroundWriter())
        clock = (time.time(), run["epoch"])
        for epoch in range(run["epoch"] + 1, args.epochs + 1):
            # this epoch's draws from (seed, epoch); train at this epoch's lr, step the schedule
            batches.seed_epoch(splits.generators, args.seed, epoch, ddp.rank)
            lr, started = optimizer.param_groups[0]["lr"], time.time()
            progress = progress_line(log, args, epoch, lr, len(splits.train), clock)
            avg, rate = train_one_epoch(
                model, splits.train, criterion, optimizer, scaler, precision, ddp, progress
            )
            scheduler.step()

            # evaluate process 0's model (its BatchNorm statistics on every process)
            ddp.share_buffers(net)
            test, val, score = evaluate_epoch(net, splits, device, precision, ddp)

            # nothing non-finite ever reaches a checkpoint: every process stops
            if not ddp.all_agree(all_finite(net, optimizer)):
                raise errors.NonFiniteError(non_finite_note(args, epoch))

            # record the epoch; save best.pt when the score improved, last.pt, log.jsonl
            row = record_epoch(run, epoch, avg, lr, rate, started, test, val, score)
            if ddp.is_main:
                writer.write(epoch_files(args, run, states, model_file, splits, ddp))
            log(
                f"epoch {epoch}/{args.epochs} done | "
                + " | ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            )

        # report the last epoch (the honest number) beside the best one
        writer.wait()
        if not ddp.is_main:
            return None
        env = metrics.environment(device, precision, source, ddp.world, ddp.backend)
        return finish(args, run, splits, env, log)


if __name__ == "__main__":
    with errors.cli_errors():
        main()
