"""User errors, and how the command-line tools end on them.

A user error is bad input: a flag, a file, a dataset layout, a checkpoint. The program stops with
one clear message (the file and line, key or flag, and what to do) and a non-zero exit code, no
traceback. Every other exception is a bug and keeps its full traceback.

    if __name__ == "__main__":
        with errors.cli_errors():
            main()

The classes are also the built-in exceptions the data and model layers raised before, so callers and
tests that catch ValueError or FileNotFoundError keep working: BadInputError is a ValueError,
MissingFileError a FileNotFoundError. This file imports nothing beyond the standard library, so any
module can use it.
"""

import contextlib
import math
import sys


class UserError(Exception):
    """Bad input from the user. str(error) is the whole message; exit_code is the process's exit
    status. Raised in a DataLoader worker, it reaches the main process with the same message: the
    worker's traceback, which torch puts around it, is dropped (see from_worker)."""

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
    """A flag, a file's content, a dataset layout or a checkpoint that is wrong (also a
    ValueError)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (also a FileNotFoundError)."""


class WriteError(UserError, OSError):
    """A file could not be written (a full disk, no permission); the previous file is unchanged."""


class UnreadableImageError(BadInputError, RuntimeError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); also a RuntimeError,
    which data.load_rgb raised before."""


class NonFiniteError(UserError):
    """Training produced nan or inf; nothing was saved. Exit status 3 tells it apart from bad
    input."""

    exit_code = 3


@contextlib.contextmanager
def cli_errors(stream=None):
    """Around a command-line main(): a UserError prints `error: <message>` to stderr and exits with
    its exit_code (2, or 3 for NonFiniteError); any other exception passes through with its
    traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=stream or sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None


@contextlib.contextmanager
def user_errors(*types, prefix=""):
    """Inside the block, an exception of one of `types` (e.g. the ValueError of a layer that cannot
    import this file) becomes a user error with the same message, `prefix` in front (e.g.
    "--backbone-weights: "). Wrap only the one call whose failures are the user's input, so that
    bugs elsewhere keep their traceback."""
    try:
        yield
    except UserError:
        raise
    except types as e:
        cls = MissingFileError if isinstance(e, FileNotFoundError) else BadInputError
        raise cls(f"{prefix}{e}") from e


def _whole(low, high=None):
    """A test: an int (not a bool) with low <= v (<= high)."""
    return lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
    )


def _number(low, high=None, low_open=False, high_open=False):
    """A test: a finite int or float in the interval from low to high, each end open or closed."""

    def ok(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return ok


# torch seeds are 64-bit; the batch order and augmentation generators take seed + 1 and seed + 2
SEED_MAX = 2**64 - 3
SEED_RULE = f"a whole number from 0 to {SEED_MAX} (2**64 - 3)"

# (attribute, test, what it must be); an attribute that is absent or None is not checked.
TRAIN_FLAGS = (
    ("epochs", _whole(1), "a whole number >= 1"),
    ("batch_size", _whole(1), "a whole number >= 1"),
    ("eval_batch_size", _whole(1), "a whole number >= 1"),
    ("image_size", _whole(1), "a whole number of pixels >= 1"),
    ("lr", _number(0, low_open=True), "a finite number > 0"),
    ("warmup_lr", _number(0), "a finite number >= 0"),
    ("warmup_epochs", _whole(0), "a whole number >= 0"),
    ("momentum", _number(0, 1, high_open=True), "a number in [0, 1)"),
    ("weight_decay", _number(0), "a finite number >= 0"),
    ("lambda_s", _number(0), "a finite number >= 0"),
    ("lambda_t", _number(0), "a finite number >= 0"),
    ("lambda_c", _number(0), "a finite number >= 0"),
    (
        "val_fraction",
        _number(0, 1, high_open=True),
        "in [0, 1): the share of the training images held out to select best.pt (0 = none)",
    ),
    ("num_workers", _whole(0), "a whole number >= 0"),
    ("log_every", _whole(1), "a whole number of steps >= 1"),
    ("num_train", _whole(1), "a whole number >= 1"),
    ("num_test", _whole(1), "a whole number >= 1"),
    ("seed", _whole(0, SEED_MAX), SEED_RULE),
)
EVAL_FLAGS = (
    ("top_k", _whole(1), "a whole number >= 1 (how many classes to list per image)"),
    ("batch_size", _whole(1), "a whole number >= 1"),
    ("num_workers", _whole(0), "a whole number >= 0"),
    ("num_test", _whole(1), "a whole number >= 1"),
    ("seed", _whole(0, SEED_MAX), SEED_RULE),
)


def check_flags(args, rules):
    """Check the flags in `args` (an argparse Namespace) against `rules` (TRAIN_FLAGS, EVAL_FLAGS):
    BadInputError with one line per bad flag, e.g. "--epochs must be a whole number >= 1 (got
    0)"."""
    bad = []
    for name, ok, requirement in rules:
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            bad.append(f"--{name.replace('_', '-')} must be {requirement} (got {value!r})")
    if bad:
        raise BadInputError("\n".join(bad))


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


def check_train_batches(num_images, batch_size, val_fraction=0.0):
    """The training split (after the --val-fraction hold-out) must fill at least one batch, since
    the incomplete last batch is dropped: num_images >= batch_size, else a BadInputError saying what
    to lower."""
    if num_images >= batch_size:
        return
    held = f" left after --val-fraction {val_fraction}" if val_fraction else ""
    if num_images == 0:
        raise BadInputError(f"no training images{held}; lower --val-fraction or check the dataset")
    raise BadInputError(
        f"the training split has {num_images} images{held}, fewer than one batch of "
        f"--batch-size {batch_size} (the incomplete last batch is dropped); "
        f"use --batch-size {num_images} or less"
    )
