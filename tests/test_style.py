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


def _imports(path):
    """The project modules a file imports, lazily or not (ast), as top-level names: 'lib.batches',
    'data', 'tools.summarize', ..."""
    import ast

    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        nodes = list(ast.walk(ast.parse(f.read())))
    names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module and not n.level:
            names |= {f"{n.module}.{a.name}" if n.module in ("lib", "tools") else n.module
                      for a in n.names}  # fmt: skip
    top = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} | {"lib", "tools", "clip_text"}
    return {m for m in names if m.split(".")[0] in top}


def test_the_imports_run_one_way():
    """lib/ is the ground floor (no top-level file, no extra); the method's files import nothing of
    the project (text_prompts.py finds clip_text/ beside it by importlib); data.py no extra; the
    extras (tools/) are imported only by evaluate.py, whose flags ask for them; within lib/ no two
    files import each other."""
    files = [f for f in os.listdir(ROOT) if f.endswith(".py")]
    files += [f"lib/{f}" for f in os.listdir(os.path.join(ROOT, "lib")) if f.endswith(".py")]
    files += [f"tools/{f}" for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")]
    imports = {f: _imports(f) for f in files}
    for f, names in imports.items():
        if f.startswith("lib/"):
            assert all(m.startswith("lib.") for m in names), (f, names)
        if f in ("model.py", "losses.py", "text_prompts.py"):
            assert names == set(), (f, names)
        if any(m.startswith("tools") for m in names):
            assert f in ("evaluate.py", "tools/dataset_check.py") or f.startswith("tools/"), f
    lib = {f[:-3].replace("/", "."): n for f, n in imports.items() if f.startswith("lib/")}
    circles = [(a, b) for a in lib for b in lib[a] if a in lib.get(b, ())]
    assert circles == [] and not any(m.startswith("tools") for m in imports["data.py"])


def test_train_main_is_its_phases_in_at_most_70_lines():
    """train.py's main() lists the run's phases; a block of more than a few lines is a named
    function above it (nanoGPT's shape), so main stays short enough to read at once."""
    import ast

    with open(os.path.join(ROOT, "train.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert main.end_lineno - main.lineno + 1 <= 70
