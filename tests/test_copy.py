"""Copy-paste is true: model.py, losses.py, text_prompts.py and clip_text/ copied flat into an empty
folder run the README's one-step example as written, importing nothing else of this repository."""

import os
import re
import shutil
import subprocess
import sys

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the README's example leaves to the reader: the anchors (here from a random-init text tower,
# offline) and a batch. The weights file it names is written beside it before the run.
PRELUDE = """
import importlib.util, sys, torch
assert importlib.util.find_spec("train") is None, "the repository is visible"
import text_prompts
names = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
anchors, source = text_prompts.anchors_for(names, clip="random", seed=0)
images, labels = torch.randn(4, 3, 112, 112), torch.tensor([0, 3, 6, 5])
"""
CHECK = """
assert all(torch.isfinite(v) for v in parts.values()) and torch.isfinite(loss), parts
assert pred.shape == (4,) and net.backbone.conv1.weight.grad is not None
print("loss", float(loss), sorted(parts))
print("project modules", sorted(m for m in sys.modules if m.split(".")[0] in ("lib", "data",
      "train", "evaluate", "tools")))
"""


def readme_example():
    """The README's python block that calls ke2nt_loss: the one-step example."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    blocks = [b for b in blocks if "ke2nt_loss" in b]
    assert len(blocks) == 1, "the README should hold one python block with the one-step example"
    return blocks[0]


def test_copied_files_run_the_readme_example(tmp_path):
    for name in ("model.py", "losses.py", "text_prompts.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    shutil.copytree(
        os.path.join(ROOT, "clip_text"),
        tmp_path / "clip_text",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    assert not (tmp_path / "lib").exists() and not (tmp_path / "data.py").exists()
    weights = torchvision.models.resnet18(num_classes=7).state_dict()  # an MS-Celeb-style file
    torch.save(
        {"state_dict": {"module." + k: v for k, v in weights.items()}},
        tmp_path / "resnet18_msceleb.pth",
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + readme_example() + CHECK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "loss " in done.stdout and "['lc', 'ls', 'lt']" in done.stdout
    assert "project modules []" in done.stdout
