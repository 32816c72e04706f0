"""clip_text against the reference libraries: open_clip (tokenizer, text towers, TorchScript
archive) and Hugging Face transformers (CLIPTextModelWithProjection, CLIPModel); checkpoint errors;
the download path against a local HTTP server."""

import functools
import hashlib
import http.server
import json
import os
import threading
import urllib.error

import pytest
import torch

import clip_text
from clip_text import OPENAI_URLS

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP  # noqa: E402

PROMPTS = [
    "a photo of a person making an anger facial expression.",
    "a photo of a person making a surprise facial expression.",
    "",
    "Hi!",
]
REL_TOL = 1e-5


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def perturb(model, seed=0, scale=0.05):
    """Add noise to every text-side parameter so biases, LayerNorms and projections all matter
    (reference random inits leave biases at 0 and LayerNorms at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("visual.", "vision_model.", "visual_projection.")):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_open_clip(width=64, heads=1, layers=2, embed_dim=64, quick_gelu=True, seed=0):
    """An open_clip CLIP with a small text tower (77 positions, full vocabulary) and a tiny ViT."""
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=embed_dim,
        quick_gelu=quick_gelu,
        vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=width, heads=heads, layers=layers),
    )
    return perturb(model, seed)


# ---------------------------------------------------------------- tokenizer

CORPUS = [
    "a photo of a person making an anger facial expression.",
    "HeLLo WoRLD",
    "don't I'LL we've they'd she's",
    "12345 3.14159 1,000,000 2nd 10th",
    "x_1 += y**2; // comment {braces} [brackets] (parens)",
    "https://example.com/a?b=c&d=e#frag",
    "user@example.org",
    "Ünïcödé façade naïve café résumé",
    "Straße İstanbul ﬁnance ＡＢＣ１２３",
    "東京タワーは高い",
    "Привет, мир!",
    "مرحبا بالعالم",
    "हिन्दी भाषा",
    "한국어 텍스트",
    "Ελληνικά γράμματα",
    "e\u0301 (combining accent)",
    "&amp;amp; &lt;b&gt;bold&lt;/b&gt;",
    "&quot;quoted&quot; &#39;single&#39; &nbsp;space &eacute;t&eacute; &#x1F600;",
    "&amp;lt;double&amp;gt;",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "Ã©tÃ© Ã  Paris",
    "â€œquoted textâ€\x9d",
    "cafÃ©",
    "\t tabs\nnew\r\nlines\u00a0nbsp\u2003em\u3000ideographic\u200bzero-width  \u2028sep\u2029",
    "   leading and trailing   ",
    "😀😃🎉 party",
    "👩‍👩‍👧‍👦 family",
    "🇫🇷 flag 👍🏽 thumbs ❤️ heart",
    "<start_of_text> literal <end_of_text>",
    "<|startoftext|> <|endoftext|>",
    "<END_OF_TEXT>",
    "\x00\x01\x07\x7f control \u00ad soft\u00adhyphen \u200d zwj",
    "",
    "   ",
    "\n\t\r",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious",
    "!!!???...---",
    "'''''",
    "happiness sadness surprise fear disgust contempt neutral",
    "lorem ipsum dolor sit amet " * 40,
]


def test_tokenizer_ids_match_open_clip_on_the_corpus():
    ours, reference = clip_text.SimpleTokenizer(), open_clip.tokenizer.SimpleTokenizer()
    assert ours.vocab_size == reference.vocab_size == 49408
    for text in CORPUS:
        assert ours.encode(text) == reference.encode(text), repr(text)
    torch.testing.assert_close(
        clip_text.tokenize(CORPUS, truncate=True), open_clip.tokenize(CORPUS), rtol=0, atol=0
    )
    torch.testing.assert_close(
        clip_text.tokenize(CORPUS, context_length=16, truncate=True),
        open_clip.tokenize(CORPUS, context_length=16),
        rtol=0,
        atol=0,
    )


def test_tokenize_contract():
    tokens = clip_text.tokenize("")
    assert tokens.dtype == torch.long and tokens.shape == (1, 77)
    assert tokens[0, :3].tolist() == [49406, 49407, 0] and tokens[0, 2:].eq(0).all()
    long_text = "lorem ipsum dolor sit amet " * 40
    with pytest.raises(ValueError, match="lorem ipsum"):
        clip_text.tokenize(["fine", long_text])
    cut = clip_text.tokenize(long_text, truncate=True)
    assert cut[0, 0] == 49406 and cut[0, -1] == 49407 and cut[0].eq(49407).sum() == 1
    with pytest.raises(TypeError, match=r"texts\[1\] is int, not str"):
        clip_text.tokenize(["ok", 3])


def test_shipped_vocabulary_file_and_notice():
    folder = os.path.dirname(clip_text.__file__)
    with open(os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    with open(os.path.join(folder, "NOTICE"), encoding="utf-8") as f:
        notice = f.read()
    assert "MIT" in notice and "OpenAI" in notice and digest in notice


# ---------------------------------------------------------------- encoder parity


@pytest.mark.parametrize(
    "name, activation", [("RN50-quickgelu", "quick_gelu"), ("ViT-S-32-alt", "gelu")]
)
def test_encoder_matches_open_clip_models(name, activation):
    """RN50's text tower is ViT-B/16's (width 512, 8 heads, 12 layers; quick GELU) with a 1024-d
    projection; ViT-S-32-alt's is width 256, 4 heads, 10 layers with exact GELU (LAION style)."""
    model = perturb(open_clip.create_model(name, pretrained=None))
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict(), activation)
    tokens = open_clip.tokenize(PROMPTS[:2] + ["lorem ipsum " * 50])
    with torch.no_grad():
        expected, actual = model.encode_text(tokens), encoder(tokens)
    assert actual.shape == expected.shape == (3, model.text_projection.shape[1])
    assert relative_error(actual, expected) <= REL_TOL


def test_encoder_matches_open_clip_wide_text_tower():
    """A ViT-L/14-shaped text tower (width 768, 12 heads inferred as width // 64), two layers."""
    model = tiny_open_clip(width=768, heads=12, layers=2, embed_dim=768)
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu")
    assert encoder.transformer.resblocks[0].attn.num_heads == 12
    tokens = open_clip.tokenize(PROMPTS)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        assert relative_error(encoder(tokens), expected) <= REL_TOL
    # with autograd on, nn.MultiheadAttention takes its other (non-fused) path
    assert relative_error(encoder(tokens).detach(), expected) <= REL_TOL


def test_text_config_matches_open_clip_model_configs():
    folder = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")
    config_names = {
        "RN50": "RN50",
        "RN101": "RN101",
        "RN50x4": "RN50x4",
        "RN50x16": "RN50x16",
        "RN50x64": "RN50x64",
        "ViT-B/32": "ViT-B-32",
        "ViT-B/16": "ViT-B-16",
        "ViT-L/14": "ViT-L-14",
        "ViT-L/14@336px": "ViT-L-14-336",
    }
    assert set(config_names) == set(OPENAI_URLS)
    for name, config_name in config_names.items():
        with open(os.path.join(folder, config_name + ".json")) as f:
            reference = json.load(f)
        text = reference["text_cfg"]
        assert clip_text.text_config(name) == dict(
            embed_dim=reference["embed_dim"],
            context_length=text["context_length"],
            width=text["width"],
            heads=text["heads"],
            layers=text["layers"],
        ), name
        assert text["vocab_size"] == 49408 and reference.get("quick_gelu") is None, name
        assert OPENAI_URLS[name] == open_clip.pretrained.get_pretrained_url(config_name, "openai")
    with pytest.raises(ValueError, match="ViT-B/16"):
        clip_text.text_config("ViT-H/14")


def test_random_init_encoder_has_the_named_shapes():
    config = clip_text.text_config("RN50")
    encoder = clip_text.TextEncoder(**dict(config, layers=1))
    out = encoder(clip_text.tokenize(PROMPTS))
    assert out.shape == (len(PROMPTS), 1024) and torch.isfinite(out).all()


def _hugging_face_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=64,
    )


def test_encoder_matches_transformers_text_model_with_projection():
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    model = perturb(CLIPTextModelWithProjection(_hugging_face_text_config()))
    encoder = clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu")
    tokens = clip_text.tokenize(PROMPTS)
    with torch.no_grad():
        expected = model(input_ids=tokens).text_embeds
        actual = encoder(tokens)
    assert relative_error(actual, expected) <= REL_TOL


def test_encoder_matches_transformers_clip_model_and_ignores_vision():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=_hugging_face_text_config().to_dict(),
        projection_dim=64,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
    )
    model = perturb(CLIPModel(config))
    encoder = clip_text.TextEncoder.from_state_dict(
        {"state_dict": model.state_dict()}, "quick_gelu"
    )
    tokens = clip_text.tokenize(PROMPTS)
    with torch.no_grad():
        features = model.get_text_features(input_ids=tokens)
        # transformers 5 wraps the projected features
        expected = getattr(features, "pooler_output", features)
        assert relative_error(encoder(tokens), expected) <= REL_TOL


def test_wrapped_and_prefixed_state_dicts_load_the_same():
    model = tiny_open_clip()
    plain = clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu")
    wrapped = clip_text.TextEncoder.from_state_dict(
        {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, "quick_gelu"
    )
    tokens = clip_text.tokenize(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(tokens), plain(tokens), rtol=0, atol=0)


def test_heads_override_and_shorter_token_rows():
    """Heads are not visible in shapes (default width // 64); a tower with other heads needs heads=.
    Rows cut after their EOT give the same features (the attention is causal)."""
    model = tiny_open_clip(width=64, heads=2)
    tokens = open_clip.tokenize(PROMPTS)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        assert (
            relative_error(
                clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu")(tokens),
                expected,
            )
            > 1e-3
        )
        encoder = clip_text.TextEncoder.from_state_dict(model.state_dict(), "quick_gelu", heads=2)
        assert relative_error(encoder(tokens), expected) <= REL_TOL
        assert relative_error(encoder(tokens[:, :16]), expected) <= REL_TOL


def test_state_dict_errors_name_the_key():
    sd = tiny_open_clip().state_dict()
    with pytest.raises(ValueError, match="no CLIP text tower.*visual"):
        clip_text.TextEncoder.from_state_dict(
            {k: v for k, v in sd.items() if k.startswith("visual.")}, "quick_gelu"
        )
    missing = dict(sd)
    del missing["transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"my\.pt: .*Missing key.*resblocks\.1\.mlp\.c_fc\.bias"):
        clip_text.TextEncoder.from_state_dict(missing, "quick_gelu", source="my.pt")
    bad = dict(sd, **{"ln_final.weight": torch.ones(5)})
    with pytest.raises(ValueError, match=r"ln_final\.weight.*\[5\].*\[64\]"):
        clip_text.TextEncoder.from_state_dict(bad, "quick_gelu")
    extra = dict(sd, **{"transformer.resblocks.0.ls_1.gamma": torch.ones(64)})
    with pytest.raises(ValueError, match=r"Unexpected key.*resblocks\.0\.ls_1\.gamma"):
        clip_text.TextEncoder.from_state_dict(extra, "quick_gelu")
    with pytest.raises(ValueError, match="not a tensor"):
        clip_text.TextEncoder.from_state_dict(dict(sd, **{"ln_final.bias": [1.0]}), "quick_gelu")


# ---------------------------------------------------------------- files: TorchScript, pickles,
# errors


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_torchscript_archive_says_its_activation(tmp_path, activation):
    """OpenAI ships TorchScript archives; a traced open_clip model stands in for one. Its modules
    name the activation (QuickGELU or GELU): read without a choice; a contradicting one refused."""
    model = tiny_open_clip(layers=1, quick_gelu=activation == "quick_gelu")
    tokens = open_clip.tokenize(PROMPTS)
    traced = torch.jit.trace_module(model, {"encode_text": (tokens,)})
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    encoder = clip_text.load_text_encoder(str(path))
    assert not encoder.training and all(not p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        assert relative_error(encoder(tokens), model.encode_text(tokens)) <= REL_TOL
    other = "gelu" if activation == "quick_gelu" else "quick_gelu"
    with pytest.raises(
        ValueError,
        match=f"traced.pt: its text tower uses {activation}, not --clip-activation {other}",
    ):
        clip_text.load_text_encoder(str(path), other)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_state_dict_file_reads_with_the_chosen_activation_or_is_refused(tmp_path, activation):
    """A plain state dict does not say its activation (QuickGELU: OpenAI-trained; GELU: most
    open_clip / LAION-trained towers): the chosen one matches open_clip; none is refused, naming
    the flag; the other one would differ from open_clip (so a guess would be silently wrong)."""
    model = tiny_open_clip(layers=1, quick_gelu=activation == "quick_gelu")
    path = tmp_path / "open_clip.pt"
    torch.save(model.state_dict(), path)
    tokens = open_clip.tokenize(PROMPTS)
    other = "gelu" if activation == "quick_gelu" else "quick_gelu"
    with torch.no_grad():
        expected = model.encode_text(tokens)
        chosen = clip_text.load_text_encoder(path, activation)(tokens)
        guessed = clip_text.load_text_encoder(path, other)(tokens)
    assert relative_error(chosen, expected) <= REL_TOL
    assert relative_error(guessed, expected) > 1e-3
    refusal = r"open_clip.pt: .*--clip-activation \(activation=\) quick_gelu for OpenAI-.*gelu for"
    with pytest.raises(ValueError, match=refusal):
        clip_text.load_text_encoder(path)


def test_half_precision_checkpoint_comes_out_fp32(tmp_path):
    model = tiny_open_clip()
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    encoder = clip_text.load_text_encoder(path, "quick_gelu")
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    with torch.no_grad():
        model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        tokens = clip_text.tokenize(PROMPTS)
        assert relative_error(encoder(tokens), model.encode_text(tokens)) <= REL_TOL


class _NotATensor:
    pass


def test_bad_files_give_errors_naming_the_file(tmp_path):
    sd = tiny_open_clip().state_dict()
    good = tmp_path / "good.pt"
    torch.save(sd, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    pickled = tmp_path / "pickled.pt"
    torch.save({"token_embedding.weight": _NotATensor()}, pickled)
    visual_only = tmp_path / "visual.pt"
    torch.save({k: v for k, v in sd.items() if k.startswith("visual.")}, visual_only)
    for path, error, words in [
        (truncated, ValueError, "truncated or corrupt"),
        (garbage, ValueError, "truncated or corrupt"),
        (pickled, ValueError, "holds pickled Python objects"),
        (visual_only, ValueError, "no CLIP text tower"),
        (tmp_path / "missing.pt", FileNotFoundError, "no such CLIP checkpoint"),
    ]:
        with pytest.raises(error, match=f"{path.name}: .*{words}") as e:
            clip_text.load_text_encoder(path, "quick_gelu")
        assert "weights_only" not in str(e.value)  # torch's advice to unpickle is not passed on
    with pytest.raises(ValueError, match="ViT-B/16"):
        clip_text.load_text_encoder("ViT-Q/99")


# ---------------------------------------------------------------- cache folder and download


def test_cache_folder_and_file_names(tmp_path, monkeypatch):
    monkeypatch.delenv(clip_text.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        clip_text.cached_model_path("ViT-B/16")
        == tmp_path / "home" / ".cache" / "clip" / "ViT-B-16.pt"
    )
    assert clip_text.cached_model_path("ViT-L/14@336px").name == "ViT-L-14-336px.pt"
    assert clip_text.cached_model_path("ViT-B-16").name == "ViT-B-16.pt"
    monkeypatch.setenv(clip_text.CACHE_ENV, str(tmp_path / "env"))
    assert clip_text.cached_model_path("RN50") == tmp_path / "env" / "RN50.pt"
    assert (
        clip_text.cached_model_path("RN50", download_root=tmp_path / "arg")
        == tmp_path / "arg" / "RN50.pt"
    )
    assert not clip_text.cached_model_path("RN50").exists()
    assert (
        clip_text.checkpoint_id("ViT-B/16")
        == "ViT-B/16 sha256:" + OPENAI_URLS["ViT-B/16"].split("/")[-2]
    )


@pytest.fixture
def file_server(tmp_path):
    """Serve tmp_path/"served" on 127.0.0.1 from a thread -> (folder, base URL, stop())."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)

    yield served, f"http://127.0.0.1:{server.server_address[1]}", stop
    stop()


def _publish(served, sha, data, name="Tiny.pt"):
    (served / sha).mkdir(exist_ok=True)
    (served / sha / name).write_bytes(data)


def test_download_verifies_caches_and_then_works_offline(tmp_path, file_server, monkeypatch):
    served, base, stop = file_server
    model = tiny_open_clip()
    source = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), source)
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    _publish(served, sha, data)
    monkeypatch.setitem(OPENAI_URLS, "Tiny/1", f"{base}/{sha}/Tiny.pt")
    cache = tmp_path / "cache"
    assert not clip_text.cached_model_path("Tiny/1", cache).exists()
    encoder = clip_text.load_text_encoder("Tiny/1", "quick_gelu", download_root=cache)
    assert sorted(p.name for p in cache.iterdir()) == ["Tiny.pt"]
    assert (cache / "Tiny.pt").read_bytes() == data
    tokens = clip_text.tokenize(PROMPTS)
    with torch.no_grad():
        assert relative_error(encoder(tokens), model.encode_text(tokens)) <= REL_TOL
    stop()  # now offline: the cached, verified file is used
    again = clip_text.load_text_encoder("Tiny/1", "quick_gelu", download_root=cache)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), encoder(tokens), rtol=0, atol=0)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, file_server, monkeypatch):
    served, base, _ = file_server
    wrong = "0" * 64
    _publish(served, wrong, b"not the file whose hash is in the URL")
    monkeypatch.setitem(OPENAI_URLS, "Tiny/1", f"{base}/{wrong}/Tiny.pt")
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="invalid hash value"):
        clip_text.load_text_encoder("Tiny/1", download_root=cache)
    assert not cache.exists()


def test_failed_download_names_url_and_destination_and_leaves_no_folder_it_made(
    tmp_path, monkeypatch
):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    (tmp_path / "kept").mkdir()  # there before: stays
    monkeypatch.setenv(clip_text.CACHE_ENV, str(tmp_path / "kept" / "made" / "clip"))
    with pytest.raises(RuntimeError, match="no network here") as info:
        clip_text.load_text_encoder("ViT-B/16")
    destination = tmp_path / "kept" / "made" / "clip" / "ViT-B-16.pt"
    assert OPENAI_URLS["ViT-B/16"] in str(info.value) and str(destination) in str(info.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not any(
        (tmp_path / "kept").iterdir()
    )


def test_corrupt_cached_file_is_reported(tmp_path, monkeypatch):
    sha = "cd" * 32
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "Tiny.pt").write_bytes(b"half a download")
    monkeypatch.setitem(OPENAI_URLS, "Tiny/1", f"http://127.0.0.1:9/{sha}/Tiny.pt")
    with pytest.raises(ValueError, match="Tiny.pt: SHA256 is not cdcd.* delete the file"):
        clip_text.load_text_encoder("Tiny/1", download_root=cache)
