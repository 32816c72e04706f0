"""The non-finite guard: before a checkpoint is saved, every floating tensor of the model and the
optimizer is checked in one reduction (one host-device sync); a nan or inf stops the run with exit
code 3, nothing saved, the last good last.pt kept."""

import os

import torch

from lib.errors import NonFiniteError


def float_tensors(obj, prefix=""):
    """(name, tensor) for every floating-point tensor in nested dicts / lists / tuples."""
    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from float_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from float_tensors(v, f"{prefix}.{i}" if prefix else str(i))


@torch.no_grad()
def all_finite(*states):
    """True when every floating-point tensor in states (tensors, state dicts, nested dicts / lists)
    is finite: per device, all_i isfinite(t_i).all() reduced on that device, then one host sync per
    device."""
    per_device = {}
    for _, t in float_tensors(states[0] if len(states) == 1 else list(states)):
        per_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    flags = [torch.stack(ok).all() for ok in per_device.values()]  # one bool tensor per device
    return all(bool(f) for f in flags)


def nonfinite_names(*states, limit=5):
    """The names ("model.backbone.conv1.weight", ...) of up to `limit` tensors holding nan or
    inf."""
    root = states[0] if len(states) == 1 else list(states)
    bad = [name for name, t in float_tensors(root) if not bool(torch.isfinite(t).all())]
    return bad[:limit] + ([f"{len(bad) - limit} more"] if len(bad) > limit else [])


def require_finite(states, when, last_good=None, hint="", agree=None):
    """Before a save: states is {label: tensor or state dict}, e.g. {"model": net.state_dict(),
    "optimizer": optimizer.state_dict()}. Non-finite values -> NonFiniteError naming the tensors,
    saying that nothing was saved and which checkpoint still holds the last good state. agree(ok)
    (a distributed run's all-reduce) makes every process stop when one process finds any."""
    ok = all_finite(states)
    if agree(ok) if agree is not None else ok:
        return
    names = ", ".join(nonfinite_names(states)) or "another process's model or optimizer"
    if last_good and os.path.isfile(last_good):
        kept = (
            f"{last_good} is unchanged and holds the last good state "
            f"(--resume {last_good} continues from it)"
        )
    else:
        kept = "no checkpoint had been written yet"
    raise NonFiniteError(
        f"stopping {when}: nan or inf in {names}; nothing was saved, {kept}"
        + (f"; {hint}" if hint else "")
    )
