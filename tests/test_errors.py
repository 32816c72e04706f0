"""lib/errors.py: the user-error classes are also the built-in errors callers catch today,
user_errors converts only the exceptions named, and the flag checks name each bad flag and what it
must be."""

import argparse

import pytest

from lib import errors


def test_user_error_classes_are_the_builtin_ones_too():
    assert isinstance(errors.BadInputError("x"), ValueError)
    assert isinstance(errors.MissingFileError("x"), FileNotFoundError)
    assert isinstance(errors.WriteError("x"), OSError)
    assert str(errors.MissingFileError("labels.txt: missing")) == "labels.txt: missing"
    assert errors.BadInputError.exit_code == 2 and errors.NonFiniteError.exit_code == 3


def test_user_errors_converts_only_the_named_types():
    missing_keys = pytest.raises(
        errors.BadInputError, match="^--backbone-weights: w.pth: missing keys$"
    )
    with missing_keys, errors.user_errors(ValueError, prefix="--backbone-weights: "):
        raise ValueError("w.pth: missing keys")
    with (
        pytest.raises(errors.MissingFileError, match="w.pth"),
        errors.user_errors(ValueError, FileNotFoundError),
    ):
        raise FileNotFoundError("w.pth")
    with pytest.raises(ZeroDivisionError), errors.user_errors(ValueError):  # a bug stays a bug
        _ = 1 / 0


def test_cli_errors_prints_one_line_and_exits(capsys):
    with pytest.raises(SystemExit) as e, errors.cli_errors():
        raise errors.BadInputError("--epochs must be a whole number >= 1 (got 0)")
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: --epochs must be a whole number >= 1 (got 0)\n"
    with pytest.raises(KeyError), errors.cli_errors():
        raise KeyError("a bug")


def train_args(**changes):
    base = dict(
        epochs=1,
        batch_size=64,
        eval_batch_size=256,
        image_size=112,
        lr=2e-3,
        warmup_lr=1e-4,
        warmup_epochs=1,
        momentum=0.9,
        weight_decay=5e-4,
        lambda_s=1.0,
        lambda_t=1.0,
        lambda_c=1.0,
        val_fraction=0.0,
        num_workers=0,
        log_every=50,
        num_train=2800,
        num_test=700,
    )
    return argparse.Namespace(**{**base, **changes})


def test_train_flags():
    errors.check_flags(train_args(), errors.TRAIN_FLAGS)
    errors.check_flags(train_args(image_size=None), errors.TRAIN_FLAGS)  # unset: not checked
    cases = {
        "epochs": (0, "--epochs must be a whole number >= 1 (got 0)"),
        "batch_size": (0, "--batch-size must be a whole number >= 1 (got 0)"),
        "image_size": (-3, "--image-size must be a whole number of pixels >= 1 (got -3)"),
        "eval_batch_size": (0, "--eval-batch-size must be a whole number >= 1 (got 0)"),
        "val_fraction": (1.5, "--val-fraction must be in [0, 1)"),
        "lr": (float("nan"), "--lr must be a finite number > 0 (got nan)"),
        "log_every": (0, "--log-every must be a whole number of steps >= 1 (got 0)"),
    }
    for flag, (value, text) in cases.items():
        with pytest.raises(errors.BadInputError) as e:
            errors.check_flags(train_args(**{flag: value}), errors.TRAIN_FLAGS)
        assert str(e.value).startswith(text)
    for value in (1.0, -0.1, float("inf")):
        with pytest.raises(errors.BadInputError, match="--val-fraction"):
            errors.check_flags(train_args(val_fraction=value), errors.TRAIN_FLAGS)
    errors.check_flags(train_args(val_fraction=0.99), errors.TRAIN_FLAGS)
    with pytest.raises(errors.BadInputError) as e:  # every bad flag, one line each
        errors.check_flags(train_args(epochs=0, lr=-1.0), errors.TRAIN_FLAGS)
    assert str(e.value).splitlines() == [
        "--epochs must be a whole number >= 1 (got 0)",
        "--lr must be a finite number > 0 (got -1.0)",
    ]


def test_eval_flags():
    ok = argparse.Namespace(top_k=3, batch_size=256, num_workers=0, num_test=None)
    errors.check_flags(ok, errors.EVAL_FLAGS)
    for k in (0, -1):
        with pytest.raises(
            errors.BadInputError, match=rf"--top-k must be a whole number >= 1 .*\(got {k}\)"
        ):
            errors.check_flags(argparse.Namespace(**{**vars(ok), "top_k": k}), errors.EVAL_FLAGS)


def test_train_split_must_fill_one_batch():
    errors.check_train_batches(64, 64)
    with pytest.raises(
        errors.BadInputError,
        match=r"has 50 images left after --val-fraction 0.5, fewer than one "
        r"batch of --batch-size 64 .*use --batch-size 50 or less",
    ):
        errors.check_train_batches(50, 64, 0.5)
    with pytest.raises(
        errors.BadInputError, match="no training images left after --val-fraction 0.99"
    ):
        errors.check_train_batches(0, 64, 0.99)
