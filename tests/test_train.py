"""train.py: a tiny run learns and writes its outputs, kill -9 + --resume is bit-exact, the released
lr schedule, atomic checkpoints, NaN stop. Data and anchors are made here (tiny sizes, no
downloads)."""

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import clip_text
import model
import text_prompts
import train
from lib import batches, checkpoint, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# folder names = class words (sorted, as the folder dataset reads them)
COLOUR_CLASSES = [
    "anger",
    "happiness",
    "neutral",
]


def make_anchors(path, names, seed=0):
    """Anchors from a small random CLIP-style text tower, saved as text_prompts does."""
    torch.manual_seed(seed)
    encoder = clip_text.TextEncoder(embed_dim=512, width=64, heads=2, layers=1).eval()
    text_prompts.save_anchors(
        path,
        text_prompts.build_anchors(encoder, text_prompts.anchor_names(names)),
        names,
        [text_prompts.TEMPLATE],
        "tiny-random-test-tower",
    )
    return str(path)


def make_colour_folder(
    root, per_class_train=24, per_class_test=12, size=40, seed=0, classes=COLOUR_CLASSES
):
    """root/{train,test}/<class>/*.png: each class a different dominant colour plus noise (easily
    learnable)."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], dtype=np.float64)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for k, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                img = base[k] + rng.normal(0, 40, (size, size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                    os.path.join(root, split, name, f"{i}.png")
                )
    return str(root)


def assert_same_run(full, broken, epochs):
    """The run in `broken` (killed and resumed) ended where the uninterrupted one in `full` did:
    the same weights, momentum and epoch rows, and its log.jsonl holds each epoch once. Returns
    the two last.pt dicts."""
    a = torch.load(full / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(broken / "last.pt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == epochs
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for pa, pb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    keys = ("ls", "lt", "lc", "train_accuracy", "test_accuracy", "lr")
    assert [[r[k] for k in keys] for r in a["history"]] == [
        [r[k] for k in keys] for r in b["history"]
    ]
    log = [json.loads(line) for line in (broken / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, epochs + 1))
    return a, b


def stop_after_epoch_1(monkeypatch):
    """train.main raises KeyboardInterrupt right after its first epoch's files are written (as if
    the run were stopped there); undone by monkeypatch.undo()."""
    real_write = checkpoint.BackgroundWriter.write

    def write_then_stop(writer, files):
        real_write(writer, files)
        writer.wait()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.BackgroundWriter, "write", write_then_stop)


def tiny_synthetic_args(out, anchors, epochs=3, num_train=96):
    return [
        "--device",
        "cpu",
        "--dataset",
        "synthetic",
        "--num-train",
        str(num_train),
        "--num-test",
        "28",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        str(epochs),
        "--lr",
        "0.05",
        "--warmup-epochs",
        "1",
        "--anchors",
        anchors,
        "--amp",
        "off",
        "--output",
        str(out),
        "--quiet",
    ]


def train_colour_run(tmp):
    """train.py on tmp/data, a colour folder (3 classes, 24 + 12 images each): 10 epochs at 32 px,
    fp32, into tmp/run. A correct loop reaches 100% on these colours on every kernel tried
    (AVX-512, AVX2, no SIMD); after 4 epochs eval-mode BatchNorm could still miss a whole class on
    some of them. Shared by this file and test_evaluate.py (conftest's colour_run)."""
    data_root = make_colour_folder(tmp / "data")
    anchors = make_anchors(tmp / "anchors.pt", COLOUR_CLASSES)
    out, printed = tmp / "run", io.StringIO()
    flags = ["--device", "cpu", "--dataset", "folder", "--data-root", data_root]
    flags += ["--image-size", "32", "--batch-size", "16", "--epochs", "10", "--lr", "0.01"]
    flags += ["--warmup-epochs", "0", "--anchors", anchors, "--amp", "off", "--output", str(out)]
    with contextlib.redirect_stdout(printed):
        metrics = train.main(flags + ["--log-every", "2"])
    ckpt, printed = str(out / "last.pt"), printed.getvalue()
    return dict(tmp=tmp, anchors=anchors, out=out, ckpt=ckpt, metrics=metrics, printed=printed)


def test_tiny_run_learns_and_writes_every_output(colour_run):
    out, anchors, metrics = colour_run["out"], colour_run["anchors"], colour_run["metrics"]
    printed = colour_run["printed"]
    assert "img/s" in printed and "eta" in printed and " lt " in printed and str(out) in printed
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(1, 11))
    assert history[-1]["ls"] < history[0]["ls"]  # the supervised loss falls
    assert metrics["test_accuracy"] >= 70.0  # chance is 33.3%; one class missed is 66.7%
    on_disk = json.loads((out / "metrics.json").read_text())
    # last epoch's number, not the best
    assert on_disk["test_accuracy"] == history[-1]["test_accuracy"]
    cm = torch.tensor(on_disk["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 36
    assert abs(100 * cm.diag().sum().item() / 36 - on_disk["test_accuracy"]) < 1e-9
    assert set(on_disk["per_class_accuracy"]) == set(COLOUR_CLASSES)
    assert on_disk["best"]["selected_on"] == "test" and "TEST" in on_disk["best"]["note"]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "args",
        "anchors",
        "class_names",
    ):
        assert key in ckpt, key
    assert ckpt["epoch"] == 10 and ckpt["class_names"] == COLOUR_CLASSES
    assert "rng" not in ckpt  # every epoch draws from (seed, epoch): no random state to keep
    assert torch.equal(
        ckpt["model"]["anchors"], text_prompts.load_anchors(anchors, COLOUR_CLASSES).anchors
    )
    assert os.path.isfile(out / "best.pt")


def test_a_class_set_without_neutral_keeps_a_text_only_neutral_for_lt_and_lc(tmp_path):
    classes = ["anger", "happiness", "sadness"]  # like CK+ 7-class: no neutral images
    data_root = make_colour_folder(
        tmp_path / "faces", per_class_train=16, per_class_test=4, classes=classes
    )
    with pytest.raises(
        ValueError, match="built for classes"
    ):  # an anchor file for other words is refused
        train.main(
            [
                "--device",
                "cpu",
                "--dataset",
                "folder",
                "--data-root",
                data_root,
                "--batch-size",
                "8",
                "--anchors",
                make_anchors(tmp_path / "bad.pt", classes + ["neutral"]),
                "--output",
                str(tmp_path / "bad"),
                "--quiet",
            ]
        )
    anchors = make_anchors(tmp_path / "anchors.pt", classes)
    out = tmp_path / "run"
    metrics = train.main(
        [
            "--device",
            "cpu",
            "--dataset",
            "folder",
            "--data-root",
            data_root,
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--anchors",
            anchors,
            "--output",
            str(out),
            "--quiet",
        ]
    )
    row = metrics["last_epoch"]
    assert row["lt"] > 0.01 and row["lc"] > 1.0  # every sample is non-neutral: both terms are live
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["class_names"] == classes and ckpt["anchors"].shape == (4, 512)
    assert len(metrics["confusion_matrix"]) == 3  # the logits cover the 3 classes only
    import evaluate

    net, _ = evaluate.load_model(str(out / "last.pt"), torch.device("cpu"))
    assert net.num_classes == 3 and net.neutral_index == 3
    assert net.classify(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_every_split_is_read_with_the_train_split_classes(tmp_path):
    """test/ without a class that train/ has: its images keep their own labels (the indices were
    once built per split, so 'neutral' images were scored as 'happiness'); test/ with a class
    train/ lacks: refused before training (it once failed after a whole epoch)."""
    root = make_colour_folder(tmp_path / "data", per_class_train=8, per_class_test=4, size=16)
    shutil.rmtree(f"{root}/test/happiness")
    anchors = make_anchors(tmp_path / "anchors.pt", COLOUR_CLASSES)
    flags = ["--dataset", "folder", "--data-root", root, "--anchors", anchors, "--epochs", "1"]
    flags += ["--image-size", "16", "--batch-size", "8", "--amp", "off", "--device", "cpu"]
    metrics = train.main(flags + ["--output", str(tmp_path / "run"), "--quiet"])
    rows = [sum(row) for row in metrics["confusion_matrix"]]  # true anger, happiness, neutral
    assert rows == [4, 0, 4] and metrics["per_class_accuracy"]["happiness"] is None
    os.makedirs(f"{root}/test/sadness")
    shutil.copy(f"{root}/test/anger/0.png", f"{root}/test/sadness/0.png")
    with pytest.raises(errors.BadInputError, match=r"sub-folders \['sadness'\] are not in the"):
        train.main(flags + ["--output", str(tmp_path / "run2"), "--quiet"])


def test_streaming_path_with_a_validation_split(tmp_path):
    data_root = make_colour_folder(tmp_path / "faces", per_class_train=12, per_class_test=4)
    anchors = make_anchors(tmp_path / "anchors.pt", COLOUR_CLASSES)
    metrics = train.main(
        [
            "--device",
            "cpu",
            "--dataset",
            "folder",
            "--data-root",
            data_root,
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--val-fraction",
            "0.25",
            "--cache",
            "off",
            "--anchors",
            anchors,
            "--output",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    assert metrics["best"]["selected_on"] == "val"
    assert "val_accuracy" in metrics["last_epoch"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 12  # the whole test split
    assert math.isfinite(metrics["last_epoch"]["ls"])


def test_class_balanced_batches_draw_classes_equally():
    labels = torch.tensor([0] * 90 + [1] * 10)
    images = torch.zeros(100, 3, 4, 4, dtype=torch.uint8)
    balanced = batches.CachedBatches(
        images,
        labels,
        10,
        lambda x, generator: x.float(),
        train=True,
        balanced=True,
        order_gen=torch.Generator().manual_seed(0),
    )
    drawn = torch.cat([y for _ in range(10) for _, y in balanced])  # 10 epochs of 100 draws
    assert len(drawn) == 1000 and 0.4 < drawn.float().mean().item() < 0.6  # 0.1 without balancing
    plain = batches.CachedBatches(
        images,
        labels,
        10,
        lambda x, generator: x.float(),
        train=True,
        balanced=False,
        order_gen=torch.Generator().manual_seed(0),
    )
    assert sorted(torch.cat([y for _, y in plain]).tolist()) == labels.tolist()  # a permutation


def test_lr_schedule_matches_the_released_warmup_then_cosine():
    # released: ConstantWarmupScheduler(1 epoch at 1e-4) around CosineAnnealingLR(T_max=50), stepped
    # per epoch
    epochs, base = 50, 2e-3
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    expected = [1e-4]
    for _ in range(epochs - 1):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        cosine.step()
    ours = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(
        ours, lambda e: train.lr_factor(e, 1, 1e-4, base, epochs)
    )
    got = []
    for _ in range(epochs):
        got.append(ours.param_groups[0]["lr"])
        ours.step()
        sched.step()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert got[-1] > 0


def _run(args, threads="1"):
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py")] + args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    full, broken = tmp_path / "full", tmp_path / "broken"
    # runs alongside the victim, one thread each
    ref = _run(tiny_synthetic_args(full, anchors))
    victim = _run(tiny_synthetic_args(broken, anchors))
    deadline = time.time() + 120
    while (
        not os.path.exists(broken / "last.pt") and victim.poll() is None and time.time() < deadline
    ):
        time.sleep(0.02)
    time.sleep(0.1)  # somewhere inside epoch 2 (or while it writes)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # never half-written
    stopped = torch.load(broken / "last.pt", map_location="cpu", weights_only=True)
    assert 1 <= stopped["epoch"] < 3, "the kill came too late to interrupt the run"
    resumed = _run(["--resume", str(broken / "last.pt")])  # beside the end of ref
    assert ref.wait(timeout=180) == 0, ref.stderr.read().decode()
    assert resumed.wait(timeout=180) == 0, resumed.stderr.read().decode()
    assert_same_run(full, broken, epochs=3)


def test_resume_refuses_changed_settings(tmp_path):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    train.main(tiny_synthetic_args(tmp_path / "run", anchors, epochs=1))
    with pytest.raises(errors.BadInputError, match="--lr 0.5"):
        train.get_args(["--resume", str(tmp_path / "run"), "--lr", "0.5"])
    # allowed: output-only flags
    args = train.get_args(["--resume", str(tmp_path / "run"), "--quiet"])
    assert args.lr == 0.05 and args.image_size == 32 and args.resume.endswith("last.pt")


def test_resume_refuses_data_that_changed_since(tmp_path, monkeypatch):
    """The run keeps a fingerprint of each split's label list: --resume compares it, so a run never
    goes on over other images or labels (one file removed from train/, one test image relabelled)
    without a word."""
    root = make_colour_folder(tmp_path / "data", per_class_train=8, per_class_test=4)
    anchors = make_anchors(tmp_path / "anchors.pt", COLOUR_CLASSES)
    flags = ["--dataset", "folder", "--data-root", root, "--anchors", anchors, "--epochs", "2"]
    flags += ["--image-size", "16", "--batch-size", "8", "--amp", "off", "--device", "cpu"]
    stop_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.main(flags + ["--output", str(tmp_path / "run"), "--quiet"])
    monkeypatch.undo()
    resume = ["--resume", str(tmp_path / "run"), "--quiet"]
    os.rename(f"{root}/test/anger/0.png", f"{root}/test/neutral/anger-0.png")
    with pytest.raises(errors.BadInputError, match="its test split was 12 images, now 12"):
        train.main(resume)
    os.rename(f"{root}/test/neutral/anger-0.png", f"{root}/test/anger/0.png")
    os.remove(f"{root}/train/happiness/3.png")
    with pytest.raises(errors.BadInputError, match="its train split was 24 images, now 23"):
        train.main(resume)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    real_loss, calls = train.ke2nt_loss, []

    def poisoned(*a, **k):  # finite for epoch 1 (6 steps), NaN from then on
        calls.append(1)
        total, terms = real_loss(*a, **k)
        return (total * math.nan, terms) if len(calls) > 6 else (total, terms)

    monkeypatch.setattr(train, "ke2nt_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(
        errors.NonFiniteError,
        match=r"stopping after epoch 2: nan or inf in the model.*last.pt holds the last",
    ):
        train.main(tiny_synthetic_args(out, anchors, epochs=3) + ["--log-every", "1"])
    kept = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_demo_preset_fills_only_what_was_not_given():
    args = train.get_args(["--demo", "--epochs", "2"])
    assert (
        args.epochs == 2
        and args.dataset == "synthetic"
        and args.image_size == 48
        and args.device == "cpu"
    )
    assert train.get_args([]).lr == 2e-3 and train.get_args([]).image_size == 112


def test_normalization_flag_backbone_default_or_released_imagenet():
    swin = train.get_args(["--backbone", "swin_t_face"])
    # arcface's, as issue 4 asks
    assert model.input_normalization(swin.backbone, swin.normalization) == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    released = train.get_args(["--backbone", "swin_t_face", "--normalization", "imagenet"])
    # swint_raf_main.py
    assert model.input_normalization(released.backbone, released.normalization) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )


def test_skip_missing_flag_reaches_the_dataset(tmp_path):
    root = make_colour_folder(tmp_path / "faces", per_class_train=8, per_class_test=4)
    for split in ("train", "test"):  # the released list format: "relative/path label"
        lines = [
            f"{split}/{name}/{i}.png {k}\n"
            for k, name in enumerate(COLOUR_CLASSES)
            for i in range(8 if split == "train" else 4)
        ]
        lines.append(f"{split}/anger/gone.png 0\n")  # listed, but not on disk
        (tmp_path / "faces" / f"{split}_label.txt").write_text("".join(lines))
    anchors = make_anchors(tmp_path / "anchors.pt", COLOUR_CLASSES)
    common = [
        "--device",
        "cpu",
        "--dataset",
        "list",
        "--data-root",
        root,
        "--classes",
        ",".join(COLOUR_CLASSES),
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--anchors",
        anchors,
        "--quiet",
    ]
    with pytest.raises(FileNotFoundError, match="gone.png"):
        train.main(common + ["--output", str(tmp_path / "strict")])
    metrics = train.main(common + ["--output", str(tmp_path / "skipping"), "--skip-missing"])
    assert sum(map(sum, metrics["confusion_matrix"])) == 12  # the 12 test images that exist


def test_random_anchor_run_offline_records_config_environment_and_data(tmp_path, capsys):
    data_root = make_colour_folder(tmp_path / "faces", per_class_train=8, per_class_test=4)
    out = tmp_path / "run"
    metrics = train.main(
        [
            "--device",
            "cpu",
            "--dataset",
            "folder",
            "--data-root",
            data_root,
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--clip",
            "random",
            "--seed",
            "5",
            "--output",
            str(out),
        ]
    )
    assert "RANDOMLY initialised ViT-B/16 text tower (seed 5)" in capsys.readouterr().out
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["clip"] == "random-init ViT-B/16 (seed 5)"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    env, config, data_rec = on_disk["environment"], on_disk["config"], on_disk["data"]
    assert env["random_anchors"] is True and env["torch"] == torch.__version__
    assert env["precision"]["amp"] in ("off", "bf16") and env["device"]
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert env["precision"]["how"] == ("measured" if native else "no native bf16 here")
    assert config["seed"] == 5 and config["clip"] == "random" and config["batch_size"] == 8
    assert data_rec["train"]["images"] == 24 and data_rec["test"]["images"] == 12
    assert (
        data_rec["train"]["per_class"] == dict.fromkeys(COLOUR_CLASSES, 8)
        and data_rec["train"]["dropped"] == {}
    )


def test_data_fingerprint_follows_names_and_labels_not_folders(tmp_path):
    import data

    one = make_colour_folder(tmp_path / "a", per_class_train=3, per_class_test=1)
    two = make_colour_folder(tmp_path / "b", per_class_train=3, per_class_test=1)

    def fp(root):
        return batches.data_record(data.build_dataset("folder", root, "train"))["fingerprint"]

    assert fp(one) == fp(two)  # the same files and labels in another folder
    os.replace(
        os.path.join(two, "train", "anger", "0.png"),
        os.path.join(two, "train", "happiness", "9.png"),
    )
    assert fp(one) != fp(two)  # one image moved to another class


def test_measured_precision_is_stored_and_reused_on_resume(tmp_path, monkeypatch):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    args = tiny_synthetic_args(tmp_path / "run", anchors, epochs=2)
    args[args.index("--amp") + 1] = "auto"
    # a measured choice on every CPU
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    stop_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    first = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)[
        "precision"
    ]
    assert first["how"] == "measured" and first["device"] == "cpu"
    assert set(first["rates"]) == {"off", "bf16"} and all(first["rates"].values())

    def no_measuring(*a, **k):
        raise AssertionError("a resumed run must reuse the stored precision, not measure again")

    monkeypatch.undo()
    monkeypatch.setattr(train, "choose_precision", no_measuring)
    metrics = train.main(["--resume", str(tmp_path / "run"), "--quiet"])
    assert metrics["last_epoch"]["epoch"] == 2 and metrics["environment"]["precision"] == first
