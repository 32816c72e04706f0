"""An image that cannot be decoded stops training with one line naming the file (exit code 2, no
traceback) on every data path: the uint8 cache and the streaming DataLoader (--cache off), with
DataLoader workers or without; a user error raised in a worker keeps its own message."""

import gc
import os

import pytest
import torch
from test_bad_input import assert_one_clear_line, cli
from test_train import COLOUR_CLASSES, make_anchors, make_colour_folder

import train
from lib import checkpoint, errors


@pytest.fixture(autouse=True)
def quick_worker_shutdown(monkeypatch):
    """A DataLoader iterator whose worker raised takes 5 s per worker (MP_STATUS_CHECK_INTERVAL) to
    shut down when it is collected (torch 2.14); collect it here, waiting 0.1 s a worker."""
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    yield
    gc.collect()


class Failing(torch.utils.data.Dataset):
    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        errors.UnreadableImageError("cannot read image faces/a b.png: OSError: truncated"),
        errors.MissingFileError("faces/gone.png does not exist"),
        errors.BadInputError("two lines\nof message"),
    ],
    ids=type,
)
def test_a_user_error_in_a_worker_arrives_with_its_own_message(error):
    loader = torch.utils.data.DataLoader(Failing(error), batch_size=2, num_workers=1)
    with pytest.raises(type(error)) as caught:
        next(iter(loader))
    assert str(caught.value) == str(error)


def test_a_bug_in_a_worker_keeps_its_traceback():
    loader = torch.utils.data.DataLoader(Failing(RuntimeError("a bug")), num_workers=1)
    with pytest.raises(RuntimeError) as caught:
        next(iter(loader))
    assert "in DataLoader worker process" in str(caught.value) and "Traceback" in str(caught.value)
    assert errors.from_worker("plain message", errors.BadInputError) == "plain message"


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corrupt")
    root = make_colour_folder(tmp / "faces", per_class_train=8, per_class_test=4, size=16)
    bad = os.path.join(root, "train", "happiness", "3.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n but cut short")
    anchors = make_anchors(tmp / "anchors.pt", COLOUR_CLASSES)
    return tmp, root, bad, anchors


def corrupt_run_args(corrupt, out, cache, workers):
    _, root, _, anchors = corrupt
    return [
        "--device", "cpu", "--dataset", "folder", "--data-root", root, "--image-size", "16",
        "--batch-size", "8", "--epochs", "1", "--anchors", anchors, "--amp", "off", "--quiet",
        "--output", str(out), "--cache", cache, "--num-workers", str(workers),
    ]  # fmt: skip


@pytest.mark.parametrize("cache", ["auto", "off"])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_one_line_on_every_data_path(corrupt, cache, workers):
    tmp, _, bad, _ = corrupt
    out = tmp / f"run-{cache}-{workers}"
    with pytest.raises(errors.UnreadableImageError) as caught:
        train.main(corrupt_run_args(corrupt, out, cache, workers))
    assert str(caught.value).startswith(f"cannot read image {bad}: ")
    assert "\n" not in str(caught.value)
    del caught  # its traceback holds the DataLoader, whose workers inherited the lock
    gc.collect()
    with checkpoint.run_lock(str(out), "main() kept its lock"):  # released though main() raised
        pass


def test_the_streaming_path_with_workers_says_one_line_on_the_command_line(corrupt):
    tmp, _, bad, _ = corrupt
    code, err = cli("train.py", *corrupt_run_args(corrupt, tmp / "cli", "off", 2), process=True)
    assert_one_clear_line(code, err, f"cannot read image {bad}")
