"""Evaluate a KE2NT checkpoint: dataset reports, cross-dataset tests, predictions on your own
photos, diagnostics of the feature space, Grad-CAM, export; and the summary of several runs over
seeds.

    python evaluate.py --checkpoint runs/rafdb-r18/last.pt --dataset rafdb --data-root data/raf_db
    python evaluate.py --checkpoint runs/rafdb-r18/last.pt --dataset ckplus \
        --data-root data/ckplus --cross-dataset
    python evaluate.py --checkpoint runs/demo/last.pt --images my_photos/ --top-k 3 --cam
    python evaluate.py --checkpoint runs/demo/last.pt --dataset synthetic --diagnostics
    python evaluate.py --checkpoint runs/demo/last.pt --export ke2nt.pt2
    python evaluate.py --summarize runs/seed1 runs/seed2 runs/seed3

(--diagnostics: tools/diagnostics.py, --cam: tools/cam.py, --export: tools/export.py, --summarize:
tools/summarize.py)

By default the forward pass runs in the precision and memory layout training used (--amp
checkpoint), so a report equals train.py's to the digit.

A dataset report holds accuracy, mean class accuracy, per-class accuracy and the confusion matrix
(rows: true class, columns: predicted), printed as a table and written as report.json and
confusion.png. --images accepts one file or a folder (searched recursively) of any size or mode;
unreadable files are named and skipped. Each image is centre-cropped to a square and resized to the
checkpoint's working size.
"""

import argparse
import json
import os
import sys

import torch

import data
import text_prompts
from lib import errors, face_images
from lib.checkpoint import load_checkpoint, save_atomic
from lib.errors import BadInputError
from lib.precision import autocast, choose_precision, describe, memory_format
from model import BACKBONES, KE2NT, build_backbone
from tools import batches
from tools.distributed import resolve_device
from tools.photos import list_images, write_predictions
from tools.pictures import draw_confusion_png


def confusion_matrix(preds, labels, num_classes):
    """preds, labels (N,) ints -> counts (K, K) long; rows = true class, columns = predicted
    class."""
    idx = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def class_metrics(cm, class_names):
    """Confusion (K, K) -> accuracy, mean class accuracy (over classes that occur, as the released
    code), per-class accuracy (None for a class with no samples), all in percent, and the matrix as
    lists."""
    cm = torch.as_tensor(cm)
    support = cm.sum(1)  # (K,)
    per_class = [
        100.0 * cm[k, k].item() / support[k].item() if support[k] > 0 else None
        for k in range(len(class_names))
    ]
    present = [a for a in per_class if a is not None]
    return dict(
        accuracy=100.0 * cm.diag().sum().item() / max(cm.sum().item(), 1),
        mean_class_accuracy=sum(present) / max(len(present), 1),
        per_class_accuracy=dict(zip(class_names, per_class, strict=True)),
        confusion_matrix=cm.tolist(),
        support=support.tolist(),
    )


@torch.no_grad()
@torch.no_grad()
def predict_logits(model, split_batches, device, precision=None):
    """(images (B, 3, S, S) normalised, labels (B,)) batches -> logits (N, K) float32 and labels
    (N,) on CPU. precision: a lib/precision.py choice (autocast dtype and memory layout); None is
    fp32 channels-last."""
    precision = precision or dict(amp="off", channels_last=True)
    classify = model.classify if hasattr(model, "classify") else (lambda x: model(x)[2])
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for x, y in split_batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format(precision))
        with autocast(precision, device):
            all_logits.append(classify(x).float().cpu())  # (B, K)
        all_labels.append(torch.as_tensor(y).cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def predict(model, split_batches, device, precision=None):
    """Predicted classes (N,) and labels (N,) on CPU."""
    logits, labels = predict_logits(model, split_batches, device, precision)
    return logits.argmax(1), labels


def evaluation_precision(amp, ckpt, net, device, batch_size, log=print):
    """--amp checkpoint (the default): the precision training used, from the checkpoint, so that
    this report and the training loop's agree to the digit; measured afresh
    (precision.choose_precision) when the checkpoint records none or was trained on another kind of
    device. Else as --amp says."""
    stored = ckpt.get("precision")
    if amp == "checkpoint" and stored is not None and stored.get("device") == device.type:
        log(f"precision: {describe(stored)}, as in training (from the checkpoint)")
        return stored
    return choose_precision(
        "auto" if amp == "checkpoint" else amp,
        device,
        model=net,
        batch_size=batch_size,
        image_size=ckpt["meta"]["image_size"],
        say=log,
        train=False,
    )


def load_model(path, device, backbone=None):
    """Checkpoint from train.py -> (KE2NT in eval mode on device, checkpoint dict). Errors name the
    file and say what does not match (another backbone, a broken class set, not a KE2NT
    checkpoint)."""
    ckpt = load_checkpoint(path, "model")
    meta, names, anchors = ckpt["meta"], ckpt["class_names"], ckpt["anchors"]
    if meta["backbone"] not in BACKBONES:
        raise BadInputError(
            f"{path}: meta names backbone {meta['backbone']!r:.40}, not one of {sorted(BACKBONES)}"
        )
    if backbone is not None and backbone != meta["backbone"]:
        raise BadInputError(
            f"{path} was trained with backbone '{meta['backbone']}', not '{backbone}'"
        )
    anchor_names = text_prompts.anchor_names(names)  # + the text-only neutral of a set without one
    if "anchors" not in ckpt["model"]:
        raise BadInputError(
            f"{path}: the model's state lacks its 'anchors' buffer; the file is damaged"
        )
    if (
        anchors.shape[0] not in (len(names), len(anchor_names))
        or ckpt["model"]["anchors"].shape != anchors.shape
    ):
        raise BadInputError(
            f"{path}: class set mismatch: {len(names)} class names {names} but anchors of shape "
            f"{tuple(anchors.shape)} / model anchors {tuple(ckpt['model']['anchors'].shape)}"
        )
    neutral = text_prompts.neutral_index(anchor_names[: anchors.shape[0]])
    net = KE2NT(build_backbone(meta["backbone"]), anchors, neutral, num_classes=len(names))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise BadInputError(
            f"{path}: the weights do not fit backbone '{meta['backbone']}' with {len(names)} "
            f"classes ({first[0]} {first[1].strip() if len(first) > 1 else ''})"
        ) from None
    return net.to(device).eval(), ckpt


def format_confusion(cm, class_names):
    """Confusion (K, K) -> a text table (rows true, columns predicted)."""
    head = "true \\ predicted"
    width = max(len(head), *(len(n) for n in class_names))
    lines = [f"{head:<{width}}" + "".join(f"{n[:9]:>10}" for n in class_names)]
    for name, row in zip(class_names, torch.as_tensor(cm).tolist(), strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10d}" for v in row))
    return "\n".join(lines)


def evaluate_dataset(args, net, ckpt, device, precision, out):
    """Report on a dataset split; with --cross-dataset through the class names the two sets share.
    With --diagnostics also diagnostics.json and diagnostics.png in `out` (tools/diagnostics.py)."""
    names, meta = ckpt["class_names"], ckpt["meta"]
    options = {}
    if args.dataset == "synthetic":
        saved = ckpt.get("args", {})
        options = dict(
            num_train=saved.get("num_train", 64),
            num_test=args.num_test or saved.get("num_test", 64),
            seed=saved.get("seed", 0) if args.seed is None else args.seed,
            image_size=meta["image_size"],
        )
    options.update(data.dataset_options(args))
    dataset = data.build_dataset(args.dataset, args.data_root, args.split, **options)
    # dataset class -> checkpoint class or None
    mapping = text_prompts.map_labels(list(dataset.classes), names)
    same_set = sorted(dataset.classes) == sorted(names)
    if not same_set and not args.cross_dataset:
        raise BadInputError(
            f"class set mismatch: {args.checkpoint} predicts {names} but {args.dataset} has "
            f"{list(dataset.classes)}; pass --cross-dataset to evaluate on the classes they share"
        )
    shared = sorted({m for m in mapping if m is not None})  # checkpoint indices, checkpoint order
    if not shared:
        raise BadInputError(
            f"{args.checkpoint} ({names}) and {args.dataset} ({list(dataset.classes)}) share no "
            "class"
        )
    cached = batches.cache_images(dataset, meta["image_size"], num_workers=args.num_workers)
    if cached is None:
        raise BadInputError(
            f"{args.dataset} {args.split} does not fit in memory at {meta['image_size']} px"
        )
    images, labels = cached
    aug = batches.BatchAugment(
        meta["image_size"], tuple(meta["mean"]), tuple(meta["std"]), train=False
    )
    to_shared = {c: i for i, c in enumerate(shared)}
    target = torch.tensor([to_shared[m] if m is not None else -1 for m in mapping])[labels]  # (N,)
    keep = target >= 0
    images, target = images[keep], target[keep]
    split_batches = (
        (aug(images[i : i + args.batch_size]), target[i : i + args.batch_size])
        for i in range(0, len(target), args.batch_size)
    )
    logits, y = predict_logits(net, split_batches, device, precision)
    preds = logits[:, shared].argmax(1)  # restricted to the shared classes
    shared_names = [names[c] for c in shared]
    if args.diagnostics:
        from tools import diagnostics

        labels_ckpt = torch.tensor(shared)[target]  # (N,) checkpoint class indices
        diagnostics.run_diagnostics(
            net,
            (
                (aug(images[i : i + args.batch_size]), labels_ckpt[i : i + args.batch_size])
                for i in range(0, len(target), args.batch_size)
            ),
            names,
            out,
            device,
        )
    report = class_metrics(confusion_matrix(preds, y, len(shared)), shared_names)
    report.update(
        checkpoint=os.path.abspath(args.checkpoint),
        dataset=args.dataset,
        split=args.split,
        images=int(keep.sum()),
        class_names=shared_names,
        dropped_dataset_classes=[
            c for c, m in zip(dataset.classes, mapping, strict=True) if m is None
        ],
        unused_checkpoint_classes=[n for i, n in enumerate(names) if i not in shared],
        images_dropped=int((~keep).sum()),
    )
    return report


def print_report(report, out):
    print(
        f"{report['dataset']} {report['split']}: {report['images']} images"
        + (
            f" ({report['images_dropped']} of classes {report['dropped_dataset_classes']} left out)"
            if report["images_dropped"]
            else ""
        )
    )
    if report["unused_checkpoint_classes"]:
        print(
            "predictions restricted to the shared classes (unused: "
            f"{report['unused_checkpoint_classes']})"
        )
    print(
        f"accuracy {report['accuracy']:.2f}%  mean class accuracy "
        f"{report['mean_class_accuracy']:.2f}%"
    )
    for name, acc in report["per_class_accuracy"].items():
        print(f"  {name:<12} {'n/a' if acc is None else f'{acc:6.2f}%'}")
    print(format_confusion(report["confusion_matrix"], report["class_names"]))
    print(
        f"report: {os.path.join(out, 'report.json')}  confusion matrix: "
        f"{os.path.join(out, 'confusion.png')}"
    )


def predict_images(args, net, ckpt, device, precision, out):
    """Top-k classes with probabilities for each readable image; unreadable ones named and skipped.
    With --cam also a Grad-CAM overlay <stem>_cam.png of each image in `out` (tools/cam.py)."""
    names, meta = ckpt["class_names"], ckpt["meta"]
    aug = batches.BatchAugment(
        meta["image_size"], tuple(meta["mean"]), tuple(meta["std"]), train=False
    )
    rows, skipped = [], []
    files = list_images(args.images)
    k = min(args.top_k, len(names))
    if args.cam:
        from tools import cam

        # <stem>_cam.png, unique
        cam_names = dict(zip(files, cam.overlay_names(files), strict=True))
    for i in range(0, len(files), args.batch_size):
        chunk, tensors = [], []
        for path in files[i : i + args.batch_size]:
            try:
                tensors.append(
                    face_images.square_uint8(face_images.load_rgb(path), meta["image_size"])
                )
                chunk.append(path)
            except Exception as e:  # any undecodable file: name it and go on
                print(f"skipped {path}: {type(e).__name__}: {e}", file=sys.stderr)
                skipped.append(dict(path=path, error=f"{type(e).__name__}: {e}"))
        if not chunk:
            continue
        x = aug(torch.stack(tensors))  # (B, 3, S, S)
        if args.cam:
            cam.run_cam(
                net,
                torch.stack(tensors),
                [cam_names[p] for p in chunk],
                meta["mean"],
                meta["std"],
                out,
                device,
                names,
            )
        logits, _ = predict_logits(net, [(x, torch.zeros(len(chunk)))], device, precision)
        prob, idx = logits.softmax(1).topk(k, dim=1)  # (B, k)
        for path, p, c in zip(chunk, prob.tolist(), idx.tolist(), strict=True):
            rows.append(
                dict(
                    path=path,
                    top=[
                        dict(class_name=names[j], probability=q) for j, q in zip(c, p, strict=True)
                    ],
                )
            )
    return rows, skipped


def build_parser():
    p = argparse.ArgumentParser(
        description="Evaluate a KE2NT checkpoint, classify your own images, or summarise runs."
    )
    a = p.add_argument
    a("--checkpoint", help="last.pt or best.pt from train.py")
    a("--dataset", choices=data.DATASETS, default=None)
    a("--data-root", default=None)
    a("--split", default="test")
    a("--fold", type=int, default=None, help="CK+: the test fold")
    a("--include-neutral", action="store_true", help="CK+: with the neutral frames")
    a("--list-file", default=None, help="list: 'relative/path label' file ({split}: --split)")
    a("--classes", default=None, help="list/folder: class order (dataset name or comma list)")
    a("--cross-dataset", action="store_true", help="evaluate on the classes both sets share")
    a("--images", default=None, help="an image file or a folder of images to classify")
    a("--top-k", type=int, default=3)
    a("--backbone", default=None, help="error out unless the checkpoint uses this backbone")
    a("--output", default=None, help="folder for the report / predictions")
    a("--batch-size", type=int, default=256)
    a("--num-workers", type=int, default=0)
    a("--num-test", type=int, default=None, help="synthetic only")
    a("--seed", type=int, default=None, help="synthetic only (default: the checkpoint's)")
    a("--device", default=None)
    a(
        "--amp",
        choices=["checkpoint", "auto", "bf16", "fp16", "off"],
        default="checkpoint",
        help="checkpoint: the precision training used (its report and this one then agree exactly)",
    )
    a(
        "--export",
        default=None,
        metavar="FILE.pt2",
        help=(
            "write the classifier as a torch.export program (needs only --checkpoint; see "
            "tools/export.py)"
        ),
    )
    a(
        "--diagnostics",
        action="store_true",
        help="with --dataset: also diagnostics.json and diagnostics.png",
    )
    a(
        "--cam",
        action="store_true",
        help="with --images: also a Grad-CAM overlay <stem>_cam.png per image",
    )
    a(
        "--summarize",
        nargs="+",
        metavar="RUN_DIR",
        default=None,
        help=(
            "mean and sample std over seeds of train.py runs (their metrics.json), grouped by "
            "setting"
        ),
    )
    a("--out", default=None, help="with --summarize: also write the summary as JSON to this file")
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    errors.check_flags(args, errors.EVAL_FLAGS)
    if args.summarize is not None:  # runs' metrics.json only: no checkpoint, no model
        from tools import summarize

        return summarize.main(args.summarize + (["--out", args.out] if args.out else []))
    if args.checkpoint is None:
        p.error("--checkpoint is required (or --summarize RUN_DIR ...)")
    if (
        args.dataset is not None
        and args.images is not None
        or (args.dataset is None and args.images is None and args.export is None)
    ):
        p.error("give exactly one of --dataset or --images (or only --export)")
    if args.diagnostics and args.dataset is None:
        p.error("--diagnostics needs --dataset")
    if args.cam and args.images is None:
        p.error("--cam needs --images")
    device = resolve_device(args.device)
    net, ckpt = load_model(args.checkpoint, device, args.backbone)
    if args.export is not None:
        from tools import export

        export.export_checkpoint(net, ckpt, args.export)
        if args.dataset is None and args.images is None:
            return None
    precision = evaluation_precision(args.amp, ckpt, net, device, args.batch_size)
    net = net.to(memory_format=memory_format(precision))
    # outputs beside the checkpoint, named as the user named it
    ckpt_dir = os.path.dirname(args.checkpoint)
    if args.images is not None:
        out = args.output or os.path.join(ckpt_dir, "predictions")
        os.makedirs(out, exist_ok=True)
        rows, skipped = predict_images(args, net, ckpt, device, precision, out)
        write_predictions(
            rows, skipped, out, min(args.top_k, len(ckpt["class_names"])), args.checkpoint
        )
        return rows, skipped
    out = args.output or os.path.join(ckpt_dir, f"eval-{args.dataset}-{args.split}")
    os.makedirs(out, exist_ok=True)
    report = evaluate_dataset(args, net, ckpt, device, precision, out)
    save_atomic(json.dumps(report, indent=2), os.path.join(out, "report.json"))
    draw_confusion_png(
        report["confusion_matrix"],
        report["class_names"],
        os.path.join(out, "confusion.png"),
        title=f"{report['dataset']} {report['split']}: accuracy {report['accuracy']:.2f}%",
    )
    print_report(report, out)
    return report


if __name__ == "__main__":
    with errors.cli_errors():
        result = main()
    sys.exit(result if isinstance(result, int) else 0)  # --summarize returns its exit status
