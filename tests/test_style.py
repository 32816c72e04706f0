"""The formatter and the linter the Python field uses, run as part of the suite: the README's test
command and CI fail on code that `ruff format` would change or that `ruff check` flags (rules and
the reason for each rule turned off: pyproject.toml; ruff's version: requirements-dev.txt)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args):
    command = [sys.executable, "-m", "ruff", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_code_is_formatted():
    done = _ruff("format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_linter_finds_nothing():
    done = _ruff("check", ".")
    assert done.returncode == 0, done.stdout + done.stderr
