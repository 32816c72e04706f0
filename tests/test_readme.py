"""The README's set-up commands and CI's script must not drift apart."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def _fenced_commands(markdown):
    """Every line of every ```bash block."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", markdown, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    ci_lines = [
        line.strip()
        for line in _read(".ci", "run").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    test_command = ci_lines[-1]
    assert "pytest" in test_command
    assert test_command in _fenced_commands(_read("README.md"))


def test_readme_demo_command_installs_and_runs_the_demo():
    commands = _fenced_commands(_read("README.md"))
    demo = [c for c in commands if "--demo" in c]
    assert demo, "README has no demo command"
    assert demo[0].startswith("pip install -r requirements.txt && python train.py --demo")


def test_runtime_requirements_are_the_allowed_set():
    names = set()
    for line in _read("requirements.txt").splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[ ]", line)[0].lower())
    assert names == {"torch", "torchvision", "pillow", "numpy", "ftfy", "regex"}
