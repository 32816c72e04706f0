"""Evaluate a KE2NT checkpoint: dataset reports, cross-dataset tests, predictions on your own
photos; with the extras (tools/, imported only when asked for) diagnostics, Grad-CAM and the
summary of runs over seeds. Commands: README, "Evaluating and predicting".

A dataset is read, and the forward pass run in the precision, as in training, so a report equals
train.py's to the digit: accuracy, mean class and per-class accuracy, the confusion matrix (rows:
true, columns: predicted), printed, report.json and confusion.png. --images takes a file or a
folder (recursively); unreadable files are named and skipped; images are sized as in training.
"""

import argparse
import json
import os
import sys

import torch

import data
import text_prompts
from lib import errors
from lib.checkpoint import load_checkpoint, output_folder, save_atomic
from lib.device import choose_precision, describe, resolve_device
from lib.errors import BadInputError
from lib.face_images import BatchAugment, cache_images, load_rgb, square_uint8
from lib.metrics import class_metrics, confusion_matrix, predict_logits
from model import BACKBONES, KE2NT, build_backbone


def load_model(path, device, backbone=None):
    """Checkpoint from train.py -> (KE2NT in eval mode on device, checkpoint dict). Whatever of the
    file does not build a finite model (another backbone, a broken class set, damaged values) is a
    BadInputError naming the file: the check at this boundary, none further in."""
    ckpt = load_checkpoint(path, "model")
    meta, names = ckpt.get("meta"), ckpt.get("class_names")
    try:
        anchors, size = ckpt["anchors"], meta["image_size"]
        mean, std = [list(map(float, meta[k])) for k in ("mean", "std")]
        if not (isinstance(size, int) and size > 0 and len(mean) == len(std) == 3 and min(std) > 0):
            raise ValueError(f"meta {meta}")
        if meta["backbone"] not in BACKBONES:
            raise ValueError(f"backbone {meta['backbone']!r} is not one of {sorted(BACKBONES)}")
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
            raise ValueError(f"class names {names}")
        # the anchors: a row per class, and a text-only neutral last where no class is neutral
        neutral = text_prompts.neutral_index(text_prompts.anchor_names(names)[: len(anchors)])
        net = KE2NT(build_backbone(meta["backbone"]), anchors, len(names), neutral)
        net.load_state_dict(ckpt["model"])
        if not all(t.isfinite().all() for t in net.state_dict().values() if t.is_floating_point()):
            raise ValueError("nan or inf in the model")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        why = " ".join(line.strip() for line in str(e).strip().splitlines()[:2])[:240]
        what = f"meta {meta}, classes {names}"[:160]
        raise BadInputError(f"{path}: not a model this code can build ({what}; {why})") from None
    if backbone is not None and backbone != meta["backbone"]:
        raise BadInputError(
            f"{path} was trained with backbone {meta['backbone']!r}, not {backbone!r}"
        )
    return net.to(device).eval(), ckpt


def evaluation_precision(amp, ckpt, net, device, batch_size):
    """--amp checkpoint (the default): the precision training used, so that this report and the
    training loop's agree to the digit; chosen afresh (lib/device.py) when the checkpoint was
    trained on another kind of device. Else as --amp says."""
    stored = ckpt.get("precision")
    if amp == "checkpoint" and stored is not None and stored.get("device") == device.type:
        return stored
    amp = "auto" if amp == "checkpoint" else amp
    return choose_precision(amp, device, net, batch_size, ckpt["meta"]["image_size"], False)


def evaluate_dataset(args, net, ckpt, device, precision, out):
    """Report on a dataset split, read as training read it (on the run's own dataset, a dataset
    flag not given takes the checkpoint's value: data.DATASET_FLAGS); with --cross-dataset
    through the class names the two sets share. With --diagnostics also diagnostics.json in `out`
    (tools/diagnostics.py)."""
    names, meta, saved = ckpt["class_names"], ckpt["meta"], ckpt.get("args", {})
    if args.dataset == saved.get("dataset"):  # the run's own: read as training read it
        for flag in data.DATASET_FLAGS:
            if getattr(args, flag) in (None, False) and saved.get(flag) not in (None, False):
                setattr(args, flag, saved[flag])
                print(f"as in training: --{flag.replace('_', '-')} {saved[flag]}")
    options = data.dataset_options(args)
    if args.dataset == "synthetic":  # the run's faces: its seed and sizes, unless given
        options.update(num_train=saved.get("num_train", 64), image_size=meta["image_size"])
        options.update(num_test=args.num_test or saved.get("num_test", 64))
        options.update(seed=saved.get("seed", 0) if args.seed is None else args.seed)
    dataset = data.build_dataset(args.dataset, args.data_root, args.split, **options)
    mapping = text_prompts.map_labels(list(dataset.classes), names)  # dataset -> checkpoint class
    if sorted(dataset.classes) != sorted(names) and not args.cross_dataset:
        raise BadInputError(
            f"class set mismatch: {args.checkpoint} predicts {names} but {args.dataset} has "
            f"{list(dataset.classes)}; pass --cross-dataset to evaluate on the classes they share"
        )
    shared = sorted({m for m in mapping if m is not None})  # checkpoint indices, checkpoint order
    if not shared:
        raise BadInputError(f"{args.checkpoint} ({names}) and {args.dataset} share no class")
    cached = cache_images(dataset, meta["image_size"], num_workers=args.num_workers)
    if cached is None:
        raise BadInputError(f"{args.dataset} {args.split} does not fit in memory")
    images, labels = cached  # (N, 3, S, S) uint8, (N,)
    aug = BatchAugment(meta["image_size"], tuple(meta["mean"]), tuple(meta["std"]), train=False)
    to_shared = {c: i for i, c in enumerate(shared)}
    target = torch.tensor([to_shared.get(m, -1) for m in mapping])[labels]  # (N,)
    keep = target >= 0
    images, target = images[keep], target[keep]

    def batches(y):
        b = args.batch_size
        return ((aug(images[i : i + b]), y[i : i + b]) for i in range(0, len(y), b))

    logits, y = predict_logits(net, batches(target), device, precision)
    preds = logits[:, shared].argmax(1)  # restricted to the shared classes
    if args.diagnostics:
        from tools import diagnostics

        ckpt_labels = torch.tensor(shared)[target]  # (N,) checkpoint class indices
        diagnostics.run_diagnostics(net, batches(ckpt_labels), names, out, device)
    shared_names = [names[c] for c in shared]
    report = class_metrics(confusion_matrix(preds, y, len(shared)), shared_names)
    dropped = [c for c, m in zip(dataset.classes, mapping, strict=True) if m is None]
    report.update(checkpoint=os.path.abspath(args.checkpoint), dataset=args.dataset)
    report.update(split=args.split, images=int(keep.sum()), class_names=shared_names)
    report.update(dropped_dataset_classes=dropped, images_dropped=int((~keep).sum()))
    report["unused_checkpoint_classes"] = [n for i, n in enumerate(names) if i not in shared]
    return report


def print_report(report, out):
    dropped = report["images_dropped"]
    left = f" ({dropped} of {report['dropped_dataset_classes']} left out)" if dropped else ""
    print(f"{report['dataset']} {report['split']}: {report['images']} images{left}")
    if unused := report["unused_checkpoint_classes"]:
        print(f"predictions among the shared classes (unused: {unused})")
    accuracy, mean = report["accuracy"], report["mean_class_accuracy"]
    print(f"accuracy {accuracy:.2f}%  mean class accuracy {mean:.2f}%")
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:<12} {'n/a' if acc is None else f'{acc:6.2f}%'}")
    names, head = report["class_names"], "true \\ predicted"
    width = max(len(head), *(len(n) for n in names))
    print(f"{head:<{width}}" + "".join(f"{n[:9]:>10}" for n in names))
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        print(f"{name:<{width}}" + "".join(f"{v:>10d}" for v in row))
    print(f"report: {out}/report.json  confusion matrix: {out}/confusion.png")


def predict_images(args, net, ckpt, device, precision, out):
    """Top-k classes with probabilities for each readable image; unreadable ones named and skipped.
    With --cam also a Grad-CAM overlay <stem>_cam.png of each image in `out` (tools/cam.py)."""
    from tools.photos import list_images

    names, meta = ckpt["class_names"], ckpt["meta"]
    aug = BatchAugment(meta["image_size"], tuple(meta["mean"]), tuple(meta["std"]), train=False)
    files, rows, skipped = list_images(args.images), [], []
    if args.cam:
        from tools import cam

        cam_names = dict(zip(files, cam.overlay_names(files), strict=True))  # unique names
    for i in range(0, len(files), args.batch_size):
        chunk, squares = [], []
        for path in files[i : i + args.batch_size]:
            try:
                squares.append(square_uint8(load_rgb(path), meta["image_size"]))
                chunk.append(path)
            except Exception as e:  # any undecodable file: name it and go on
                print(f"skipped {path}: {type(e).__name__}: {e}", file=sys.stderr)
                skipped.append(dict(path=path, error=f"{type(e).__name__}: {e}"))
        if not chunk:
            continue
        x = torch.stack(squares)  # (B, 3, S, S) uint8
        if args.cam:
            overlays = [cam_names[p] for p in chunk]
            cam.run_cam(net, x, overlays, meta["mean"], meta["std"], out, device, names)
        logits, _ = predict_logits(net, [(aug(x), torch.zeros(len(chunk)))], device, precision)
        prob, idx = logits.softmax(1).topk(min(args.top_k, len(names)), dim=1)  # (B, k)
        for path, p, c in zip(chunk, prob.tolist(), idx.tolist(), strict=True):
            top = [dict(class_name=names[j], probability=q) for j, q in zip(c, p, strict=True)]
            rows.append(dict(path=path, top=top))
    return rows, skipped


def build_parser():
    p = argparse.ArgumentParser(
        description="Evaluate a KE2NT checkpoint, classify your own images, or summarise runs."
    )
    a, whole = p.add_argument, errors.bounded(int, 1)
    a("--checkpoint", help="last.pt or best.pt from train.py")
    a("--dataset", choices=data.DATASETS, default=None)
    a("--split", default="test")
    data.add_flags(p)  # --data-root, --fold, --crop-face, ...: the checkpoint's when not given
    a("--cross-dataset", action="store_true", help="evaluate on the classes both sets share")
    a("--images", default=None, help="an image file or a folder of images to classify")
    a("--top-k", type=whole, default=3)
    a("--backbone", default=None, help="error out unless the checkpoint uses this backbone")
    a("--output", default=None, help="folder for the report / predictions")
    a("--batch-size", type=whole, default=256)
    a("--num-workers", type=errors.bounded(int, 0), default=0)
    a("--num-test", type=whole, default=None, help="synthetic only")
    a("--seed", type=errors.bounded(int, 0, 2**63), default=None, help="synthetic only")
    a("--device", default=None)
    amps = ["checkpoint", "auto", "bf16", "fp16", "off"]
    a("--amp", choices=amps, default="checkpoint", help="checkpoint: as in training (the default)")
    a("--diagnostics", action="store_true", help="with --dataset: also diagnostics.json")
    a("--cam", action="store_true", help="with --images: a Grad-CAM overlay per image")
    a("--summarize", nargs="+", metavar="RUN_DIR", help="mean and std of runs over seeds")
    a("--out", default=None, help="with --summarize: also write the summary as JSON to this file")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.out is not None and args.summarize is None:
        p.error("--out goes with --summarize (a report's folder is --output)")
    if args.summarize is not None:  # runs' metrics.json only: no checkpoint, no model
        from tools import summarize

        return summarize.main(args.summarize + (["--out", args.out] if args.out else []))
    if args.checkpoint is None:
        p.error("--checkpoint is required (or --summarize RUN_DIR ...)")
    if (args.dataset is None) == (args.images is None):
        p.error("give exactly one of --dataset or --images")
    if args.diagnostics and args.dataset is None or args.cam and args.images is None:
        p.error("--diagnostics goes with --dataset, --cam with --images")
    device = resolve_device(args.device)
    net, ckpt = load_model(args.checkpoint, device, args.backbone)
    precision = evaluation_precision(args.amp, ckpt, net, device, args.batch_size)
    print(f"precision: {describe(precision)}")
    net = net.to(memory_format=torch.channels_last)
    # outputs beside the checkpoint, named as the user named it
    here = os.path.dirname(args.checkpoint)
    if args.images is not None:
        from tools.photos import write_predictions

        out = output_folder(args.output or os.path.join(here, "predictions"), "--output")
        rows, skipped = predict_images(args, net, ckpt, device, precision, out)
        top_k = min(args.top_k, len(ckpt["class_names"]))
        write_predictions(rows, skipped, out, top_k, args.checkpoint)
        return rows, skipped
    from tools.pictures import draw_confusion_png

    out = args.output or os.path.join(here, f"eval-{args.dataset}-{args.split}")
    out = output_folder(out, "--output")
    report = evaluate_dataset(args, net, ckpt, device, precision, out)
    save_atomic(json.dumps(report, indent=2), os.path.join(out, "report.json"))
    title = f"{report['dataset']} {report['split']}: accuracy {report['accuracy']:.2f}%"
    png = os.path.join(out, "confusion.png")
    draw_confusion_png(report["confusion_matrix"], report["class_names"], png, title)
    print_report(report, out)
    return report


if __name__ == "__main__":
    with errors.cli_errors():
        result = main()
    sys.exit(result if isinstance(result, int) else 0)  # --summarize returns its exit status
