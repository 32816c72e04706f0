"""lib/errors.py: the user-error classes are also the built-in errors callers catch today,
user_errors converts only the exceptions named, and the flag checks name each bad flag and what it
must be."""

import pytest

import evaluate
import train
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


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--epochs", "0", "must be a whole number >= 1"),
        ("--batch-size", "2.5", "must be a whole number >= 1"),
        ("--image-size", "-3", "must be a whole number >= 1"),
        ("--val-fraction", "1.0", "must be a number >= 0 and < 1"),
        ("--val-fraction", "-0.1", "must be a number >= 0 and < 1"),
        ("--lr", "nan", "must be a number > 0"),
        ("--lr", "0", "must be a number > 0"),
        ("--momentum", "inf", "must be a number >= 0 and < 1"),
        ("--seed", "-1", "must be a whole number >= 0"),
        ("--log-every", "0", "must be a whole number >= 1"),
    ],
)
def test_train_flags_are_checked_as_they_are_parsed(flag, value, says, capsys):
    with pytest.raises(SystemExit) as e:
        train.build_parser().parse_args([flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {value!r} {says}" in capsys.readouterr().err
    assert train.build_parser().parse_args(["--val-fraction", "0.99"]).val_fraction == 0.99


def test_evaluate_flags_are_checked_and_out_needs_summarize(capsys):
    for argv in (["--top-k", "0"], ["--out", "summary.json", "--checkpoint", "x.pt"]):
        with pytest.raises(SystemExit) as e:
            evaluate.main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --top-k: '0' must be a whole number >= 1" in err
    assert "--out goes with --summarize" in err
