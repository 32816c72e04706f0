"""Shared pytest set-up: the repository's flat modules are importable from the tests."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The fuzz tests are repeatable: a fixed number of examples, drawn the same way on every run (CI
# included), no per-example deadline (a slow CPU is not a failure), no example database on disk.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a development dependency (requirements-dev.txt)
    pass
else:
    settings.register_profile(
        "repeatable",
        derandomize=True,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory):
    """One trained colour-folder run (test_train.train_colour_run), read by test_train and
    test_evaluate: {tmp, anchors, out, ckpt, metrics, printed}; tmp/data holds its images."""
    from test_train import train_colour_run

    return train_colour_run(tmp_path_factory.mktemp("colour_run"))
