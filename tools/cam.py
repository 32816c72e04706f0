"""Grad-CAM for KE2NT's cosine classifier (--cam): where the predicted class's logit comes from.

cam = relu(sum_ch mean_ij(dz_c / dA_ch,ij) A_ch), c the predicted class, A the backbone's last
stage, upsampled and divided by its maximum; overlay = image (1 - cam / 2) + red cam / 2.
"""

import os

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps


def grad_cam(net, images):
    """Normalised images (B, 3, S, S) -> cams (B, S, S) in [0, 1] and predicted classes (B,).
    Leaves net in eval mode."""
    trunk = getattr(net.backbone, "trunk", net.backbone)  # SwinFace wraps a SwinTransformer
    swin = not hasattr(trunk, "layer4")  # a ResNet, else a SwinTransformer's channels-last stage
    layer = trunk.features[-1] if swin else trunk.layer4
    acts = []  # the stage's output made a leaf: the backward stops there, frozen weights or not
    handle = layer.register_forward_hook(
        lambda module, inputs, out: acts.append(out.detach().requires_grad_()) or acts[-1]
    )
    net.eval()
    try:
        with torch.enable_grad():
            logits = net.classify(images)  # (B, K); the images are independent in eval mode
            chosen = logits.argmax(1)
            (grad,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), acts[0])
    finally:
        handle.remove()
    act = acts[0].detach()
    if swin:
        act, grad = act.permute(0, 3, 1, 2), grad.permute(0, 3, 1, 2)  # (B, C, h, w)
    cam = F.relu((grad.float().mean((2, 3), keepdim=True) * act.float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.amax((1, 2), keepdim=True).clamp(min=1e-12)).cpu(), chosen.cpu()


def save_cam_overlay(image_uint8, cam, path, caption):
    """Blend cam (S, S) over image_uint8 (3, S, S) into a PNG, >= 128 px wide, captioned below."""
    w = 0.5 * cam.clamp(0, 1)[None]  # (1, S, S)
    red = torch.tensor([255.0, 0.0, 0.0])[:, None, None]
    out = (image_uint8.float() * (1 - w) + red * w).round().clamp(0, 255).to(torch.uint8)
    size = max(out.shape[-1], 128)
    pil = Image.fromarray(out.permute(1, 2, 0).numpy(), "RGB").resize((size, size), Image.BILINEAR)
    pil = ImageOps.expand(pil, (0, 0, 0, 20), "white")
    ImageDraw.Draw(pil).text((4, size + 4), caption, fill="black")
    pil.save(path)


def overlay_names(paths):
    """Unique overlay names: the path below the common folder, "__" for "/" (a__face_cam.png)."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
    stems = [os.path.relpath(os.path.splitext(os.path.abspath(p))[0], root) for p in paths]
    return [stem.replace(os.sep, "__") + "_cam.png" for stem in stems]


def run_cam(net, images_uint8, names, mean, std, out_dir, device, class_names, chunk=32):
    """--cam for one batch of uint8 images (B, 3, S, S): write out_dir/<name> each; the paths."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i in range(0, len(images_uint8), chunk):  # chunk images per backward pass
        batch = images_uint8[i : i + chunk].cpu()
        cams, chosen = grad_cam(net, ((batch.float() / 255 - mean) / std).to(device))
        for img, cam, c, name in zip(batch, cams, chosen, names[i : i + chunk], strict=True):
            written.append(os.path.join(out_dir, name))
            save_cam_overlay(img, cam, written[-1], f"Grad-CAM: {class_names[c]}")
    return written
