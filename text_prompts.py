"""Text anchors t_k: the CLIP text embedding of one prompt per expression class (KE2NT, Sec. III).

    t_k = E_text("a photo of a person making {a/an} {class_k} facial expression.")   # (D,) = (512,)

The text tower is frozen: anchors are computed once, as the RAW text-tower outputs (the model takes
the cosines; with several templates, not in the paper, their mean). CLI: text_prompts.py --help.
"""

import argparse
import contextlib
import importlib
import io
import os
import pickle
import string
import sys
import zipfile
from typing import NamedTuple

import torch
import torch.nn.functional as F

TEMPLATE = "a photo of a person making {article} {name} facial expression."  # the paper's prompt
ANCHOR_FORMAT = "ke2nt-text-anchors-v2"  # the "format" tag of an anchor file
_V1 = "ke2nt-text-anchors-v1"  # the previous one: its class_names had the appended "neutral"
_AN_BY_SOUND = ("hour", "honest", "honor", "honour", "heir")
_A_BY_SOUND = ("unique", "unif", "union", "unit", "univers", "use", "usu", "uti", "eu", "one")
# Each dataset's class words in its label order (the words the released code puts in its prompts)
_RAFDB = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
_AFFECTNET = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
_FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
_CKPLUS = ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")
DATASET_CLASSES = dict(rafdb=_RAFDB, affectnet7=_AFFECTNET[:7], affectnet8=_AFFECTNET)
DATASET_CLASSES.update(ferplus=_FERPLUS, ckplus=_CKPLUS, ckplus_neutral=_CKPLUS + ("neutral",))
DATASET_CLASSES["synthetic"] = _RAFDB  # the demo's drawn faces show RAF-DB's seven expressions


def _clip_text():
    """clip_text beside this file (flat scripts or a package folder), loaded when first needed."""
    return importlib.import_module(".clip_text" if __package__ else "clip_text", __package__)


def class_names(dataset):
    """Dataset name -> list of class words in the dataset's label order (DATASET_CLASSES)."""
    if dataset not in DATASET_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_CLASSES)}")
    return list(DATASET_CLASSES[dataset])


def article(word):
    """'a' or 'an' by the word's sound: an anger, a surprise, an honest (silent h), a unique."""
    w = word.strip().lower()
    vowel = w[:1] in ("a", "e", "i", "o", "u") and not w.startswith(_A_BY_SOUND)
    return "an" if vowel or w.startswith(_AN_BY_SOUND) else "a"


def prompts_for(class_names, templates=None):
    """Prompts [K][T]: each template filled with {article} and {name} for each class."""
    templates = list(templates or [TEMPLATE])
    for t in templates:
        fields = set()  # where a lone brace stops the parse
        with contextlib.suppress(ValueError):
            fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        if "name" not in fields or not fields <= {"article", "name"}:
            raise ValueError(f"template {t!r} (--template): needs {{name}}, may have {{article}}")
    return [[t.format(article=article(n), name=n) for t in templates] for n in class_names]


@torch.no_grad()
def build_anchors(encoder, class_names, templates=None):
    """Anchors [K, D] (float32, CPU): encoder outputs for each class's prompts, template mean."""
    clip_text, context = _clip_text(), getattr(encoder, "context_length", 77)
    prompts, tokens = prompts_for(class_names, templates), []  # [K][T]
    for name, row in zip(class_names, prompts, strict=True):
        try:
            tokens.append(clip_text.tokenize(row, context))  # (T, L)
        except ValueError as e:  # too long for the text tower
            raise ValueError(f"the prompt for class word {name!r}: {e}") from None
    features = encoder(torch.cat(tokens))  # (K * T, D)
    return features.float().view(len(prompts), len(prompts[0]), -1).mean(dim=1).cpu()  # (K, D)


def anchor_names(class_names):
    """The class names, plus a text-only "neutral" last where none (CK+): L_t and L_c need it."""
    names = list(class_names)
    return names if "neutral" in names else names + ["neutral"]


def neutral_index(class_names):
    """Index of "neutral" in class_names, None when the dataset has no neutral class."""
    return list(class_names).index("neutral") if "neutral" in class_names else None


def is_random(clip):
    """True for clip "random" or "random:<model name>": a seeded random-init tower of that size."""
    return clip == "random" or clip.startswith("random:")


def clip_weights_available(clip):
    """True when `clip` is a file, or a model name whose weights are in the cache (no download)."""
    with contextlib.suppress(ValueError):  # not a known model name
        return os.path.isfile(clip) or _clip_text().cached_model_path(clip).exists()
    return False


class TextAnchors(NamedTuple):
    """What KE2NT takes after its backbone, and where the anchors came from."""

    anchors: torch.Tensor  # (K, D), or (K + 1, D) with a text-only t_neutral last
    num_classes: int  # K
    neutral_index: int  # the row of t_neutral: a class, or K
    source: str  # "<model> sha256:<hex>" or "random-init <model> (seed S)", [+ " (<activation>)"]


def anchors_for(class_names, clip="ViT-B/16", seed=0, log=print, templates=None, activation=None):
    """TextAnchors for the class words (in label order): the anchors of anchor_names(class_names),
    from CLIP weights (a model name, downloaded once, or a file: activation "quick_gelu" or "gelu"
    where it does not say) or, for clip "random[:<model>]", a seeded random-init tower (offline)."""
    clip_text = _clip_text()
    if not is_random(clip):
        encoder = clip_text.load_text_encoder(clip, activation)
        source = clip_text.checkpoint_id(clip)
    else:
        size = clip.split(":", 1)[1] if ":" in clip else "ViT-B/16"
        log(f"NOTICE: RANDOMLY initialised {size} text tower (seed {seed}): NO language in anchors")
        config = dict(clip_text.text_config(size), activation=activation or "quick_gelu")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = clip_text.TextEncoder(**config).eval()
        source = f"random-init {size} (seed {seed})"
    source += f" ({activation})" if activation else ""
    names = anchor_names(class_names)
    anchors = build_anchors(encoder, names, templates)
    return TextAnchors(anchors, len(class_names), neutral_index(names), source)


def save_anchors(path, anchors, class_names, templates, clip_id):
    """Write the anchors of anchor_names(class_names), the class words, templates and source
    (clip_id) as a plain dict, atomically: a failed write (OSError) leaves any previous file."""
    anchors = torch.as_tensor(anchors).detach().float().cpu()
    rows = len(anchor_names(class_names))
    if anchors.dim() != 2 or len(anchors) != rows:
        raise ValueError(f"anchors {tuple(anchors.shape)}: expected [{rows}, D] for {class_names}")
    obj = dict(format=ANCHOR_FORMAT, anchors=anchors, class_names=list(class_names))
    obj.update(templates=list(templates or [TEMPLATE]), clip=str(clip_id))
    buffer = io.BytesIO()  # bytes first: a full disk is then ENOSPC, not a torn zip
    torch.save(obj, buffer)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def load_anchors(path, class_names):
    """A save_anchors file for exactly these class words (in order) -> TextAnchors; ValueError
    naming the file if it is not one, is damaged or is for other words."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch.load checks no CRC: a changed byte
            if archive.testzip():
                raise ValueError("damaged: a record fails its CRC check")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, not a zip (text, cut short), damaged, pickled objects
        why = " ".join(str(e).split())  # torch's advice to unpickle anyway is not passed on:
        why = "it holds pickled Python objects" if isinstance(e, pickle.UnpicklingError) else why
        raise ValueError(f"{path}: not a readable text-anchor file: {why}") from e
    if not isinstance(obj, dict) or obj.get("format") not in (ANCHOR_FORMAT, _V1):
        raise ValueError(f"{path}: not a text-anchor file (make one with text_prompts.py --out)")
    t, words, v1 = obj.get("anchors"), obj.get("class_names"), obj.get("format") == _V1
    ok = torch.is_tensor(t) and t.dim() == 2 and t.is_floating_point() and isinstance(words, list)
    ok = ok and isinstance(obj.get("clip"), str) and bool(torch.isfinite(t).all())
    if not (ok and len(t) == len(words if v1 else anchor_names(words))):
        raise ValueError(f"{path}: damaged: expected finite anchors [K, D] for its class words")
    if words != (anchor_names(class_names) if v1 else list(class_names)):
        raise ValueError(f"{path}: anchors were built for classes {words}, not {list(class_names)}")
    neutral = neutral_index(anchor_names(class_names))
    return TextAnchors(t.float(), len(class_names), neutral, obj["clip"])


def similarity_table(anchors, class_names):
    """Cosine similarities of the anchors as a printable K x K table (str)."""
    t = F.normalize(anchors.float(), dim=-1)
    width = max(9, *(len(n) for n in class_names))
    lines = [" " * width + "".join(f"{n[:9]:>10}" for n in class_names)]
    for name, row in zip(class_names, (t @ t.T).tolist(), strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10.3f}" for v in row))
    return "\n".join(lines)


_ALIASES = dict(happy="happiness", sad="sadness", angry="anger", surprised="surprise")
_ALIASES.update(fearful="fear", disgusted="disgust", neutrality="neutral")


def map_labels(source_classes, target_classes):
    """For each source class, the index of the same class (_ALIASES: other spellings), or None."""
    target = [_ALIASES.get(c.lower(), c.lower()) for c in target_classes]
    source = [_ALIASES.get(c.lower(), c.lower()) for c in source_classes]
    return [target.index(c) if c in target else None for c in source]


def main(argv=None):
    parser = argparse.ArgumentParser(description="KE2NT's text anchors t_k, built once.")
    a = parser.add_argument
    a("--clip", default="ViT-B/16", help="CLIP name, checkpoint file, or random[:NAME] (offline)")
    a("--clip-activation", choices=["quick_gelu", "gelu"], help="quick_gelu: OpenAI; gelu: LAION")
    a("--seed", type=int, default=0, help="seed of the random-init tower (--clip random)")
    a("--dataset", default="rafdb", choices=DATASET_CLASSES, help="its class words, in order")
    a("--classes", type=lambda s: [w.strip() for w in s.split(",")], help='"happy,sad,..."')
    a("--template", action="append", help="with {article} and {name}; repeat to ensemble")
    a("--out", default=None, help="where to save the anchors (e.g. anchors/rafdb.pt)")
    args = parser.parse_args(argv)
    words = class_names(args.dataset) if args.classes is None else args.classes
    if "" in words or len(set(words)) != len(words):
        raise ValueError(f"--classes {args.classes!r}: give distinct, non-empty words")
    prompts = prompts_for(anchor_names(words), args.template)  # [K or K + 1][T]
    text = anchors_for(words, args.clip, args.seed, print, args.template, args.clip_activation)
    print("\n".join(" | ".join(row) for row in prompts))
    print(f"\nanchors {tuple(text.anchors.shape)}, cosine similarities:")
    print(similarity_table(text.anchors, anchor_names(words)))
    if args.out:
        try:
            save_anchors(args.out, text.anchors, words, args.template, text.source)
        except OSError as e:
            raise ValueError(f"--out {args.out}: {e.strerror or e}; nothing written") from e
        print(f"saved {args.out}")
    return text


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, RuntimeError) as e:  # bad input, a failed download: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
