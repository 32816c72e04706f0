"""Text anchors t_k: the CLIP text embedding of one prompt per expression class (KE2NT, Sec. III).

    t_k = E_text("a photo of a person making {a/an} {class_k} facial expression.")   # (D,) = (512,)

The text tower is frozen, so the anchors are computed once, saved, and loaded by training.
As in the released code the anchors are the RAW (unnormalised) text-tower outputs; the model
normalises them where the paper's equations take cosines. With several templates (prompt
ensembling, not in the paper) an anchor is the mean of its raw per-template outputs.

CLI:  python text_prompts.py --clip ViT-B/16 --dataset rafdb --out anchors/rafdb.pt
      python text_prompts.py --clip random --seed 0 --dataset rafdb --out anchors/random.pt
      (the second offline: a seeded random-init tower)
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import clip_text
from lib import errors
from lib.checkpoint import ANCHOR_FORMAT, load_checkpoint, save_atomic
from lib.errors import BadInputError

# Class names in each dataset's own label order (the words the released code puts in its prompts).
DATASET_CLASSES = {
    "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    "affectnet7": ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"),
    "affectnet8": (
        "neutral",
        "happiness",
        "sadness",
        "surprise",
        "fear",
        "disgust",
        "anger",
        "contempt",
    ),
    "ferplus": (
        "neutral",
        "happiness",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
    ),
    "ckplus": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise"),
    "ckplus_neutral": (
        "anger",
        "contempt",
        "disgust",
        "fear",
        "happiness",
        "sadness",
        "surprise",
        "neutral",
    ),
    "synthetic": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
}
TEMPLATE = "a photo of a person making {article} {name} facial expression."  # the paper's prompt

# "an" goes before a vowel SOUND: exceptions to the first-letter rule (silent h; vowels read as a
# consonant).
_AN_BY_SOUND = ("hour", "honest", "honor", "honour", "heir")
_A_BY_SOUND = (
    "unique",
    "unif",
    "union",
    "unit",
    "univers",
    "use",
    "usu",
    "uti",
    "eu",
    "one",
    "once",
    "ewe",
)


def class_names(dataset):
    """Dataset name -> list of class words in the dataset's label order."""
    if dataset not in DATASET_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_CLASSES)}")
    return list(DATASET_CLASSES[dataset])


def article(word):
    """'a' or 'an' by the word's sound: an anger, a surprise, a happiness, an honest, a unique."""
    w = word.strip().lower()
    if w.startswith(_AN_BY_SOUND):
        return "an"
    if w.startswith(_A_BY_SOUND):
        return "a"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") else "a"


def prompts_for(class_names, templates=None):
    """Prompts [K][T]: each template filled with {article} and {name} for each class."""
    templates = list(templates or [TEMPLATE])
    for template in templates:
        if "{name}" not in template:
            raise ValueError(
                f"template {template!r} has no {{name}} field (fields: {{article}}, {{name}})"
            )
    try:
        return [
            [t.format(article=article(name), name=name) for t in templates] for name in class_names
        ]
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"bad template in {templates!r}: only the fields {{article}} and {{name}} exist ({e})"
        ) from e


@torch.no_grad()
def build_anchors(encoder, class_names, templates=None):
    """Text anchors [K, D]: encoder outputs for each class's prompts, mean over the T templates.

    RAW (unnormalised) outputs, float32, on the CPU. encoder: a clip_text.TextEncoder (or any
    module mapping tokens [N, L] -> [N, D] with a .context_length).
    """
    prompts = prompts_for(class_names, templates)  # [K][T]
    k, t = len(prompts), len(prompts[0])
    tokens = clip_text.tokenize(
        [p for row in prompts for p in row], getattr(encoder, "context_length", 77)
    )
    features = encoder(tokens)  # (K*T, D)
    return features.float().view(k, t, -1).mean(dim=1).cpu()  # (K, D)


def anchor_names(class_names):
    """The names to build anchors for: the class names, plus "neutral" last when the dataset has no
    neutral class (CK+ 7-class). L_t and L_c need t_neutral, a text direction that exists whatever
    the images are; such an extra anchor is text-only and takes no part in the logits (KE2NT
    num_classes)."""
    names = list(class_names)
    return names if "neutral" in names else names + ["neutral"]


RANDOM_NOTICE = (
    "NOTICE: the anchors come from a RANDOMLY initialised {size} text tower (seed {seed}), not "
    "from CLIP's\n"
    "  weights. Such anchors carry NO language knowledge; they only give the classes distinct "
    "directions.\n  Use them to exercise the code offline, never to report a result."
)


def is_random(clip):
    """True for --clip random or random:<model name>: a seeded random-init text tower of that
    size."""
    return clip == "random" or clip.startswith("random:")


def anchors_for(class_names, clip="ViT-B/16", seed=0, log=print):
    """Anchors (K, D) for a dataset's classes, a text-only "neutral" last where it has none
    (anchor_names), and their source: "<model> sha256:<hex>" for CLIP weights, "random-init <model>
    (seed S)" for clip = "random[:<model>]" (default size ViT-B/16; offline; the notice above is
    logged)."""
    names = anchor_names(class_names)
    if is_random(clip):
        size = clip.split(":", 1)[1] if ":" in clip else "ViT-B/16"
        log(RANDOM_NOTICE.format(size=size, seed=seed))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = clip_text.TextEncoder(**clip_text.text_config(size)).eval()
        return build_anchors(encoder, names).float(), f"random-init {size} (seed {seed})"
    encoder = clip_text.load_text_encoder(clip)
    return build_anchors(encoder, names).float(), clip_text.checkpoint_id(clip)


def is_random_source(source):
    """True when an anchor source (anchors_for's second value, a checkpoint's "clip") is a random
    tower."""
    return str(source).startswith("random-init ")


def clip_weights_available(clip):
    """True when `clip` is a file, or a model name whose weights are already in the cache (no
    download)."""
    if os.path.isfile(clip):
        return True
    try:
        return clip_text.cached_model_path(clip).exists()
    except ValueError:  # not a known model name
        return False


def neutral_index(class_names):
    """Index of "neutral" in class_names, None when the dataset has no neutral class."""
    return list(class_names).index("neutral") if "neutral" in class_names else None


def save_anchors(path, anchors, class_names, templates, clip_id):
    """Write anchors [K, D] with their class names, templates and CLIP checkpoint id, atomically."""
    anchors = torch.as_tensor(anchors).detach().float().cpu()
    if anchors.dim() != 2 or anchors.shape[0] != len(class_names):
        raise ValueError(
            f"anchors have shape {tuple(anchors.shape)}; expected [{len(class_names)}, D] "
            f"for {len(class_names)} class names"
        )
    payload = dict(
        format=ANCHOR_FORMAT,
        anchors=anchors,
        class_names=list(class_names),
        templates=list(templates or [TEMPLATE]),
        clip=str(clip_id),
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_atomic(payload, path)


def load_anchors(path, class_names=None):
    """Read a save_anchors file -> dict(anchors [K, D], class_names, templates, clip).

    Any unreadable or wrong file, or class_names given and different from the file's (names or
    order)
    -> errors.BadInputError (a ValueError) saying so; a missing file -> errors.MissingFileError.
    """
    payload = load_checkpoint(path, "anchors")  # format, keys and the (K, D) shape checked there
    anchors, names = payload["anchors"], list(payload["class_names"])
    if class_names is not None and list(class_names) != names:
        raise BadInputError(
            f"{path}: anchors were built for classes {names}, but the dataset's classes are "
            f"{list(class_names)}; rebuild them with text_prompts.py for this dataset"
        )
    return dict(
        anchors=anchors.float(),
        class_names=names,
        templates=list(payload["templates"]),
        clip=str(payload["clip"]),
    )


def similarity_table(anchors, class_names):
    """Cosine similarities of the anchors as a printable K x K table (str)."""
    t = F.normalize(anchors.float(), dim=-1)
    sim = t @ t.T  # (K, K)
    width = max(9, *(len(n) for n in class_names))
    lines = [" " * width + "".join(f"{n[:9]:>10}" for n in class_names)]
    for name, row in zip(class_names, sim.tolist(), strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10.3f}" for v in row))
    return "\n".join(lines)


# other spellings of the class words, for matching class names across datasets
_ALIASES = {
    "happy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
    "neutrality": "neutral",
}


def map_labels(source_classes, target_classes):
    """For each source class index, the index of the same class name in target_classes, or None."""

    def canon(name):
        return _ALIASES.get(name.lower(), name.lower())

    target = [canon(c) for c in target_classes]
    return [target.index(canon(c)) if canon(c) in target else None for c in source_classes]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Build KE2NT's text anchors t_k once and save them."
    )
    parser.add_argument(
        "--clip",
        default="ViT-B/16",
        help="CLIP model name (downloaded to the cache), checkpoint "
        "path, or random[:NAME] (random-init tower, offline)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random-init tower (--clip random)"
    )
    parser.add_argument("--dataset", default="rafdb", choices=sorted(DATASET_CLASSES))
    parser.add_argument(
        "--template",
        action="append",
        default=None,
        help="prompt template with {article} and {name}; repeat to ensemble (default: the paper's)",
    )
    parser.add_argument(
        "--out", default=None, help="where to save the anchors (e.g. anchors/rafdb.pt)"
    )
    parser.add_argument(
        "--download-root",
        default=None,
        help=f"CLIP cache folder (default ${clip_text.CACHE_ENV} or ~/.cache/clip)",
    )
    parser.add_argument(
        "--exact-gelu", action="store_true", help="for LAION-style open_clip checkpoints"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    # + a text-only "neutral" where the dataset has none
    names = anchor_names(class_names(args.dataset))
    templates = args.template or [TEMPLATE]
    if is_random(args.clip):
        if args.template:
            parser.error("--template is not used with --clip random")
        anchors, clip_id = anchors_for(names, args.clip, args.seed)
    else:
        encoder = clip_text.load_text_encoder(
            args.clip,
            device=args.device,
            download_root=args.download_root,
            quick_gelu=not args.exact_gelu,
        )
        # (K, D)
        anchors, clip_id = (
            build_anchors(encoder, names, templates),
            clip_text.checkpoint_id(args.clip),
        )
    for row in prompts_for(names, templates):
        print(" | ".join(row))
    print(f"\nanchors {tuple(anchors.shape)}, cosine similarities:")
    print(similarity_table(anchors, names))
    if args.out:
        save_anchors(args.out, anchors, names, templates, clip_id)
        print(f"saved {args.out}")
    return anchors


if __name__ == "__main__":
    with errors.cli_errors(), errors.user_errors(ValueError, FileNotFoundError):
        main(sys.argv[1:])
