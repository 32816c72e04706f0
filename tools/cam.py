"""Grad-CAM for KE2NT's cosine classifier: where the predicted class's logit comes from.

For image x with predicted class c = argmax_k z_k, z_k = 100 * cos(f, t_k), and A (C, h, w) the
activation of the backbone's last stage:
    w_ch = 1/(h w) * sum_ij d z_c / d A_ch,ij         (C,)  channel weights
    cam  = relu(sum_ch w_ch A_ch)                     (h, w)
then bilinearly upsampled to the input size and divided by its maximum (so in [0, 1]; all 0 if the
map is 0 everywhere). The last stage is
    resnet18      backbone.layer4                   output (B, 512, h, w)
    swin_t        backbone.features[-1]             output (B, h, w, 768), channels last
    swin_t_face   backbone.trunk.features[-1]       output (B, h, w, 768), channels last
save_cam_overlay blends a heat colour map over the image (PIL only).
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont


def cam_layer(backbone):
    """The backbone's last stage -> (module, channels_last: bool); raises for an unknown
    backbone."""
    if hasattr(backbone, "layer4"):  # torchvision ResNet
        return backbone.layer4, False
    trunk = getattr(backbone, "trunk", backbone)  # SwinFace wraps a SwinTransformer
    features = getattr(trunk, "features", None)
    if isinstance(features, nn.Sequential):  # torchvision SwinTransformer
        return features[-1], True
    raise ValueError(
        f"grad_cam: no known last stage in backbone {type(backbone).__name__} "
        "(expected .layer4, .features or .trunk.features)"
    )


def grad_cam(net, images, target=None):
    """Grad-CAM maps of a KE2NT net: images (B, 3, S, S) normalised -> (cams (B, S, S) in [0, 1] on
    the CPU, explained classes (B,) long). target: classes to explain (B,), default the predicted
    ones."""
    layer, channels_last = cam_layer(net.backbone)
    store = {}

    def hook(module, inputs, output):
        act = output.detach().requires_grad_(True)  # a leaf: the backward pass stops here
        store["act"] = act
        return act

    was_training = net.training
    net.eval()
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = net.classify(images)  # (B, K)
            chosen = (
                logits.argmax(1)
                if target is None
                else torch.as_tensor(target, device=logits.device)
            )
            score = logits.gather(
                1, chosen[:, None].long()
            ).sum()  # samples are independent in eval mode
            (grad,) = torch.autograd.grad(score, store["act"])
    finally:
        handle.remove()
        net.train(was_training)
    act = store["act"].detach()
    if channels_last:
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)  # (B, C, h, w)
    weights = grad.float().mean(dim=(2, 3))  # (B, C)
    cam = F.relu((weights[:, :, None, None] * act.float()).sum(1, keepdim=True))  # (B, 1, h, w)
    # (B, S, S)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]  # (B, 1, 1)
    return (cam / peak).clamp(0, 1).cpu(), chosen.cpu()


def heat_colours(cam):
    """cam (S, S) in [0, 1] -> RGB uint8 (S, S, 3): dark blue -> cyan -> yellow -> red (a jet-like
    map)."""
    knots = torch.tensor([0.0, 0.33, 0.66, 1.0])
    colours = torch.tensor(
        [[0, 0, 140], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=torch.float32
    )
    v = cam.clamp(0, 1).float()
    i = torch.bucketize(v, knots[1:-1])  # (S, S) segment 0..2
    u = ((v - knots[i]) / (knots[i + 1] - knots[i]))[..., None]  # (S, S, 1)
    rgb = colours[i] * (1 - u) + colours[i + 1] * u  # (S, S, 3)
    return rgb.round().to(torch.uint8)


def save_cam_overlay(image_uint8, cam, path, alpha=0.45, caption=None):
    """Blend the heat map of cam (S, S) over image_uint8 (3, S, S): out = (1 - alpha) image + alpha
    heat; writes a PNG to path (with an optional caption strip below the image)."""
    img = image_uint8.permute(1, 2, 0).float()  # (S, S, 3)
    if cam.shape != img.shape[:2]:
        raise ValueError(
            f"save_cam_overlay: cam {tuple(cam.shape)} does not match image "
            f"{tuple(image_uint8.shape)}"
        )
    out = (
        ((1 - alpha) * img + alpha * heat_colours(cam).float())
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    pil = Image.fromarray(out.numpy(), "RGB")
    if caption:
        size = max(pil.width, 128)
        pil = pil.resize((size, size * pil.height // pil.width), Image.BILINEAR)
        framed = Image.new("RGB", (pil.width, pil.height + 20), "white")
        framed.paste(pil, (0, 0))
        ImageDraw.Draw(framed).text(
            (4, pil.height + 4), caption, fill="black", font=ImageFont.load_default()
        )
        pil = framed
    pil.save(path)


def overlay_names(paths):
    """Output names "<stem>_cam.png" for image paths; stems that repeat get their folder path
    prefixed ("a__b__stem_cam.png", relative to the common folder) so no overlay overwrites
    another."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    if not repeated:
        return [f"{s}_cam.png" for s in stems]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    names = []
    for p, s in zip(paths, stems, strict=True):
        rel = os.path.relpath(os.path.splitext(os.path.abspath(p))[0], root)
        names.append((rel.replace(os.sep, "__") if s in repeated else s) + "_cam.png")
    return names


def run_cam(net, images_uint8, names, mean, std, out_dir, device, class_names=None, chunk=32):
    """The --cam flag for one batch: images_uint8 (B, 3, S, S) as classified, names (B,) output file
    names (see overlay_names); writes out_dir/<name> for each image (chunk images per backward
    pass); returns the written paths."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i in range(0, len(images_uint8), chunk):
        batch = images_uint8[i : i + chunk].cpu()  # (b, 3, S, S) uint8
        x = ((batch.float() / 255 - mean_t) / std_t).to(device)  # (b, 3, S, S)
        cams, chosen = grad_cam(net, x)
        for img, cam, c, name in zip(
            batch, cams, chosen.tolist(), names[i : i + chunk], strict=True
        ):
            path = os.path.join(out_dir, name)
            caption = None if class_names is None else f"Grad-CAM: {class_names[c]}"
            save_cam_overlay(img, cam, path, caption=caption)
            written.append(path)
    return written
