"""The CUDA paths: batched augmentation with a CUDA generator, the cache on the host or on the GPU
feeding it (a device written as "cuda" or "cuda:0"), a training step that never waits for the host,
training with the default flags, fp16 with the gradient scaler, --compile, the streaming path, and
resume.

Skipped without a GPU (CI has none); benchmarks/gpu_check.sh runs them on a GPU machine. What holds
on a GPU is tested here; what holds only on the CPU (bit-identical resume) is tested in
test_train.py. On a GPU a resumed run restores the weights, optimizer, scaler, schedule and the
batch order and augmentation (re-seeded per epoch), but cuDNN's kernel choice and atomics in
backward kernels make its numbers differ slightly.
"""

import functools
import json

import pytest
import torch
from test_train import COLOUR_CLASSES, make_anchors, make_colour_folder

import text_prompts
import train
from lib import batches, checkpoint
from lib import device as dev
from lib.device import resolve_device
from lib.face_images import BatchAugment
from model import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _uint8(b=256, s=16, seed=0):
    return torch.randint(
        0, 256, (b, 3, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_batch_augment_with_a_cuda_generator_replays_and_draws_the_recipe():
    aug = BatchAugment(16, mean=(0, 0, 0), std=(1, 1, 1), crop_p=0.0, flip_p=0.5, erase_p=0.0).to(
        "cuda"
    )
    x = _uint8().to("cuda")
    first = aug(x, generator=torch.Generator(device="cuda").manual_seed(4))
    again = aug(x, generator=torch.Generator(device="cuda").manual_seed(4))
    # the same generator state, the same batch
    assert first.device.type == "cuda" and torch.equal(first, again)
    flipped = (first - x.float() / 255).abs().flatten(1).amax(
        1
    ) > 1e-3  # (B,) changed images were flipped
    assert 0.35 < flipped.float().mean().item() < 0.65


@pytest.mark.parametrize("cache_at", ["cpu", "cuda"])
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 0)])
def test_the_cache_feeds_the_gpu_however_the_device_is_written(cache_at, device):
    images, labels = _uint8(40).to(cache_at), torch.arange(40) % 4
    aug = BatchAugment(16, IMAGENET_MEAN, IMAGENET_STD, train=True).to("cuda")
    loader = batches.CachedBatches(
        images,
        labels,
        8,
        aug,
        train=True,
        order_gen=torch.Generator().manual_seed(0),
        aug_gen=torch.Generator(device="cuda").manual_seed(1),
        device=device,
    )
    seen = []
    for x, y in loader:
        assert x.device.type == "cuda" and y.device.type == "cuda" and x.dtype == torch.float32
        seen.append(y.cpu())
    assert sorted(torch.cat(seen).tolist()) == sorted(labels.tolist())  # an epoch is a permutation


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda")
    return dict(
        root=make_colour_folder(tmp / "faces"),
        anchors=make_anchors(tmp / "anchors.pt", COLOUR_CLASSES),
        tmp=tmp,
    )


def _flags(colour, name, *extra, epochs=10):
    """train.py on the colour set; 10 epochs, as in test_train.py: fewer can leave eval-mode
    BatchNorm missing a whole class on some kernels, which would make the thresholds a coin."""
    out = colour["tmp"] / name
    args = [
        "--device",
        "cuda",
        "--dataset",
        "folder",
        "--data-root",
        colour["root"],
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        str(epochs),
        "--lr",
        "0.01",
        "--warmup-epochs",
        "0",
        "--anchors",
        colour["anchors"],
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]
    return args, out


def _train(colour, name, *extra, epochs=10):
    args, out = _flags(colour, name, *extra, epochs=epochs)
    return train.main(args), out


def test_a_training_step_on_the_gpu_never_waits_for_the_host(colour):
    """As tests/test_gpu_path.py checks op by op on the CPU; here CUDA itself says (bf16: the fp16
    GradScaler's one check per step is the sync it is allowed)."""
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bf16 on this GPU")
    args = train.get_args(_flags(colour, "step", "--amp", "bf16")[0])
    ddp = dev.OneProcess(resolve_device("cuda"))
    args.num_workers = 0
    splits = train.load_data(args, ddp, lambda *a: None)
    batches.seed_epoch(splits.generators, args.seed, 1)
    t = text_prompts.load_anchors(colour["anchors"], splits.class_names).anchors
    net, precision, optimizer, _, scaler = train.build_training(
        args, t, splits.class_names, ddp.device, None, lambda *a: None, ddp
    )
    model, criterion = train.for_training(args, net, ddp)
    loader = iter(splits.train)
    x, y = next(loader)  # a first step: cuDNN's choice of kernels and lazy set-up may sync
    train.train_step(model, criterion, x, y, optimizer, scaler, precision)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for global_sum in (None, lambda sums: sums):  # one process; the reduction hook's path
            x, y = next(loader)
            loss = functools.partial(criterion, global_sum=global_sum)
            train.train_step(model, loss, x, y, optimizer, scaler, precision)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(RuntimeError):  # what the mode is for
        torch.cuda.set_sync_debug_mode("error")
        try:
            y.sum().item()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "extra",
    [(), ("--amp", "fp16"), ("--amp", "off"), ("--cache", "off", "--num-workers", "2")],
    ids=["default", "fp16", "fp32", "streaming"],
)
def test_training_on_cuda_learns(colour, extra):
    metrics, out = _train(colour, "run-" + "-".join(extra).replace("--", ""), *extra)
    assert metrics["test_accuracy"] > 60.0  # three well-separated colours; chance is 33%
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    if "fp16" in extra:
        assert ckpt["scaler"].get("scale", 0) > 0  # the gradient scaler was on, and saved its state


def test_compile_on_cuda(colour):
    metrics, _ = _train(colour, "compiled", "--compile")
    assert metrics["test_accuracy"] > 60.0


def test_resume_on_cuda_restores_the_run(colour, monkeypatch, capsys):
    real_write = checkpoint.BackgroundWriter.write

    def stop_after_epoch_2(writer, files):
        real_write(writer, files)
        if any(path.endswith("log.jsonl") and obj.count("\n") == 2 for obj, path in files):
            raise KeyboardInterrupt  # as if the run were stopped right after writing epoch 2

    monkeypatch.setattr(checkpoint.BackgroundWriter, "write", stop_after_epoch_2)
    flags, out = _flags(colour, "stopped")
    flags.remove("--quiet")  # the resumed run inherits it
    with pytest.raises(KeyboardInterrupt):
        train.main(flags)
    monkeypatch.undo()
    # train.main waited for the epoch-2 write before it let the KeyboardInterrupt out
    stopped = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert stopped["epoch"] == 2
    capsys.readouterr()
    resumed = train.main(["--resume", str(out), "--device", "cuda:0"])
    printed = capsys.readouterr().out
    assert "resumed" in printed and "at epoch 2" in printed and "not bit-exact" not in printed
    history = [
        json.loads(line)
        for line in (colour["tmp"] / "stopped" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in history] == list(range(1, 11)) and history[1] == stopped
    assert resumed["last_epoch"]["epoch"] == 10 and resumed["test_accuracy"] > 60.0
