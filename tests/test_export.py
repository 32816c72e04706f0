"""tools/export.py: the exported .pt2 classifier runs in a process that has torch alone (no file of
this repository importable) and its logits equal KE2NT.classify on the same normalised images."""

import json
import os
import subprocess
import sys

import pytest
import torch

from model import KE2NT, build_backbone
from tools.export import export_classifier, load_exported

# Runs in the child: no repository on sys.path (python -I, cwd a temp folder, no PYTHONPATH).
CHILD = r"""
import importlib.util, json, sys, torch
for name in ("model", "tools"):
    assert importlib.util.find_spec(name) is None, sys.path
inputs = torch.load("inputs.pt", weights_only=True)
out = {}
for name in inputs["names"]:
    extra = {"ke2nt.json": ""}
    module = torch.export.load(name + ".pt2", extra_files=extra).module()
    out[name + ".json"] = extra["ke2nt.json"]
    with torch.no_grad():
        for key in ("one", "three"):
            out[name + "." + key] = module(inputs[name + "." + key])
out["modules"] = sorted(m for m in ("torchvision", "PIL", "numpy_ke2nt") if m in sys.modules)
torch.save({k: v for k, v in out.items() if k != "modules"}, "outputs.pt")
print(json.dumps(out["modules"]))
"""

# backbone: (working size, anchors, neutral index, classes); resnet18 has a text-only neutral
CASES = {
    "resnet18": (64, 8, 7, 7),
    "swin_t_face": (112, 7, 6, 7),
}


def _random_eval_model(backbone, anchors, neutral, classes, seed):
    """Random KE2NT in eval mode whose BatchNorm running statistics and affine terms are not the
    identity, so a train-mode export would give different logits."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = KE2NT(
        build_backbone(backbone),
        torch.randn(anchors, 512, generator=g),
        neutral,
        num_classes=classes,
    )
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return net.eval()


def test_exported_program_matches_classify_without_this_repository(tmp_path):
    mean, std = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)
    nets, inputs = {}, {"names": list(CASES)}
    for i, (backbone, (size, anchors, neutral, classes)) in enumerate(CASES.items()):
        nets[backbone] = _random_eval_model(backbone, anchors, neutral, classes, seed=i)
        names = [f"class{k}" for k in range(classes)]
        info = export_classifier(
            nets[backbone], names, size, mean, std, str(tmp_path / f"{backbone}.pt2")
        )
        assert info["class_names"] == names and info["image_size"] == size
        assert info["min_batch"] == 1
        g = torch.Generator().manual_seed(10 + i)
        # (1, 3, S, S) in [0, 1]
        inputs[f"{backbone}.one"] = torch.rand(1, 3, size, size, generator=g)
        inputs[f"{backbone}.three"] = torch.rand(3, 3, size, size, generator=g)
    torch.save(inputs, tmp_path / "inputs.pt")

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    done = subprocess.run(
        [sys.executable, "-I", "-c", CHILD],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # torch alone: no torchvision, no PIL
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)

    # the README helper, in this process
    module, info = load_exported(str(tmp_path / "resnet18.pt2"))
    assert info["class_names"] == [f"class{k}" for k in range(7)] and info["logit_scale"] == 100.0
    with torch.no_grad():
        torch.testing.assert_close(
            module(inputs["resnet18.three"]), outputs["resnet18.three"], atol=1e-5, rtol=0
        )

    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for backbone, (size, _, _, classes) in CASES.items():
        meta = json.loads(outputs[f"{backbone}.json"])
        assert meta["class_names"] == [f"class{k}" for k in range(classes)]
        assert (
            meta["image_size"] == size and meta["mean"] == list(mean) and meta["std"] == list(std)
        )
        for key in ("one", "three"):
            x = inputs[f"{backbone}.{key}"]
            with torch.no_grad():
                expected = nets[backbone].classify((x - m) / s)  # (B, classes)
            got = outputs[f"{backbone}.{key}"]
            assert got.shape == expected.shape == (len(x), classes)
            torch.testing.assert_close(
                got, expected, atol=1e-3, rtol=0, msg=f"{backbone} batch {len(x)}"
            )


def test_load_exported_and_errors(tmp_path):
    net = _random_eval_model("resnet18", 7, 6, 7, seed=3)
    with pytest.raises(ValueError, match="6 class names"):
        export_classifier(
            net, list("abcdef"), 32, (0.5,) * 3, (0.5,) * 3, str(tmp_path / "bad.pt2")
        )
    with pytest.raises(ValueError, match="3 values each"):
        export_classifier(
            net, list("abcdefg"), 32, (0.5,) * 2, (0.5,) * 3, str(tmp_path / "bad.pt2")
        )
    with pytest.raises(FileNotFoundError, match="nope.pt2"):
        load_exported(str(tmp_path / "nope.pt2"))
