"""Text anchors t_k: the CLIP text embedding of one prompt per expression class (KE2NT, Sec. III).

    t_k = E_text("a photo of a person making {a/an} {class_k} facial expression.")   # (D,) = (512,)

The text tower is frozen: anchors are computed once, as the RAW text-tower outputs (the model takes
the cosines; with several templates, not in the paper, their mean). CLI: text_prompts.py --help.
"""

import argparse
import importlib
import os
import string
import sys
import zipfile
from typing import NamedTuple

import torch
import torch.nn.functional as F

TEMPLATE = "a photo of a person making {article} {name} facial expression."  # the paper's prompt
ANCHOR_FORMAT = "ke2nt-text-anchors-v1"  # the "format" tag of an anchor file
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
    """The vendored clip_text package beside this file, whether the files are flat scripts or a
    package folder of another codebase; loaded only when anchors are built."""
    if __package__:
        return importlib.import_module(".clip_text", __package__)
    return importlib.import_module("clip_text")


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
        fields = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        if "name" not in fields or not fields <= {"article", "name"}:
            raise ValueError(f"template {t!r}: needs {{name}}, may have {{article}}, nothing else")
    return [[t.format(article=article(n), name=n) for t in templates] for n in class_names]


@torch.no_grad()
def build_anchors(encoder, class_names, templates=None):
    """Anchors [K, D] (float32, CPU): encoder outputs for each class's prompts, template mean."""
    clip_text = _clip_text()
    prompts = prompts_for(class_names, templates)  # [K][T]
    flat = [p for row in prompts for p in row]
    features = encoder(clip_text.tokenize(flat, getattr(encoder, "context_length", 77)))
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
    try:
        return os.path.isfile(clip) or _clip_text().cached_model_path(clip).exists()
    except ValueError:  # not a known model name
        return False


class TextAnchors(NamedTuple):
    """What KE2NT takes after its backbone, and where the anchors came from."""

    anchors: torch.Tensor  # (K, D), or (K + 1, D) with a text-only t_neutral last
    num_classes: int  # K
    neutral_index: int  # the row of t_neutral: a class, or K
    source: str  # "<model> sha256:<hex>", or "random-init <model> (seed S)"


def anchors_for(class_names, clip="ViT-B/16", seed=0, log=print, templates=None):
    """TextAnchors for the class words (in label order): the anchors of anchor_names(class_names),
    from CLIP weights (a model name, downloaded once, or a file) or, for clip "random[:<model>]", a
    seeded random-init tower (offline, no language in the anchors)."""
    clip_text = _clip_text()
    if not is_random(clip):
        encoder = clip_text.load_text_encoder(clip)
        source = clip_text.checkpoint_id(clip)
    else:
        size = clip.split(":", 1)[1] if ":" in clip else "ViT-B/16"
        log(f"NOTICE: RANDOMLY initialised {size} text tower (seed {seed}): NO language in anchors")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = clip_text.TextEncoder(**clip_text.text_config(size)).eval()
        source = f"random-init {size} (seed {seed})"
    names = anchor_names(class_names)
    anchors = build_anchors(encoder, names, templates)
    return TextAnchors(anchors, len(list(class_names)), neutral_index(names), source)


def save_anchors(path, anchors, class_names, templates, clip_id):
    """Write anchors [K, D], class names, templates and source (clip_id) as a plain dict."""
    anchors = torch.as_tensor(anchors).detach().float().cpu()
    if anchors.dim() != 2 or len(anchors) != len(class_names):
        raise ValueError(f"anchors {tuple(anchors.shape)}: expected [{len(class_names)}, D]")
    obj = dict(format=ANCHOR_FORMAT, anchors=anchors, class_names=list(class_names))
    obj.update(templates=list(templates or [TEMPLATE]), clip=str(clip_id))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(obj, path)  # load_anchors refuses a torn write


def load_anchors(path, class_names=None):
    """A save_anchors file -> its dict; ValueError naming it if damaged or not for class_names."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch.load checks no CRC: a changed byte
            if archive.testzip():
                raise ValueError("damaged: a record fails its CRC check")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, damaged, not a torch file, pickled objects
        raise ValueError(f"{path}: cannot read the anchor file: {' '.join(str(e).split())}") from e
    if not isinstance(obj, dict) or obj.get("format") != ANCHOR_FORMAT:
        raise ValueError(f"{path}: not a text-anchor file (make one with text_prompts.py --out)")
    t, names = obj.get("anchors"), obj.get("class_names")
    ok = torch.is_tensor(t) and t.dim() == 2 and t.is_floating_point() and isinstance(names, list)
    if not (ok and len(t) == len(names) and bool(torch.isfinite(t).all())):
        raise ValueError(f"{path}: damaged: expected finite anchors [K, D] for K class names")
    if class_names is not None and list(class_names) != names:
        raise ValueError(f"{path}: anchors were built for classes {names}, not {list(class_names)}")
    return dict(obj, anchors=t.float())


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
    a("--seed", type=int, default=0, help="seed of the random-init tower (--clip random)")
    a("--dataset", default="rafdb", help="a dataset (DATASET_CLASSES): its class words, in order")
    a("--classes", default=None, help='own class words, "happy,sad,...", instead of --dataset')
    a("--template", action="append", help="with {article} and {name}; repeat to ensemble")
    a("--out", default=None, help="where to save the anchors (e.g. anchors/rafdb.pt)")
    args = parser.parse_args(argv)
    names = class_names(args.dataset) if args.classes is None else args.classes.split(",")
    names = anchor_names(w.strip() for w in names)  # + a text-only "neutral" where none
    if "" in names or len(set(names)) != len(names):
        parser.error(f"--classes {args.classes!r}: give distinct, non-empty words")
    text = anchors_for(names, args.clip, args.seed, templates=args.template)
    anchors = text.anchors
    print("\n".join(" | ".join(row) for row in prompts_for(names, args.template)))
    print(f"\nanchors {tuple(anchors.shape)}, cosine similarities:")
    print(similarity_table(anchors, names))
    if args.out:
        save_anchors(args.out, anchors, names, args.template, text.source)
        print(f"saved {args.out}")
    return anchors


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
