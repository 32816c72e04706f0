"""The run's records: its output folder, checkpoints, log.jsonl, metrics.json and printed lines.

train.py calls these at the start, after each epoch and at the end of a run:

    prepare_output    the --output folder, locked while the run lasts (a run already there, or
                      still running, is refused), stale temporaries gone
    new_run           the run's record: epoch, history, best epoch, anchors, classes, precision
    resume_run        last.pt's states into the model, optimizer, scheduler and scaler
    record_epoch      an epoch's row of log.jsonl, and the best epoch so far
    save_checkpoints  best.pt, last.pt and log.jsonl, written atomically (in a background thread)
    write_metrics     metrics.json: the last epoch's report, best epoch, config, environment, data
    start_line, epoch_line, progress_logger, report_finish: what the run prints
"""

import datetime
import json
import os
import time

import torch

import text_prompts
from lib import checkpoint
from lib.errors import BadInputError
from lib.precision import describe, device_name
from lib.run_lock import NEW_RUN_HINT, RESUME_HINT, RunLock
from model import input_normalization


def new_run(args, anchors, class_names, clip_id, precision):
    """The run's record before its first epoch; the checkpoints carry it (see save_checkpoints)."""
    mean, std = input_normalization(args.backbone, args.normalization)
    meta = dict(
        backbone=args.backbone,
        image_size=args.image_size,
        mean=list(mean),
        std=list(std),
        dataset=args.dataset,
    )
    return dict(
        epoch=0,
        history=[],
        best=None,
        anchors=anchors,
        class_names=class_names,
        clip=clip_id,
        precision=precision,
        meta=meta,
    )


def start_line(args, class_names, train_batches, device, precision, clip_id):
    """The line printed before the first step: what runs, where, in which precision."""
    return (
        f"{args.dataset}: {len(class_names)} classes, train batches/epoch {len(train_batches)}, "
        f"backbone {args.backbone} at {args.image_size} px, device {device}, precision "
        f"{describe(precision)}, anchors from {clip_id}, output {args.output}"
    )


def prepare_output(args, log, held):
    """The output folder, made and locked for this run (lib/run_lock.py: a folder another live run
    holds is refused, --overwrite and --resume included; a stale lock is taken over); a run already
    there is refused (unless --overwrite, or it is the run being resumed); temporary files of an
    interrupted save are removed. `held` is a contextlib.ExitStack: the lock is released when it
    closes. Returns the path of last.pt."""
    last_pt = os.path.join(args.output, "last.pt")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise BadInputError(f"--output {args.output} is a file, not a folder")
    os.makedirs(args.output, exist_ok=True)
    resuming = args.resume and os.path.abspath(last_pt) == os.path.abspath(args.resume)
    held.enter_context(RunLock(args.output).acquire(log, RESUME_HINT if resuming else NEW_RUN_HINT))
    if not resuming:
        # a new run never replaces another's files
        checkpoint.refuse_overwrite(args.output, args.overwrite)
    for stale in checkpoint.remove_stale_temporaries(args.output, names=checkpoint.RUN_FILES):
        log(f"removed {stale}: the temporary file of an interrupted save")
    return last_pt


def save_checkpoints(run, net, optimizer, scheduler, scaler, args, test, writer=None, world=1):
    """After an epoch: best.pt when the selection score improved, then last.pt and log.jsonl, each
    written atomically; by a checkpoint.BackgroundWriter when given, else here. `run` holds the
    run's record (epoch, history, best, anchors, class_names, clip, meta, precision: the choice of
    lib/precision.py, reused by --resume and by evaluate.py). No random state is saved: every epoch
    draws from (seed, epoch) (tools/batches.py, seed_epoch); `world` is the number of processes."""
    model_state = dict(
        model=net.state_dict(),
        args=vars(args),
        class_names=run["class_names"],
        anchors=run["anchors"],
        clip=run["clip"],
        meta=run["meta"],
        epoch=run["epoch"],
        precision=run["precision"],
    )
    files = [(model_state, "best.pt")] if run["best"]["epoch"] == run["epoch"] else []
    files.append(
        (
            dict(
                model_state,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                world_size=world,
                history=run["history"],
                best=run["best"],
                last_test=test,
            ),
            "last.pt",
        )
    )
    files.append(("".join(json.dumps(r) + "\n" for r in run["history"]), "log.jsonl"))
    files = [(obj, os.path.join(args.output, name)) for obj, name in files]
    if writer is not None:
        writer.write(files)
    else:
        for obj, path in files:
            checkpoint.save_atomic(obj, path)


def resume_run(resumed, parts, run, args, log, world=1):
    """Load last.pt's states into (net, optimizer, scheduler, scaler) and the run record. At another
    number of processes than the checkpoint's the global sample order continues, but augmentation
    and BatchNorm statistics are drawn per process: said in one line, the run goes on."""
    keys = ("model", "optimizer", "scheduler", "scaler")
    for part, key in zip(parts, keys, strict=True):
        try:  # the states' contents are the file's: any failure to take them is the file's
            part.load_state_dict(resumed[key])
        except (RuntimeError, KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise BadInputError(
                f"--resume {args.resume}: its {key!r} state does not fit this run "
                f"({type(e).__name__}: {first}); the file is damaged or from another run"
            ) from None
    run.update(epoch=resumed["epoch"], history=resumed["history"], best=resumed["best"])
    written = resumed.get("world_size", 1)
    if written != world:
        log(
            f"note: {written} process(es) wrote this checkpoint, {world} resume it: the global "
            "sample order continues, augmentation draws and per-process BatchNorm statistics "
            "differ, so the run is not bit-exact with an uninterrupted one"
        )
    log(f"resumed from {args.resume} at epoch {run['epoch']}/{args.epochs}")


def record_epoch(run, epoch, avg, lr, test, val, score, seconds):
    """The epoch's row of log.jsonl, appended to the run's history; the best epoch so far
    updated."""
    row = dict(
        epoch=epoch,
        ls=avg["ls"],
        lt=avg["lt"],
        lc=avg["lc"],
        train_accuracy=avg["train_accuracy"],
        lr=lr,
        images_per_s=avg["images"] / avg["seconds"],
        test_accuracy=test["accuracy"],
        mean_class_accuracy=test["mean_class_accuracy"],
        epoch_seconds=seconds,
    )
    row.update({"val_accuracy": val["accuracy"]} if val else {})
    run["epoch"] = epoch
    run["history"].append(row)
    if run["best"] is None or score > run["best"]["score"]:
        run["best"] = dict(
            score=score,
            epoch=epoch,
            selected_on="val" if val else "test",
            test_accuracy=test["accuracy"],
            mean_class_accuracy=test["mean_class_accuracy"],
        )
    return row


def environment_record(device, precision, clip_id, processes=None):
    """What a run needs beside its flags to be compared with another: versions, device, precision,
    the code's git commit (None outside a checkout), the CLIP checkpoint's name and SHA256, the
    processes (world size and backend, tools/distributed.py) and, on a GPU, the peak memory torch
    allocated on it (torch.cuda.max_memory_allocated, this process's)."""
    import platform
    import subprocess

    import torchvision

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=os.path.dirname(os.path.abspath(__file__)),
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    name, _, sha = clip_id.partition(" sha256:")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        device=device_name(device),
        precision=precision,
        git_commit=commit,
        clip=name,
        clip_sha256=sha or None,
        random_anchors=text_prompts.is_random_source(clip_id),
        distributed=processes or dict(world_size=1, backend="none (one process)"),
        peak_gpu_memory_mib=None if peak is None else round(peak / 2**20, 1),
    )


def write_metrics(args, last_pt, environment, data_record):
    """metrics.json from the finished last.pt: the last epoch's test report (the number to report),
    the best epoch labelled with what it was selected on, the training time, and what is needed to
    compare runs: config (every resolved flag), environment and data (images per split and class,
    drops, a fingerprint of the label list)."""
    # the finished state, also when resuming a run that had ended
    final = checkpoint.load_checkpoint(last_pt, "train")
    last, best = final["last_test"], final["best"]
    metrics = dict(
        test_accuracy=last["accuracy"],
        mean_class_accuracy=last["mean_class_accuracy"],
        per_class_accuracy=last["per_class_accuracy"],
        confusion_matrix=last["confusion_matrix"],
        class_names=final["class_names"],
        epochs=args.epochs,
        last_epoch=final["history"][-1],
        best_epoch=best["epoch"],
        best=dict(
            best,
            note=(
                "selected on the validation split carved from train (--val-fraction)"
                if best["selected_on"] == "val"
                else "selected on the TEST set, as the released code reports: optimistic, "
                "not a held-out number"
            ),
        ),
        anchors=final["clip"],
        train_seconds=sum(r["epoch_seconds"] for r in final["history"]),
        config=vars(args),
        environment=environment,
        data=data_record,
    )
    checkpoint.save_atomic(
        json.dumps(metrics, indent=2) + "\n", os.path.join(args.output, "metrics.json")
    )
    return metrics


def report_finish(metrics, args, last_pt, log):
    """The run's last lines: the number to report, the best epoch kept apart, the files."""
    b = metrics["best"]
    log(
        f"finished: last epoch test accuracy {metrics['test_accuracy']:.2f}%, mean class accuracy "
        f"{metrics['mean_class_accuracy']:.2f}% (the number to report); best-on-{b['selected_on']} "
        f"epoch {b['epoch']}: test accuracy {b['test_accuracy']:.2f}%"
    )
    print(f"outputs in {args.output}: last.pt best.pt log.jsonl metrics.json", flush=True)
    if args.demo:
        log(
            f"next: python evaluate.py --checkpoint {last_pt} --dataset synthetic\n"
            f"      python evaluate.py --checkpoint {last_pt} --images YOUR_PHOTOS"
        )


def epoch_line(row, epochs):
    return (
        f"epoch {row['epoch']}/{epochs} done | Ls {row['ls']:.4f} Lt {row['lt']:.4f} Lc "
        f"{row['lc']:.4f} | "
        f"train acc {row['train_accuracy']:.1f}% | test acc {row['test_accuracy']:.2f}% mean class "
        f"{row['mean_class_accuracy']:.2f}%"
        + (f" | val acc {row['val_accuracy']:.2f}%" if "val_accuracy" in row else "")
        + f" | {row['images_per_s']:.0f} img/s | {row['epoch_seconds']:.1f} s"
    )


def progress_logger(args, log, steps_per_epoch, start_epoch):
    """A progress line every --log-every steps: running averages, lr, speed and the time left."""
    started, total = time.time(), (args.epochs - start_epoch) * steps_per_epoch

    def progress(epoch, step, avg, rate, lr):
        done = (epoch - 1 - start_epoch) * steps_per_epoch + step
        eta = datetime.timedelta(seconds=int((time.time() - started) / done * (total - done)))
        log(
            f"epoch {epoch}/{args.epochs} step {step}/{steps_per_epoch} | Ls {avg['ls']:.4f} Lt "
            f"{avg['lt']:.4f} "
            f"Lc {avg['lc']:.4f} | acc {100 * avg['correct']:.1f}% | lr {lr:.2e} | {rate:.0f} "
            f"img/s | eta {eta}"
        )

    return progress
