"""The run's anchors t_k (raw text-tower outputs, computed once): from --anchors, from the CLIP
text tower (--clip), or from last.pt on --resume; their cosine table is printed."""

import text_prompts
from lib import errors


def make_anchors(args, class_names, log):
    """t_k (K, D), raw text-tower outputs, and the name of their source, computed once: from
    --anchors, else from --clip (random[:NAME] for a seeded random-init tower; the demo falls back
    to one when the CLIP weights are not in the cache). See text_prompts.anchors_for."""
    if args.anchors:
        saved = text_prompts.load_anchors(
            args.anchors, class_names=text_prompts.anchor_names(class_names)
        )
        return saved["anchors"].float(), saved["clip"]
    clip = args.clip
    if (
        args.demo
        and not text_prompts.is_random(clip)
        and not text_prompts.clip_weights_available(clip)
    ):
        clip = f"random:{clip}"
    with errors.user_errors(ValueError, FileNotFoundError, RuntimeError, prefix="--clip: "):
        return text_prompts.anchors_for(class_names, clip, args.seed, log)


def run_anchors(args, class_names, resumed, log):
    """The anchors and their source: last.pt's on --resume (its classes must be the dataset's), else
    made by make_anchors; their cosine table is printed."""
    if resumed is not None and resumed["class_names"] != class_names:
        raise errors.BadInputError(
            f"--resume {args.resume}: checkpoint classes {resumed['class_names']} "
            f"differ from the dataset's {class_names}"
        )
    if resumed is not None:
        anchors, clip_id = resumed["anchors"], resumed["clip"]
    else:
        anchors, clip_id = make_anchors(args, class_names, log)
    table = text_prompts.similarity_table(anchors, text_prompts.anchor_names(class_names))
    log("anchor cosines (text-tower outputs):\n" + table)
    return anchors, clip_id
