"""A model's predictions on a split and the report made of them (train.py after every epoch,
evaluate.py once): accuracy, mean class accuracy, per-class accuracy, the confusion matrix; and
train.py's metrics.json, the run's report."""

import contextlib
import os
import platform
import subprocess

import torch
import torchvision

from lib.device import autocast, device_name


@torch.no_grad()
def predict_logits(model, batches, device, precision):
    """(images (B, 3, S, S) normalised, labels (B,)) batches -> logits (N, K) float32 and labels
    (N,) on the CPU, from KE2NT's classify under the precision's autocast; the model is left in
    eval mode (train.py sets train mode at each epoch's start)."""
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits.append(model.classify(x).float().cpu())  # (B, K)
        labels.append(torch.as_tensor(y).cpu())
    return torch.cat(logits), torch.cat(labels)


def confusion_matrix(preds, labels, num_classes):
    """preds, labels (N,) -> counts (K, K); rows: true class, columns: predicted class."""
    idx = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes)


def class_metrics(cm, class_names):
    """Confusion (K, K) -> accuracy, mean class accuracy (over the classes that occur, as the
    released code), per-class accuracy (None for a class without samples), in percent, and the
    matrix as lists."""
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


def environment(device, precision, anchors_source, world=1, backend=None):
    """What a run needs beside its flags to be compared with another: versions, device, precision,
    the code's git commit, the anchors' source, the processes, the peak GPU memory allocated."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git, commit = ["git", "-C", here, "rev-parse", "HEAD"], None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(git, capture_output=True, text=True, timeout=10).stdout.strip()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        device=device_name(device),
        precision=precision,
        git_commit=commit or None,
        anchors=anchors_source,
        random_anchors=anchors_source.startswith("random"),
        distributed=dict(world_size=world, backend=backend or "none (one process)"),
        peak_gpu_memory_mib=peak and round(peak, 1),
    )


def run_metrics(run, class_names, config, environment, data):
    """metrics.json: the last epoch's test report (the number to report), the best epoch labelled
    with what it was selected on, the training time, the flags, the environment and the data."""
    last, best, history = run["last_test"], run["best"], run["history"]
    on = "the TEST set, as released: optimistic"
    on = "the validation split carved from train" if best["selected_on"] == "val" else on
    metrics = {f"test_{k}" if k == "accuracy" else k: v for k, v in last.items() if k != "support"}
    metrics.update(class_names=class_names, epochs=config["epochs"], last_epoch=history[-1])
    metrics.update(best_epoch=best["epoch"], best=dict(best, note=f"selected on {on}"))
    metrics["train_seconds"] = sum(r["epoch_seconds"] for r in history)
    return dict(metrics, config=config, environment=environment, data=data)
