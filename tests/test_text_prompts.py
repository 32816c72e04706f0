"""text_prompts: class lists, the paper's prompts, anchors against open_clip, the anchor file (old
and new format, atomic writes), the CLI and its one-line errors."""

import errno
import hashlib
import os
import runpy
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
    for bad in ("a photo of {}", "{name} in {place}", "no field", "{name} {0}", "{name", "{name}}"):
        with pytest.raises(ValueError, match=r"\(--template\): needs {name}, may have {article}"):
            text_prompts.prompts_for(["anger"], [bad])


def test_anchors_match_open_clip_text_features_and_ensemble_mean():
    model = tiny_open_clip()
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu")
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


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A one-layer open_clip text tower (QuickGELU) saved as a plain state dict: (path, model)."""
    model = tiny_open_clip(layers=1)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return str(path), model


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_anchors_from_a_state_dict_file_use_the_chosen_activation(tmp_path, activation):
    """A plain state dict does not say its activation: anchors_for reads it with the one chosen
    (equal to open_clip's encode_text, the choice in the source) or refuses, naming the flag."""
    model = tiny_open_clip(layers=1, quick_gelu=activation == "quick_gelu")
    path = tmp_path / "open_clip.pt"
    torch.save(model.state_dict(), path)
    text = text_prompts.anchors_for(["happy", "sad"], clip=str(path), activation=activation)
    prompts = [row[0] for row in text_prompts.prompts_for(["happy", "sad", "neutral"])]
    with torch.no_grad():
        expected = model.encode_text(open_clip.tokenize(prompts))
    assert relative_error(text.anchors, expected) <= REL_TOL
    assert (text.num_classes, text.neutral_index) == (2, 2)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert text.source == f"{path} sha256:{sha} ({activation})"
    with pytest.raises(ValueError, match="open_clip.pt: .*--clip-activation"):
        text_prompts.anchors_for(["happy", "sad"], clip=str(path))


def test_anchor_file_round_trip_and_refusals(tmp_path):
    names = text_prompts.class_names("rafdb")
    anchors = torch.randn(7, 16)
    path = tmp_path / "sub" / "rafdb.pt"
    text_prompts.save_anchors(
        str(path), anchors, names, [text_prompts.TEMPLATE], "ViT-B/16 sha256:abc"
    )
    assert os.listdir(path.parent) == ["rafdb.pt"]
    loaded = text_prompts.load_anchors(str(path), names)
    torch.testing.assert_close(loaded.anchors, anchors, rtol=0, atol=0)
    assert loaded[1:] == (7, 6, "ViT-B/16 sha256:abc")  # num_classes, neutral_index, source
    saved = torch.load(path, weights_only=True)
    assert saved["class_names"] == names and saved["templates"] == [text_prompts.TEMPLATE]
    with pytest.raises(
        ValueError, match=r"rafdb\.pt: anchors were built for classes \['surprise'.*'neutral'\]"
    ):
        text_prompts.load_anchors(str(path), text_prompts.class_names("affectnet7"))
    with pytest.raises(ValueError, match="expected \\[8, D\\]"):
        text_prompts.save_anchors(str(path), anchors, text_prompts.class_names("ckplus"), None, "x")
    refusals = {
        "missing.pt": "not a readable text-anchor file: .*No such file",
        "text.pt": "not a readable text-anchor file: File is not a zip file",
        "torn.pt": "not a readable text-anchor file",
        "pickled.pt": "not a readable text-anchor file: it holds pickled Python objects",
        "other.pt": "not a text-anchor file",
    }
    (tmp_path / "text.pt").write_text("anchors: 0.1 0.2 0.3\n")
    (tmp_path / "torn.pt").write_bytes(path.read_bytes()[:-100])  # an interrupted write
    torch.save(dict(saved, clip=_NotAPlainObject()), tmp_path / "pickled.pt")
    torch.save({"anchors": anchors}, tmp_path / "other.pt")
    for name, words in refusals.items():
        with pytest.raises(ValueError, match=f"{name}: {words}") as e:
            text_prompts.load_anchors(str(tmp_path / name), names)
        assert "weights_only" not in str(e.value)  # torch's advice to unpickle is not passed on
    other = tmp_path / "other.pt"
    for key, value in [("anchors", anchors[0]), ("anchors", anchors * float("nan"))]:
        torch.save(dict(saved, **{key: value}), other)
        with pytest.raises(ValueError, match="other.pt: damaged"):
            text_prompts.load_anchors(str(other), names)
    torch.save(dict(saved, class_names=names[:5]), other)  # 5 words, no neutral: 6 rows expected
    with pytest.raises(ValueError, match="other.pt: damaged"):
        text_prompts.load_anchors(str(other), names[:5])


class _NotAPlainObject:
    pass


def test_previous_format_files_load_for_their_class_words(tmp_path):
    """Files of format v1 listed the anchors' names: the class words, plus "neutral" where it was
    appended. One made for five words (six names stored) loads for those five words."""
    words = ["happy", "sad", "confused", "angry", "surprised"]
    anchors = torch.randn(6, 8)
    path = tmp_path / "v1.pt"
    old = dict(format="ke2nt-text-anchors-v1", anchors=anchors, class_names=words + ["neutral"])
    torch.save(dict(old, templates=[text_prompts.TEMPLATE], clip="ViT-B/16 sha256:abc"), path)
    loaded = text_prompts.load_anchors(str(path), words)
    torch.testing.assert_close(loaded.anchors, anchors, rtol=0, atol=0)
    assert loaded[1:] == (5, 5, "ViT-B/16 sha256:abc")
    assert text_prompts.load_anchors(str(path), words + ["neutral"])[1:3] == (6, 5)
    with pytest.raises(ValueError, match="built for classes"):
        text_prompts.load_anchors(str(path), words[:4])


def test_cli_builds_saves_and_prints_the_similarity_table(tmp_path, capsys):
    model = tiny_open_clip()
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "anchors" / "ckplus.pt"
    templates = [text_prompts.TEMPLATE, "a face showing {article} {name}."]
    text = text_prompts.main(
        [
            *("--clip", str(checkpoint), "--clip-activation", "quick_gelu"),
            *("--dataset", "ckplus", "--out", str(out)),
            *("--template", templates[0], "--template", templates[1]),
        ]
    )
    printed = capsys.readouterr().out
    # CK+ (7 classes) has no neutral class: the CLI adds a text-only neutral anchor last, for L_t
    # and L_c
    words = text_prompts.class_names("ckplus")
    names = words + ["neutral"]
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
    normed = torch.nn.functional.normalize(text.anchors, dim=-1)
    rows = table[1 : 1 + len(names)]  # the lines after the table are the save messages
    for row, name, sims in zip(rows, names, (normed @ normed.T).tolist(), strict=True):
        assert row.split()[0] == name and [float(v) for v in row.split()[1:]] == pytest.approx(
            sims, abs=6e-4
        )
        assert float(row.split()[1 + names.index(name)]) == pytest.approx(1.0, abs=1e-3)
    loaded = text_prompts.load_anchors(str(out), words)
    torch.testing.assert_close(loaded.anchors, text.anchors, rtol=0, atol=0)
    assert torch.load(out, weights_only=True)["templates"] == templates
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert loaded.source == f"{checkpoint} sha256:{sha} (quick_gelu)"
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu")
    torch.testing.assert_close(
        text.anchors, text_prompts.build_anchors(encoder, names, templates), rtol=0, atol=0
    )


def test_cli_own_class_words_load_as_given(tmp_path, capsys, tiny_checkpoint):
    """An anchor file made with --classes of five words holds those words and six anchors (a
    text-only neutral last), and loads for exactly those five words."""
    out = tmp_path / "f.pt"
    words = ["happy", "sad", "confused", "angry", "surprised"]
    argv = ["--clip", tiny_checkpoint[0], "--clip-activation", "quick_gelu", "--out", str(out)]
    text = text_prompts.main(argv + ["--classes", "happy, sad,confused,angry,surprised"])
    assert "a photo of a person making an angry facial expression." in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["class_names"] == words
    loaded = text_prompts.load_anchors(str(out), words)
    assert loaded.anchors.shape == (6, 64) and loaded[1:3] == (5, 5)
    torch.testing.assert_close(loaded.anchors, text.anchors, rtol=0, atol=0)
    for other in (words + ["neutral"], words[:4], words[::-1]):
        with pytest.raises(ValueError, match=r"f\.pt: anchors were built for classes"):
            text_prompts.load_anchors(str(out), other)


def test_cli_errors_name_the_flag_or_word(tmp_path, tiny_checkpoint):
    clip = ["--clip", tiny_checkpoint[0], "--clip-activation", "quick_gelu"]
    long_word = " ".join(["happy"] * 80)
    cases = [
        (["--template", "{name"], r"template '{name' \(--template\): needs {name}"),
        (
            ["--classes", "happy,,sad"],
            r"--classes \['happy', '', 'sad'\]: give distinct, non-empty",
        ),
        (["--classes", "happy, happy"], r"--classes \['happy', 'happy'\]: give distinct"),
        (["--classes", long_word], r"class word 'happy happy.*: '.*' is 9\d tokens, over the 77-"),
        (["--out", str(tmp_path)], f"--out {tmp_path}: Is a directory; nothing written"),
        (["--clip", str(tmp_path / "nope.pt")], "nope.pt: no such CLIP checkpoint file"),
    ]
    for flags, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
            text_prompts.main(clip + flags)
        assert "truncate" not in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(f"{tmp_path}.tmp")  # the --out folder: nothing left beside it
    with pytest.raises(ValueError, match="tiny-clip.pt: .*--clip-activation"):
        text_prompts.main(clip[:2])


def _run_script(monkeypatch, *argv):
    """text_prompts.py's __main__ block in this process -> its exit code."""
    monkeypatch.setattr(sys, "argv", ["text_prompts.py", *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "text_prompts.py"), run_name="__main__")
    return e.value.code


def test_a_full_disk_keeps_the_previous_anchor_file(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """save_anchors writes a temporary file beside the target and renames it: on a full disk (the
    temporary path made /dev/full) the previous file is untouched, nothing is left beside it, and
    the error says so; on the command line in one line, exit code 2."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    out, words = tmp_path / "f.pt", ["happy", "sad"]
    text_prompts.save_anchors(str(out), torch.ones(3, 4), words, None, "first")
    before = out.read_bytes()
    (tmp_path / "f.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left on device") as e:
        text_prompts.save_anchors(str(out), torch.zeros(3, 4), words, None, "second")
    assert e.value.errno == errno.ENOSPC
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["f.pt"]
    assert text_prompts.load_anchors(str(out), words).source == "first"
    (tmp_path / "f.pt.tmp").symlink_to("/dev/full")
    clip = ["--clip", tiny_checkpoint[0], "--clip-activation", "quick_gelu"]
    assert _run_script(monkeypatch, *clip, "--classes", "happy,sad", "--out", str(out)) == 2
    assert (
        capsys.readouterr().err == f"error: --out {out}: No space left on device; nothing written\n"
    )
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["f.pt"]
    assert _run_script(monkeypatch, "--dataset", "fer2013") == 2  # argparse names the choices
    assert "argument --dataset: invalid choice: 'fer2013'" in capsys.readouterr().err


def test_anchor_names_add_a_text_only_neutral_only_where_missing():
    assert text_prompts.anchor_names(text_prompts.class_names("rafdb")) == text_prompts.class_names(
        "rafdb"
    )
    ck = text_prompts.class_names("ckplus")
    assert "neutral" not in ck
    assert text_prompts.anchor_names(ck) == ck + ["neutral"]
    assert text_prompts.neutral_index(text_prompts.anchor_names(ck)) == len(ck)
