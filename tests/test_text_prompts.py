"""text_prompts: class lists, the paper's prompts, anchors against open_clip, the anchor file, the
CLI."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from test_clip_text import REL_TOL, relative_error, tiny_open_clip

import clip_text
import data
import text_prompts

open_clip = pytest.importorskip("open_clip")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_class_names_come_from_data_in_label_order():
    assert text_prompts.class_names("rafdb") == list(data.RAFDB_CLASSES)
    assert text_prompts.class_names("ckplus_neutral") == text_prompts.class_names("ckplus") + [
        "neutral"
    ]
    with pytest.raises(ValueError, match="rafdb"):
        text_prompts.class_names("fer2013")


def test_neutral_index():
    assert text_prompts.neutral_index(text_prompts.class_names("rafdb")) == 6
    assert text_prompts.neutral_index(text_prompts.class_names("affectnet8")) == 0
    assert text_prompts.neutral_index(text_prompts.class_names("ckplus")) is None
    assert text_prompts.neutral_index(text_prompts.class_names("ckplus_neutral")) == 7


def test_paper_prompts_for_rafdb():
    assert text_prompts.prompts_for(text_prompts.class_names("rafdb")) == [
        ["a photo of a person making a surprise facial expression."],
        ["a photo of a person making a fear facial expression."],
        ["a photo of a person making a disgust facial expression."],
        ["a photo of a person making a happiness facial expression."],
        ["a photo of a person making a sadness facial expression."],
        ["a photo of a person making an anger facial expression."],
        ["a photo of a person making a neutral facial expression."],
    ]


def test_article_by_sound():
    expected = {
        "anger": "an",
        "surprise": "a",
        "happiness": "a",
        "contempt": "a",
        "elation": "an",
        "amusement": "an",
        "honest": "an",
        "unique": "a",
        "euphoric": "a",
        "unimpressed": "an",
        "Awe": "an",
    }
    assert {w: text_prompts.article(w) for w in expected} == expected


def test_custom_templates_and_bad_templates():
    prompts = text_prompts.prompts_for(
        ["anger", "fear"], ["{name}", "a face showing {article} {name}."]
    )
    assert prompts == [["anger", "a face showing an anger."], ["fear", "a face showing a fear."]]
    for bad in ("a photo of {}", "{name} in {place}", "no field", "{name} {0}"):
        with pytest.raises(ValueError, match="needs {name}, may have {article}"):
            text_prompts.prompts_for(["anger"], [bad])


def test_anchors_match_open_clip_text_features_and_ensemble_mean():
    model = tiny_open_clip()
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict())
    names = text_prompts.class_names("rafdb")
    templates = [text_prompts.TEMPLATE, "a close-up photo of {article} {name} face."]
    anchors = text_prompts.build_anchors(encoder, names, templates)
    assert anchors.shape == (7, 64) and anchors.dtype == torch.float32 and not anchors.requires_grad
    with torch.no_grad():
        # T x (K, D)
        per_template = [
            model.encode_text(
                open_clip.tokenize(
                    [t.format(article=text_prompts.article(n), name=n) for n in names]
                )
            )
            for t in templates
        ]
    # raw, unnormalised outputs averaged over templates
    expected = torch.stack(per_template).mean(0)
    assert relative_error(anchors, expected) <= REL_TOL
    single = text_prompts.build_anchors(encoder, names)
    assert relative_error(single, per_template[0]) <= REL_TOL


def test_anchor_file_round_trip_and_class_mismatch(tmp_path):
    names = text_prompts.class_names("rafdb")
    anchors = torch.randn(7, 16)
    path = tmp_path / "sub" / "rafdb.pt"
    text_prompts.save_anchors(
        str(path), anchors, names, [text_prompts.TEMPLATE], "ViT-B/16 sha256:abc"
    )
    assert os.listdir(path.parent) == ["rafdb.pt"]
    loaded = text_prompts.load_anchors(str(path), class_names=names)
    torch.testing.assert_close(loaded["anchors"], anchors, rtol=0, atol=0)
    assert loaded["class_names"] == names and loaded["templates"] == [text_prompts.TEMPLATE]
    assert loaded["clip"] == "ViT-B/16 sha256:abc"
    with pytest.raises(
        ValueError, match=r"rafdb\.pt: anchors were built for classes \['surprise'.*'neutral'\]"
    ):
        text_prompts.load_anchors(str(path), class_names=text_prompts.class_names("affectnet7"))
    with pytest.raises(ValueError, match="expected \\[8, D\\]"):
        text_prompts.save_anchors(
            str(path), anchors, text_prompts.class_names("affectnet8"), None, "x"
        )
    assert torch.load(path, weights_only=True)["format"] == "ke2nt-text-anchors-v1"  # older files
    with pytest.raises(ValueError, match="missing.pt: cannot read"):
        text_prompts.load_anchors(str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt: cannot read"):
        text_prompts.load_anchors(str(garbage))
    torn = tmp_path / "torn.pt"
    torn.write_bytes(path.read_bytes()[:-100])  # an interrupted save_anchors
    with pytest.raises(ValueError, match="torn.pt: cannot read"):
        text_prompts.load_anchors(str(torn))
    other = tmp_path / "other.pt"
    torch.save({"anchors": anchors}, other)
    with pytest.raises(ValueError, match="other.pt: not a text-anchor file"):
        text_prompts.load_anchors(str(other))
    payload = torch.load(path, weights_only=True)
    for key, value in [("anchors", anchors[0]), ("anchors", anchors * float("nan"))]:
        torch.save(dict(payload, **{key: value}), other)
        with pytest.raises(ValueError, match="other.pt: damaged"):
            text_prompts.load_anchors(str(other))
    torch.save(dict(payload, class_names=names[:6]), other)
    with pytest.raises(ValueError, match="other.pt: damaged"):
        text_prompts.load_anchors(str(other))


def test_cli_builds_saves_and_prints_the_similarity_table(tmp_path, capsys):
    model = tiny_open_clip()
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "anchors" / "ckplus.pt"
    templates = [text_prompts.TEMPLATE, "a face showing {article} {name}."]
    anchors = text_prompts.main(
        [
            "--clip",
            str(checkpoint),
            "--dataset",
            "ckplus",
            "--out",
            str(out),
            "--template",
            templates[0],
            "--template",
            templates[1],
        ]
    )
    printed = capsys.readouterr().out
    # CK+ (7 classes) has no neutral class: the CLI adds a text-only neutral anchor last, for L_t
    # and L_c
    names = text_prompts.class_names("ckplus") + ["neutral"]
    assert (
        "a photo of a person making an anger facial expression. | a face showing an anger."
        in printed
    )
    assert (
        "a photo of a person making a neutral facial expression. | a face showing a neutral."
        in printed
    )
    table = printed[printed.index("cosine similarities") :].splitlines()[1:]
    assert table[0].split() == [n[:9] for n in names]
    normed = torch.nn.functional.normalize(anchors, dim=-1)
    rows = table[1 : 1 + len(names)]  # the lines after the table are the save messages
    for row, name, sims in zip(rows, names, (normed @ normed.T).tolist(), strict=True):
        assert row.split()[0] == name and [float(v) for v in row.split()[1:]] == pytest.approx(
            sims, abs=6e-4
        )
        assert float(row.split()[1 + names.index(name)]) == pytest.approx(1.0, abs=1e-3)
    loaded = text_prompts.load_anchors(str(out), class_names=names)
    torch.testing.assert_close(loaded["anchors"], anchors, rtol=0, atol=0)
    assert loaded["templates"] == templates
    assert loaded["clip"].endswith("sha256:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest())
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict())
    torch.testing.assert_close(
        anchors, text_prompts.build_anchors(encoder, names, templates), rtol=0, atol=0
    )


def test_cli_runs_as_a_script(tmp_path):
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(tiny_open_clip(layers=1).state_dict(), checkpoint)
    out = tmp_path / "rafdb.pt"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "text_prompts.py"),
            "--clip",
            str(checkpoint),
            "--dataset",
            "rafdb",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "happiness" in result.stdout and text_prompts.load_anchors(str(out))[
        "anchors"
    ].shape == (7, 64)
    with pytest.raises((FileNotFoundError, ValueError), match="nope.pt"):
        text_prompts.main(["--clip", str(tmp_path / "nope.pt")])


def test_cli_own_class_words_offline(tmp_path, capsys):
    out = tmp_path / "own.pt"
    args = ["--clip", "random:RN50", "--classes", "happy, sad,angry", "--out", str(out)]
    anchors = text_prompts.main(args)
    printed = capsys.readouterr().out
    assert "a photo of a person making an angry facial expression." in printed
    loaded = text_prompts.load_anchors(str(out), ["happy", "sad", "angry", "neutral"])
    assert loaded["clip"] == "random-init RN50 (seed 0)"
    torch.testing.assert_close(loaded["anchors"], anchors, rtol=0, atol=0)
    for bad in ("happy,,sad", "happy,happy"):
        with pytest.raises(SystemExit):
            text_prompts.main(["--clip", "random", "--classes", bad])


def test_anchor_names_add_a_text_only_neutral_only_where_missing():
    assert text_prompts.anchor_names(text_prompts.class_names("rafdb")) == text_prompts.class_names(
        "rafdb"
    )
    ck = text_prompts.class_names("ckplus")
    assert "neutral" not in ck
    assert text_prompts.anchor_names(ck) == ck + ["neutral"]
    assert text_prompts.neutral_index(text_prompts.anchor_names(ck)) == len(ck)
