"""Export a trained KE2NT classifier as a self-contained torch.export program (.pt2).

At inference KE2NT needs only the backbone and the text anchors (the neutral transform g is for
training), so the whole classifier is

    x = (images - mean) / std                 (B, 3, S, S), images float RGB in [0, 1]
    f = proj(backbone(x))                     (B, D)
    logits = W f / |f|,  W_k = s * t_k / |t_k|  (B, K) = s * cos(f, t_k), s = 100

with the first K (= num_classes) anchors folded into one bias-free Linear layer. The exported
program holds the weights and the graph; it loads in a process that has torch alone:

    ep = torch.export.load("ke2nt.pt2", extra_files={"ke2nt.json": ""})
    logits = ep.module()(images)              # images (B, 3, S, S) float in [0, 1]

Metadata (class names, working size S, mean, std, backbone) travels INSIDE the .pt2 as the extra
file "ke2nt.json" (torch.export.save(..., extra_files=...)), so a single file is all one copies;
pass the dict above to torch.export.load to read it back (json.loads of the value), or use
load_exported.

The batch dimension is dynamic (torch.export.Dim "batch", min 1, max 4096; the metadata's min_batch
and max_batch say what this torch made of it: versions that specialise size-1 dimensions raise the
minimum to 2, and export then says so); height and width are fixed at S. The program is traced on
the CPU in float32.
"""

import copy
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

METADATA_FILE = "ke2nt.json"  # name of the extra file inside the .pt2
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension


class ExportableClassifier(nn.Module):
    """Normalisation + backbone + proj + L2 normalisation + the anchors as a bias-free Linear.

    forward: images (B, 3, S, S) float RGB in [0, 1] -> logits (B, K) = s * cos(proj(backbone(x)),
    t_k).
    """

    def __init__(self, backbone, proj, anchors, logit_scale, mean, std):
        super().__init__()
        self.backbone = backbone
        self.proj = proj
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        num_classes, dim = anchors.shape
        self.head = nn.Linear(dim, num_classes, bias=False)
        with torch.no_grad():  # W_k = s * t_k / |t_k|, (K, D)
            self.head.weight.copy_(logit_scale * F.normalize(anchors.float(), dim=-1))

    def forward(self, images):
        x = (images - self.mean) / self.std  # (B, 3, S, S)
        f = self.proj(self.backbone(x))  # (B, D)
        return self.head(F.normalize(f, dim=-1))  # (B, K)


def build_exportable(net, mean, std):
    """A CPU float32 eval-mode copy of a KE2NT net's inference path (net is left untouched)."""
    backbone = copy.deepcopy(net.backbone).float().cpu().eval()
    proj = copy.deepcopy(net.proj).float().cpu().eval()
    # (K, D): only the class anchors
    anchors = net.anchors[: net.num_classes].detach().float().cpu()
    module = ExportableClassifier(backbone, proj, anchors, net.logit_scale, mean, std)
    # torch.export traces contiguous inputs; channels_last weights from evaluate.load_model are fine
    # either way, but contiguous ones give the plainest graph.
    return module.to(memory_format=torch.contiguous_format).eval()


def export_classifier(net, class_names, image_size, mean, std, path):
    """Write the classifier of a KE2NT net as a torch.export program to path (.pt2); returns the
    metadata.

    net: KE2NT (any device; copied to the CPU); class_names: the net.num_classes names in logit
    order; image_size: working size S; mean, std: the per-channel normalisation of training (3
    floats each). The program maps images (B, 3, S, S) float RGB in [0, 1] to logits (B, K) = 100 *
    cos(f, t_k); the metadata dict (class_names, image_size, mean, std, logit_scale, input, output)
    is stored in the .pt2 as the extra file "ke2nt.json".
    """
    if len(class_names) != net.num_classes:
        raise ValueError(
            f"export: {len(class_names)} class names {list(class_names)} but the model "
            f"has {net.num_classes} classes"
        )
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"export: mean and std need 3 values each, got {mean} and {std}")
    module = build_exportable(net, mean, std)
    # (2, 3, S, S): batch 2 keeps the dim symbolic
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(
            module, (example,), dynamic_shapes=({0: batch},), strict=False
        )
    low, high = _batch_range(program)
    # torch versions that specialise size-1 dims: batch 1 must be padded to 2 by the caller
    if low > 1:
        print(
            f"export: this torch ({torch.__version__}) makes the batch dimension {low}..{high}; "
            f"pad a single image to a batch of {low}"
        )
    info = dict(
        format="KE2NT classifier, torch.export program",
        class_names=list(class_names),
        image_size=int(image_size),
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        logit_scale=float(net.logit_scale),
        min_batch=low,
        max_batch=high,
        input=(
            f"float32 RGB in [0, 1], shape (B, 3, {image_size}, {image_size}), B in {low}..{high}"
        ),
        output=f"logits (B, {len(class_names)}) = {net.logit_scale:g} * cos(feature, class anchor)",
    )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(info, indent=2)})
    return info


def _batch_range(program):
    """(min, max) of the exported program's batch dimension, from its range constraints."""
    first_input = program.graph_signature.user_inputs[0]
    placeholder = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name == first_input
    )
    size = placeholder.meta["val"].shape[0]
    if not isinstance(size, torch.SymInt):
        return int(size), int(size)
    bounds = program.range_constraints[size.node.expr]
    return int(bounds.lower), int(bounds.upper)


def load_exported(path):
    """Load a .pt2 from export_classifier -> (callable module, metadata dict). Needs torch alone."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported classifier not found: {path}")
    extra = {METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path}: no {METADATA_FILE} inside; not written by export_classifier")
    return program.module(), json.loads(extra[METADATA_FILE])


def export_checkpoint(net, ckpt, path):
    """The --export flag: export a net loaded by evaluate.load_model with its checkpoint's
    metadata."""
    meta = ckpt["meta"]
    info = export_classifier(
        net, ckpt["class_names"], meta["image_size"], meta["mean"], meta["std"], path
    )
    print(
        f"exported {meta['backbone']} classifier ({len(info['class_names'])} classes, "
        f"{info['image_size']} px) to {path}; load with torch.export.load(path).module()"
    )
    return info
