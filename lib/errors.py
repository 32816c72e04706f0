"""User errors, and how the command-line tools end on them: bad input (a flag, a file, a dataset
layout, a checkpoint) stops the program with one line naming it and what to do, exit code 2, no
traceback (`with errors.cli_errors(): main()`); any other exception is a bug and keeps its
traceback. BadInputError is also a ValueError, MissingFileError a FileNotFoundError."""

import argparse
import contextlib
import math
import os
import sys


class UserError(Exception):
    """Bad input from the user: str(error) is the whole message, exit_code the process's exit
    status. Raised in a DataLoader worker, it keeps its message (from_worker drops the rest)."""

    exit_code = 2

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (from_worker(args[0], type(self)),)
        super().__init__(*args)


def from_worker(message, cls):
    """The message of a `cls` error as raised in a DataLoader worker, when `message` is the one
    torch re-raises it with in the main process ("Caught X in DataLoader worker process N.\n
    Original Traceback ...", ending in the traceback's "module.X: message"); else `message`."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    name = cls.__qualname__
    if cls.__module__ not in ("__main__", "builtins"):
        name = f"{cls.__module__}.{name}"
    _, found, original = message.rpartition(f"\n{name}: ")
    return original.rstrip("\n") if found else message


class BadInputError(UserError, ValueError):
    """A flag, a file's content, a dataset layout or a checkpoint that is wrong."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a FileNotFoundError)."""


class WriteError(UserError, OSError):
    """A file could not be written (a full disk, no permission); the previous file is unchanged."""


class UnreadableImageError(BadInputError, RuntimeError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); also a RuntimeError,
    which data.load_rgb raised before."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, said in one line (how to go on) with exit status 130, as a shell reports SIGINT."""

    exit_code = 130


class NonFiniteError(UserError):
    """Training produced nan or inf; nothing was saved (exit status 3, apart from bad input)."""

    exit_code = 3


@contextlib.contextmanager
def cli_errors():
    """Around a command-line main(): a UserError prints `error: <message>` to stderr and exits with
    its exit_code (2, or 3 for NonFiniteError; Ctrl-C, Interrupted, 130); any other exception
    passes through with its traceback. Under torchrun only process 0 says it (RANK 0), once."""
    try:
        yield
    except (UserError, Interrupted) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None


@contextlib.contextmanager
def on_ctrl_c(note):
    """Ctrl-C (KeyboardInterrupt) inside the block becomes Interrupted(note()), once what the
    block holds is closed (a with statement's later context managers exit first)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(note()) from None


@contextlib.contextmanager
def user_errors(*types, prefix=""):
    """Inside the block, an exception of one of `types` becomes a user error with the same message,
    `prefix` (e.g. "--backbone-weights: ") in front. Wrap only the one call whose failures are the
    user's input, so that bugs elsewhere keep their traceback."""
    try:
        yield
    except UserError:
        raise
    except types as e:
        cls = MissingFileError if isinstance(e, FileNotFoundError) else BadInputError
        raise cls(f"{prefix}{e}") from e


def classes_flag(text, datasets):
    """--classes TEXT -> a dataset name (one of `datasets`), or the list of its comma-separated
    class words (the spaces around each dropped); an empty, repeated or unknown name is a
    BadInputError naming --classes."""
    if "," not in text:
        if text.strip() not in datasets:
            raise BadInputError(
                f"--classes {text!r}: neither a dataset name ({', '.join(sorted(datasets))}) nor "
                "a comma-separated list of class words"
            )
        return text.strip()
    names = [n.strip() for n in text.split(",")]
    twice = sorted({n for n in names if names.count(n) > 1})
    if not all(names) or twice:
        raise BadInputError(
            f"--classes {text!r}: "
            + (f"{twice} named more than once" if all(names) else "an empty class name")
            + "; give each class once, separated by commas"
        )
    return names


def bounded(cast, low, high=None, low_open=False):
    """An argparse type=: a finite `cast` in [low, high) ((low, high) with low_open); anything else
    is argparse's own one-line error naming the flag (exit 2)."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        above = value is not None and (value > low if low_open else value >= low)
        if not (above and math.isfinite(value) and (high is None or value < high)):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a {'whole number' if cast is int else 'number'} "
                f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high else "")
            )
        return value

    return parse
