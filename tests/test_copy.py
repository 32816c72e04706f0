"""Copy-paste is true: model.py, losses.py, text_prompts.py and clip_text/ run the README's one-step
example as written, offline, copied flat into an empty folder, and copied into a package folder of a
codebase that has a losses.py and a data.py of its own; text_prompts.py's command line runs in both
places. Nothing else of this repository is imported."""

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD = ("model.py", "losses.py", "text_prompts.py", "clip_text")

# After the example: it trained, and nothing else of the project came with it. Then the anchors'
# command line, as `python text_prompts.py` (flat) or `python -m ke2nt.text_prompts` (package).
CHECK = """
import runpy, sys
assert all(torch.isfinite(v) for v in parts.values()) and torch.isfinite(loss), parts
assert logits.shape == (4, 7) and pred.shape == (4,) and not net.training
assert net.backbone.conv1.weight.grad is not None and parts["lt"] > 0 and parts["lc"] > 0
print("loss", float(loss), sorted(parts))
print("project modules", sorted(m for m in sys.modules if m.split(".")[0] in ("lib", "data",
      "train", "evaluate", "tools")))
sys.argv = ["text_prompts.py", "--dataset", "ferplus", "--clip", "random", "--out", "a.pt"]
runpy.{run}, run_name="__main__")
"""


def readme_example():
    """The README's python block that calls ke2nt_loss: the one-step example."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    blocks = [b for b in blocks if "ke2nt_loss" in b]
    assert len(blocks) == 1, "the README should hold one python block with the one-step example"
    return blocks[0]


def _copy_method(folder):
    os.makedirs(folder, exist_ok=True)
    for name in METHOD:
        src, dst = os.path.join(ROOT, name), os.path.join(folder, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)


def _start(code, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_the_readme_example_runs_copied_flat_and_copied_into_a_package(tmp_path):
    example = readme_example()
    assert example.startswith("import torch\nimport losses, model, text_prompts\n")
    flat = tmp_path / "flat"
    _copy_method(flat)
    # a codebase with modules of the same names: the method goes into its package folder ke2nt/
    codebase = tmp_path / "mycodebase"
    _copy_method(codebase / "ke2nt")
    (codebase / "ke2nt" / "__init__.py").write_text("")
    (codebase / "losses.py").write_text("def focal_loss():\n    pass\n")
    (codebase / "data.py").write_text("LOADERS = {}\n")
    in_package = example.replace("import losses, model,", "from ke2nt import losses, model,")
    runs = {
        "flat": _start(example + CHECK.format(run='run_path("text_prompts.py"'), flat),
        "package": _start(
            in_package + CHECK.format(run='run_module("ke2nt.text_prompts"'), codebase
        ),
    }
    for where, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, (where, err)
        assert "loss " in out and "['lc', 'ls', 'lt']" in out, (where, out)
        assert "project modules []" in out, (where, out)
        assert "anchors (8, 512)" in out, (where, out)  # FERPlus's 8 classes, neutral among them
    assert os.path.isfile(flat / "a.pt") and os.path.isfile(codebase / "a.pt")
