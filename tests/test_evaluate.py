"""evaluate.py: reports agree with the training loop, confusion maths, cross-dataset through shared
names, --images on odd modes (RGBA, grey, 16-bit, EXIF-rotated, palette, CMYK, broken files), clear
mismatch errors."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from lib import errors, face_images, metrics

CLASSES = ["anger", "happiness", "neutral"]
COLOURS = {
    "anger": (200, 40, 40),
    "happiness": (40, 200, 40),
    "neutral": (40, 40, 200),
    "sadness": (200, 200, 40),
}


def make_colour_folder(root, classes, per_class, seed):
    """root/<class>/*.png: each class its own dominant colour plus noise."""
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            img = np.array(COLOURS[name], dtype=np.float64) + rng.normal(0, 40, (40, 40, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                os.path.join(root, name, f"{i}.png")
            )


@pytest.fixture(scope="module")
def run(colour_run):
    """A checkpoint trained by train.py on an easy 3-class colour set (conftest's colour_run)."""
    assert colour_run["metrics"]["class_names"] == CLASSES
    return colour_run


def test_confusion_matrix_and_metrics_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 0, 0])
    cm = metrics.confusion_matrix(preds, labels, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    m = metrics.class_metrics(cm, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(300 / 6)
    assert m["per_class_accuracy"] == pytest.approx({"a": 200 / 3, "b": 50.0, "c": 0.0, "d": None})
    # classes with samples only
    assert m["mean_class_accuracy"] == pytest.approx((200 / 3 + 50 + 0) / 3)


def test_report_agrees_with_the_training_loop(run, capsys):
    out = run["tmp"] / "report"
    # --amp checkpoint: training's
    report = evaluate.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            run["ckpt"],
            "--dataset",
            "folder",
            "--data-root",
            str(run["tmp"] / "data"),
            "--output",
            str(out),
        ]
    )
    # same numbers by another code path
    assert report["accuracy"] == run["metrics"]["test_accuracy"]
    assert report["confusion_matrix"] == run["metrics"]["confusion_matrix"]
    assert report["images"] == 36 and report["accuracy"] >= 70.0
    assert (
        json.loads((out / "report.json").read_text())["per_class_accuracy"]
        == report["per_class_accuracy"]
    )
    with Image.open(out / "confusion.png") as png:
        assert png.format == "PNG" and png.size[0] > 3 * 40 and png.size[1] > 3 * 40
        assert len(png.convert("RGB").getcolors(1 << 16)) > 2  # something was drawn
    printed = capsys.readouterr().out
    assert "mean class accuracy" in printed and all(name in printed for name in CLASSES)


def test_cross_dataset_uses_the_shared_classes(run):
    other = run["tmp"] / "other"
    make_colour_folder(other / "test", ["happiness", "neutral", "sadness"], 6, seed=2)
    with pytest.raises(errors.BadInputError, match="class set mismatch.*--cross-dataset"):
        evaluate.main(
            [
                "--device",
                "cpu",
                "--checkpoint",
                run["ckpt"],
                "--dataset",
                "folder",
                "--data-root",
                str(other),
            ]
        )
    report = evaluate.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            run["ckpt"],
            "--dataset",
            "folder",
            "--data-root",
            str(other),
            "--cross-dataset",
            "--output",
            str(run["tmp"] / "cross"),
        ]
    )
    assert report["class_names"] == ["happiness", "neutral"]
    assert report["images"] == 12 and report["images_dropped"] == 6
    assert report["dropped_dataset_classes"] == ["sadness"] and report[
        "unused_checkpoint_classes"
    ] == ["anger"]
    assert len(report["confusion_matrix"]) == 2 and report["accuracy"] >= 80.0


def _odd_images(folder):
    """Images in awkward modes; returns {file name: expected class or None}."""
    os.makedirs(folder, exist_ok=True)

    def solid(name, size=(48, 30)):
        return Image.new("RGB", size, COLOURS[name])

    rgba = solid("happiness").convert("RGBA")
    rgba.putalpha(255)
    rgba.save(os.path.join(folder, "green_rgba.png"))
    solid("anger").convert("P", palette=Image.ADAPTIVE).save(
        os.path.join(folder, "red_palette.gif")
    )
    solid("neutral").convert("CMYK").save(os.path.join(folder, "blue_cmyk.jpg"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    solid("happiness", (200, 90)).transpose(Image.Transpose.ROTATE_90).save(
        os.path.join(folder, "green_exif.jpg"), exif=exif.tobytes(), quality=95
    )
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)).save(
        os.path.join(folder, "grey16.png")
    )
    solid("anger").convert("L").save(os.path.join(folder, "grey8.png"))
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"this is not an image")
    whole = os.path.join(folder, "half.png")
    solid("neutral", (64, 64)).save(whole)
    with open(whole, "rb") as f:
        raw = f.read()
    with open(whole, "wb") as f:
        f.write(raw[: len(raw) // 2])
    return {
        "green_rgba.png": "happiness",
        "red_palette.gif": "anger",
        "blue_cmyk.jpg": "neutral",
        "green_exif.jpg": "happiness",
        "grey16.png": None,
        "grey8.png": None,
    }


def test_images_in_odd_modes_and_broken_files(run, capsys):
    folder = run["tmp"] / "photos"
    expected = _odd_images(folder)
    (folder / ".ipynb_checkpoints").mkdir()  # hidden entries: never photos (their bytes: broken)
    for hidden in (folder / ".ipynb_checkpoints" / "copy.png", folder / "._grey8.png"):
        hidden.write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    out = run["tmp"] / "predictions"
    rows, skipped = evaluate.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            run["ckpt"],
            "--images",
            str(folder),
            "--top-k",
            "2",
            "--output",
            str(out),
        ]
    )
    assert sorted(os.path.basename(r["path"]) for r in rows) == sorted(expected)
    assert sorted(os.path.basename(s["path"]) for s in skipped) == ["broken.jpg", "half.png"]
    err = capsys.readouterr()
    assert "broken.jpg" in err.err and "half.png" in err.err
    assert "left out 2 hidden files" in err.out
    for r in rows:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 2 and probs[0] >= probs[1] and sum(probs) <= 1 + 1e-6
        want = expected[os.path.basename(r["path"])]
        if want is not None:
            assert r["top"][0]["class_name"] == want, r
    with open(out / "predictions.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["path", "class1", "probability1", "class2", "probability2"] and len(
        table
    ) == 1 + len(rows)
    saved = json.loads((out / "predictions.json").read_text())
    assert len(saved["predictions"]) == len(rows) and len(saved["skipped"]) == 2
    one, _ = evaluate.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            run["ckpt"],
            "--images",
            str(folder / "grey8.png"),
            "--output",
            str(out),
        ]
    )
    assert len(one) == 1 and len(one[0]["top"]) == 3


def test_load_rgb_is_exact_for_exif_16_bit_and_alpha(tmp_path):
    upright = np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "r.png", exif=exif.tobytes()
    )
    assert np.array_equal(np.asarray(face_images.load_rgb(tmp_path / "r.png")), upright)
    grey = np.random.default_rng(1).integers(0, 256, (8, 8)).astype(np.uint16)
    Image.fromarray(grey * 257).save(tmp_path / "g16.png")
    assert np.array_equal(
        np.asarray(face_images.load_rgb(tmp_path / "g16.png")), np.repeat(grey[..., None], 3, 2)
    )
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque; the rest fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(face_images.load_rgb(tmp_path / "a.png"))
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [255, 255, 255]


def test_mismatched_checkpoints_fail_clearly(run, tmp_path):
    with pytest.raises(errors.BadInputError, match="backbone 'resnet18', not 'swin_t'"):
        evaluate.main(
            [
                "--device",
                "cpu",
                "--checkpoint",
                run["ckpt"],
                "--images",
                str(tmp_path),
                "--backbone",
                "swin_t",
            ]
        )
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    ckpt["meta"]["backbone"] = "swin_t_face"
    torch.save(ckpt, tmp_path / "relabelled.pt")
    with pytest.raises(
        errors.BadInputError, match="can build .meta {'backbone': 'swin_t_face'.*Missing key"
    ):
        evaluate.load_model(str(tmp_path / "relabelled.pt"), torch.device("cpu"))
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    ckpt["class_names"] = CLASSES + ["sadness"]
    torch.save(ckpt, tmp_path / "classes.pt")
    with pytest.raises(errors.BadInputError, match=r"anchors \(3, 512\) do not fit num_classes=4"):
        evaluate.load_model(str(tmp_path / "classes.pt"), torch.device("cpu"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(
        errors.BadInputError, match=r"plain.pt is not a train.py checkpoint \(no \['model'"
    ):
        evaluate.load_model(str(tmp_path / "plain.pt"), torch.device("cpu"))


def test_diagnostics_and_cam_from_the_command_line(run, tmp_path):
    out = tmp_path / "out"
    evaluate.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            run["ckpt"],
            "--dataset",
            "folder",
            "--data-root",
            str(run["tmp"] / "data"),
            "--output",
            str(out),
            "--diagnostics",
        ]
    )
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["images"] == 36
    photos = run["tmp"] / "data" / "test" / "anger"
    rows, _ = evaluate.main(
        [
            "--device",
            "cpu",
            "--checkpoint",
            run["ckpt"],
            "--images",
            str(photos),
            "--cam",
            "--output",
            str(out / "pred"),
        ]
    )
    overlays = sorted(p.name for p in (out / "pred").glob("*_cam.png"))
    assert len(rows) == 12 and overlays == sorted(
        f"{os.path.splitext(os.path.basename(r['path']))[0]}_cam.png" for r in rows
    )
    with pytest.raises(SystemExit):  # --cam belongs to --images
        evaluate.main(
            [
                "--checkpoint",
                run["ckpt"],
                "--dataset",
                "folder",
                "--data-root",
                str(run["tmp"]),
                "--cam",
            ]
        )


def test_the_dataset_is_read_as_training_read_it(tmp_path, monkeypatch):
    """A --crop-face run on AffectNet's csv release, evaluated without the flag: the checkpoint's
    settings read the images as training did, so the report is metrics.json's (evaluating the
    uncropped images would score other pixels)."""
    from test_train import make_anchors

    import text_prompts
    import train

    root, folder = tmp_path / "affectnet", tmp_path / "affectnet" / "Manually_Annotated_Images"
    os.makedirs(folder / "1")
    rows, rng = [], np.random.default_rng(0)
    for i in range(21):  # the face box (4, 4, 16, 16) holds the class's colour, noise around it
        img = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)
        img[4:20, 4:20] = (40 * (i % 7), 200 - 25 * (i % 7), 120)
        Image.fromarray(img).save(folder / "1" / f"{i}.png")
        rows.append(f"1/{i}.png,4,4,16,16,{i % 7}")
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,expression\n"
    (root / "training.csv").write_text(header + "\n".join(rows[:14]) + "\n")
    (root / "validation.csv").write_text(header + "\n".join(rows[14:]) + "\n")
    anchors = make_anchors(tmp_path / "a.pt", text_prompts.class_names("affectnet7"))
    flags = ["--dataset", "affectnet7", "--data-root", str(root), "--crop-face", "--amp", "off"]
    flags += [
        "--image-size",
        "16",
        "--batch-size",
        "7",
        "--epochs",
        "1",
        "--anchors",
        anchors,
        "--quiet",
    ]
    trained = train.main(flags + ["--device", "cpu", "--output", str(tmp_path / "run")])
    read, real = [], evaluate.data.build_dataset
    monkeypatch.setattr(
        evaluate.data, "build_dataset", lambda *a, **k: read.append(k) or real(*a, **k)
    )
    report = evaluate.main(
        ["--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset", "affectnet7",
         "--data-root", str(root), "--device", "cpu", "--output", str(tmp_path / "eval")]
    )  # fmt: skip
    assert read == [dict(crop_face=True)]
    assert report["confusion_matrix"] == trained["confusion_matrix"]
    assert report["accuracy"] == trained["test_accuracy"]
