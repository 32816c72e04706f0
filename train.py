"""Train KE2NT: one plain loop, no framework.

    python train.py --demo                                   # offline, CPU, synthetic faces
    python train.py --dataset rafdb --data-root data/raf_db  # the paper's RAF-DB run (ResNet-18)
    python train.py --resume runs/rafdb/last.pt              # continue a stopped run exactly

Defaults follow the released code (hangyu94/KE2NT, swint_raf_main.py): SGD with momentum 0.9, lr 2e-3,
weight decay 5e-4, batch 64 with drop_last, 50 epochs, the first epoch at a constant 1e-4, then cosine
annealing. The text anchors t_k are computed once before training, never per step.

Fast path: the images are decoded once into a uint8 tensor at the working size (data.cache_images),
each batch is sliced from a per-epoch permutation and augmented as a batch (data.BatchAugment), both
drawn from torch.Generators whose states go into every checkpoint, so --resume is bit-exact on CPU.
When the cache would not fit in memory the loop streams through a DataLoader with per-sample transforms.
"""
import argparse
import contextlib
import datetime
import io
import json
import math
import os
import random
import time

import torch

import data
import text_prompts
from evaluate import class_metrics, confusion_matrix, predict
from losses import ke2nt_loss
from model import BACKBONES, KE2NT, build_backbone

DATASETS = ["rafdb", "affectnet7", "affectnet8", "ferplus", "ckplus", "list", "folder", "synthetic"]
# --demo: 64 px synthetic faces, ResNet-18 from scratch, a higher lr and no warm-up epoch (README).
DEMO_PRESET = dict(dataset="synthetic", backbone="resnet18", image_size=64, num_train=2800, num_test=700,
                   epochs=12, lr=0.05, warmup_epochs=0, device="cpu", num_workers=2, log_every=20,
                   output=os.path.join("runs", "demo"))
# flags that may differ between a run and its --resume (everything else comes from the checkpoint)
RESUME_OVERRIDES = {"resume", "output", "quiet", "num_workers", "device", "log_every"}


def build_parser():
    p = argparse.ArgumentParser(description="Train KE2NT (defaults: the released code's RAF-DB recipe).")
    a = p.add_argument
    a("--dataset", choices=DATASETS, default="rafdb")
    a("--data-root", default=None, help="dataset folder (see README for each layout)")
    a("--fold", type=int, default=None, help="CK+: the test fold (0-9, subject-independent)")
    a("--include-neutral", action="store_true", help="CK+: add the neutral first frames (8 classes)")
    a("--skip-missing", action="store_true", help="skip listed images that do not exist (their count is printed)")
    a("--crop-face", action="store_true", help="AffectNet: crop each image to the csv's face box")
    a("--list-file", default=None, help="list: 'relative/path label' file (default <root>/<split>_label.txt)")
    a("--classes", default=None, help="list/folder: class order, a dataset name or comma-separated words")
    a("--backbone", choices=sorted(BACKBONES), default="resnet18")
    a("--backbone-weights", default=None, help="pretrained backbone state_dict file (e.g. MS-Celeb-1M)")
    a("--clip", default="ViT-B/16", help="CLIP model name or path for the text anchors")
    a("--anchors", default=None, help="anchors file from text_prompts.save_anchors (overrides --clip)")
    a("--epochs", type=int, default=50)
    a("--batch-size", type=int, default=64)
    a("--lr", type=float, default=2e-3)
    a("--momentum", type=float, default=0.9)
    a("--weight-decay", type=float, default=5e-4)
    a("--warmup-epochs", type=int, default=1, help="epochs at the constant --warmup-lr before cosine")
    a("--warmup-lr", type=float, default=1e-4)
    a("--normalization", choices=["backbone", "imagenet"], default="backbone",
      help="input mean/std: the backbone's (face Swin-T: 0.5/0.5), or ImageNet's as the released script uses")
    a("--image-size", type=int, default=None, help="working size (default: the backbone's, 112 for resnet18)")
    a("--seed", type=int, default=29)
    a("--num-workers", type=int, default=0)
    a("--output", default=None, help="output folder (default runs/<dataset>-<backbone>)")
    a("--resume", default=None, help="last.pt (or its folder) of a run to continue")
    a("--lambda-s", type=float, default=1.0)
    a("--lambda-t", type=float, default=1.0)
    a("--lambda-c", type=float, default=1.0)
    a("--contrast", choices=["all_pairs", "per_sample"], default="all_pairs")
    a("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    a("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    a("--compile", action="store_true", help="torch.compile the model (GPU)")
    a("--sampler", choices=["auto", "random", "balanced"], default="auto",
      help="balanced = class-balanced sampling with replacement (auto: on for AffectNet)")
    a("--cache", choices=["auto", "off"], default="auto", help="off forces the streaming DataLoader")
    a("--val-fraction", type=float, default=0.0, help="carve this fraction of train to select best.pt on")
    a("--num-train", type=int, default=2800, help="synthetic only")
    a("--num-test", type=int, default=700, help="synthetic only")
    a("--eval-batch-size", type=int, default=256)
    a("--log-every", type=int, default=50, help="steps between progress lines")
    a("--quiet", action="store_true")
    a("--demo", action="store_true", help="offline CPU demo on synthetic faces (see README)")
    return p


def get_args(argv=None):
    """Parse flags; apply the demo preset and, with --resume, the checkpoint's own arguments."""
    args = build_parser().parse_args(argv)
    shadow = build_parser()  # the same flags with no defaults: tells which ones were given
    for act in shadow._actions:
        act.default = argparse.SUPPRESS
    given = vars(shadow.parse_args(argv))
    if args.demo and not args.resume:
        for k, v in DEMO_PRESET.items():
            if k not in given:
                setattr(args, k, v)
    if args.resume:
        path = args.resume if not os.path.isdir(args.resume) else os.path.join(args.resume, "last.pt")
        saved = load_checkpoint(path)["args"]
        clash = {k: (v, saved.get(k)) for k, v in given.items()
                 if k not in RESUME_OVERRIDES and k != "demo" and saved.get(k) != v}
        if clash:
            raise SystemExit(f"--resume {path}: the checkpoint was made with different settings: " +
                             ", ".join(f"--{k.replace('_', '-')} {o} (checkpoint: {s})" for k, (o, s) in clash.items()))
        args = argparse.Namespace(**{**saved, **{k: given[k] for k in given if k in RESUME_OVERRIDES}})
        args.resume = path
        if "output" not in given:
            args.output = os.path.dirname(os.path.abspath(path))
    if args.image_size is None:
        args.image_size = BACKBONES[args.backbone]["input_size"] or 112
    if args.output is None:
        args.output = os.path.join("runs", f"{args.dataset}-{args.backbone}")
    return args


def load_checkpoint(path):
    """A KE2NT checkpoint as a dict (weights_only=True: tensors and plain Python values only)."""
    if not os.path.isfile(path):
        raise SystemExit(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("model", "args", "class_names", "anchors") if k not in ckpt]
    if missing:
        raise SystemExit(f"{path} is not a KE2NT checkpoint from train.py (missing keys: {missing})")
    return ckpt


def save_atomic(obj, path):
    """Write obj (a str, or anything torch.save takes) to a temp file in the same folder, fsync, then
    os.replace: a run killed while writing leaves the previous file intact."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        if isinstance(obj, str):
            f.write(obj.encode("utf-8"))
        else:
            torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def lr_factor(epoch, warmup_epochs, warmup_lr, base_lr, epochs):
    """Released schedule as a multiple of base_lr. Epochs < warmup_epochs: the constant warmup_lr; then
    cosine annealing with T_max = epochs counted from the first post-warm-up epoch (released:
    ConstantWarmupScheduler around CosineAnnealingLR(T_max=MAX_EPOCH)), so the last lr stays above 0."""
    if epoch < warmup_epochs:
        return warmup_lr / base_lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))


def resolve_amp(amp, device):
    """The autocast dtype (None = fp32): bf16 on recent GPUs and on CPUs with AVX512-BF16/AMX, else fp16."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None
        except OSError:
            return None
    return None


def make_anchors(args, class_names, say):
    """t_k [K, D] (raw text-tower outputs) and the name of their source, computed once. A dataset
    without a neutral class gets a text-only t_neutral as an extra last row (text_prompts.anchor_names)."""
    class_names = text_prompts.anchor_names(class_names)
    if args.anchors:
        saved = text_prompts.load_anchors(args.anchors, class_names=class_names)
        return saved["anchors"].float(), saved["clip"]
    import clip_text
    if args.demo and not (os.path.isfile(args.clip) or clip_text.cached_model_path(args.clip).exists()):
        say(f"NOTICE: CLIP {args.clip} weights are not in the cache, so the demo's anchors come from a RANDOMLY\n"
            "  initialised text tower of the same size (seeded). Such anchors carry NO language knowledge;\n"
            "  they only give the classes distinct directions. Real runs use the CLIP weights.")
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            encoder = clip_text.TextEncoder(**clip_text.text_config(args.clip)).eval()
        return text_prompts.build_anchors(encoder, class_names).float(), f"random-init {args.clip} (seed {args.seed})"
    encoder = clip_text.load_text_encoder(args.clip)
    return text_prompts.build_anchors(encoder, class_names).float(), args.clip


class CachedBatches:
    """Batches of (augmented float images (B, 3, S, S), labels (B,)) sliced from a uint8 cache.
    Train: a fresh permutation (or class-balanced draw) per epoch from `order_gen`, drop_last;
    augmentation from `aug_gen`. Eval: sequential, normalisation only."""

    def __init__(self, images, labels, batch_size, augment, train, balanced, order_gen=None, aug_gen=None):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.augment, self.train, self.balanced = augment, train, balanced
        self.order_gen, self.aug_gen = order_gen, aug_gen

    def __len__(self):
        n = len(self.labels)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self):
        n, B = len(self.labels), self.batch_size
        if not self.train:
            order = torch.arange(n)
        elif self.balanced:
            weight = 1.0 / torch.bincount(self.labels).double()[self.labels]  # (N,)
            order = torch.multinomial(weight, n, replacement=True, generator=self.order_gen)
        else:
            order = torch.randperm(n, generator=self.order_gen)
        for i in range(len(self)):
            idx = order[i * B:(i + 1) * B]
            x = self.images[idx.to(self.images.device)]  # (B, 3, S, S) uint8
            yield self.augment(x, generator=self.aug_gen), self.labels[idx]


def build_data(args, device, say):
    """Train / val / test batch iterables, the class names and the generators that make them resumable."""
    options = {}
    if args.dataset == "synthetic":
        options = dict(num_train=args.num_train, num_test=args.num_test, seed=args.seed, image_size=args.image_size)
    options.update(data_options(args))
    train_set = data.build_dataset(args.dataset, args.data_root, "train", **options)
    test_set = data.build_dataset(args.dataset, args.data_root, "test", **options)
    class_names = list(train_set.classes)
    S, (mean, std) = args.image_size, normalization(args)
    balanced = args.sampler == "balanced" or (args.sampler == "auto" and args.dataset.startswith("affectnet"))
    gens = {"order": torch.Generator().manual_seed(args.seed), "split": torch.Generator().manual_seed(args.seed + 1)}
    n_train = len(train_set)
    n_val = int(round(args.val_fraction * n_train))
    perm = torch.randperm(n_train, generator=gens["split"])
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    cached = cache_both(train_set, test_set, S, args) if args.cache == "auto" else None
    if args.cache == "auto" and cached is None:
        say("the image cache would not fit in memory: streaming with per-sample transforms instead")
    if cached is not None:
        (train_x, train_y), (test_x, test_y) = cached
        on_device = device.type != "cpu" and _fits_on_device(train_x.numel() + test_x.numel(), device)
        place = device if on_device else torch.device("cpu")
        gens["augment"] = torch.Generator(device=place).manual_seed(args.seed + 2)
        aug_train = data.BatchAugment(S, mean, std, train=True).to(place)
        aug_eval = data.BatchAugment(S, mean, std, train=False).to(place)
        train_x, test_x = train_x.to(place), test_x.to(place)
        def batches(x, y, train):
            return CachedBatches(x, y, args.batch_size if train else args.eval_batch_size,
                                 aug_train if train else aug_eval, train, balanced, gens["order"], gens["augment"])
        train_b = batches(train_x[train_idx.to(place)], train_y[train_idx], True)
        val_b = batches(train_x[val_idx.to(place)], train_y[val_idx], False) if n_val else None
        test_b = batches(test_x, test_y, False)
    else:
        from torch.utils.data import DataLoader, RandomSampler, Subset
        train_set.transform = data.build_transforms(True, S, mean, std)
        test_set.transform = data.build_transforms(False, S, mean, std)
        targets = [train_set.targets[i] for i in train_idx.tolist()]
        sampler = (data.class_balanced_sampler(targets, generator=gens["order"]) if balanced else
                   RandomSampler(range(len(targets)), generator=gens["order"]))
        common = dict(num_workers=args.num_workers, pin_memory=device.type == "cuda")
        train_b = DataLoader(Subset(train_set, train_idx.tolist()), batch_size=args.batch_size, sampler=sampler,
                             drop_last=True, generator=gens["order"], **common)
        val_b = None
        if n_val:
            val_set = data.build_dataset(args.dataset, args.data_root, "train",
                                         transform=data.build_transforms(False, S, mean, std), **options)
            val_b = DataLoader(Subset(val_set, val_idx.tolist()), batch_size=args.eval_batch_size, **common)
        test_b = DataLoader(test_set, batch_size=args.eval_batch_size, **common)
    return train_b, val_b, test_b, class_names, gens


def normalization(args):
    """(mean, std) of the input normalisation: the backbone's own (0.5/0.5 for the arcface-trained face
    Swin-T), or ImageNet's for every backbone as the released training script does (--normalization)."""
    if getattr(args, "normalization", "backbone") == "imagenet":
        return data.IMAGENET_MEAN, data.IMAGENET_STD
    return BACKBONES[args.backbone]["mean"], BACKBONES[args.backbone]["std"]


def cache_both(train_set, test_set, image_size, args):
    """Both splits decoded into uint8 tensors (the sizes are printed first), or None if they would not fit."""
    budget = data.available_memory()
    limit = (lambda share: None if budget is None else int(share * budget))
    with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
        train_c = data.cache_images(train_set, image_size, num_workers=args.num_workers, max_bytes=limit(0.6))
        test_c = train_c and data.cache_images(test_set, image_size, num_workers=args.num_workers, max_bytes=limit(0.3))
    return (train_c, test_c) if train_c is not None and test_c is not None else None


def data_options(args):
    """The dataset-specific build_dataset options given on the command line."""
    options = {}
    if args.fold is not None:
        options["fold"] = args.fold
    if args.include_neutral:
        options["include_neutral"] = True
    if args.list_file:
        options["list_file"] = args.list_file
    if args.classes:
        options["classes"] = args.classes if "," not in args.classes else args.classes.split(",")
    if getattr(args, "skip_missing", False):
        options["skip_missing"] = True
    if getattr(args, "crop_face", False):
        options["crop_face"] = True
    return options


def _fits_on_device(nbytes, device):
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.3 * free


def rng_state(gens):
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "generators": {k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, gens, say):
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    for k, g in gens.items():
        try:
            g.set_state(state["generators"][k])
        except (KeyError, RuntimeError):  # another device or data path than the checkpoint's run
            say(f"note: the '{k}' generator state does not fit this run; the resumed run is not bit-exact")
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def fmt_time(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def main(argv=None):
    args = get_args(argv)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = resolve_amp(args.amp, device)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    os.makedirs(args.output, exist_ok=True)

    train_b, val_b, test_b, class_names, gens = build_data(args, device, say)
    resumed = load_checkpoint(args.resume) if args.resume else None
    if resumed is not None:
        if resumed["class_names"] != class_names:
            raise SystemExit(f"--resume {args.resume}: checkpoint classes {resumed['class_names']} "
                             f"differ from the dataset's {class_names}")
        anchors, clip_id = resumed["anchors"], resumed["clip"]
    else:
        anchors, clip_id = make_anchors(args, class_names, say)
    anchor_names = text_prompts.anchor_names(class_names)  # a text-only "neutral" last if the data has none
    say("anchor cosines (text-tower outputs):\n" + text_prompts.similarity_table(anchors, anchor_names))

    net = KE2NT(build_backbone(args.backbone, weights=args.backbone_weights), anchors,
                text_prompts.neutral_index(anchor_names), num_classes=len(class_names)).to(device)
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, args.warmup_epochs, args.warmup_lr, args.lr, args.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, history, best = 0, [], None
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        set_rng_state(resumed["rng"], gens, say)
        start_epoch, history, best = resumed["epoch"], resumed["history"], resumed["best"]
        say(f"resumed from {args.resume} at epoch {start_epoch}/{args.epochs}")
    step_fn = torch.compile(net) if args.compile else net
    lambdas = (args.lambda_s, args.lambda_t, args.lambda_c)
    say(f"{args.dataset}: {len(class_names)} classes, train batches/epoch {len(train_b)}, "
        f"backbone {args.backbone} at {args.image_size} px, device {device}, "
        f"amp {str(amp_dtype).replace('torch.', '') if amp_dtype else 'off'}, "
        f"anchors from {clip_id}, output {args.output}")

    def evaluate_on(batches):
        preds, labels = predict(step_fn, batches, device, amp_dtype)
        return class_metrics(confusion_matrix(preds, labels, len(class_names)), class_names)

    mean, std = normalization(args)
    meta = dict(backbone=args.backbone, image_size=args.image_size, mean=list(mean), std=list(std), dataset=args.dataset)
    last_good = os.path.join(args.output, "last.pt")
    t_start, steps_done = time.time(), 0
    total_steps = (args.epochs - start_epoch) * len(train_b)
    for epoch in range(start_epoch, args.epochs):
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        sums = torch.zeros(6, dtype=torch.float64, device=device)  # Ls, Lt, Lc, correct, seen, total loss
        one = torch.ones((), device=device)
        t_epoch = time.time()
        for step, (x, y) in enumerate(train_b):
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                f, n, logits = step_fn(x)  # (B, D), (B, D), (B, K)
            loss, terms = ke2nt_loss(f.float(), n.float(), logits.float(), net.anchors, y, net.neutral_index,
                                     lambdas=lambdas, contrast=args.contrast)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                parts = [torch.as_tensor(terms[k], dtype=torch.float32, device=device) for k in ("ls", "lt", "lc")]
                sums += torch.stack(parts + [(logits.argmax(1) == y).float().mean(), one, loss.float()]).double() * len(y)
            steps_done += 1
            if (step + 1) % args.log_every == 0 or step + 1 == len(train_b):
                s = sums.tolist()
                if not all(math.isfinite(v) for v in s):
                    kept = f"{last_good} (epoch {start_epoch if not history else history[-1]['epoch']})" \
                        if os.path.exists(last_good) else "none yet"
                    raise SystemExit(f"stopping: the loss became {'nan' if any(v != v for v in s) else 'inf'} "
                                     f"in epoch {epoch + 1} by step {step + 1} (Ls {s[0] / s[4]:.4g}, Lt "
                                     f"{s[1] / s[4]:.4g}, Lc {s[2] / s[4]:.4g}); last good checkpoint: {kept}")
                if (step + 1) % args.log_every == 0:
                    elapsed = time.time() - t_start
                    say(f"epoch {epoch + 1}/{args.epochs} step {step + 1}/{len(train_b)} | Ls {s[0] / s[4]:.4f} "
                        f"Lt {s[1] / s[4]:.4f} Lc {s[2] / s[4]:.4f} | acc {100 * s[3] / s[4]:.1f}% | lr {lr:.2e} | "
                        f"{s[4] / (time.time() - t_epoch):.0f} img/s | eta "
                        f"{fmt_time(elapsed / steps_done * (total_steps - steps_done))}")
        train_time = time.time() - t_epoch
        scheduler.step()
        s = sums.tolist()
        test = evaluate_on(test_b)
        val = evaluate_on(val_b) if val_b is not None else None
        row = dict(epoch=epoch + 1, ls=s[0] / s[4], lt=s[1] / s[4], lc=s[2] / s[4],
                   train_accuracy=100 * s[3] / s[4], lr=lr, images_per_s=s[4] / train_time,
                   test_accuracy=test["accuracy"], mean_class_accuracy=test["mean_class_accuracy"],
                   epoch_seconds=time.time() - t_epoch)
        if val is not None:
            row["val_accuracy"] = val["accuracy"]
        history.append(row)
        score = val["accuracy"] if val is not None else test["accuracy"]
        if best is None or score > best["score"]:
            best = dict(score=score, epoch=epoch + 1, selected_on="val" if val is not None else "test",
                        test_accuracy=test["accuracy"], mean_class_accuracy=test["mean_class_accuracy"])
            save_atomic(dict(model=net.state_dict(), args=vars(args), class_names=class_names, anchors=anchors,
                             clip=clip_id, meta=meta, epoch=epoch + 1), os.path.join(args.output, "best.pt"))
        save_atomic(dict(model=net.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=scaler.state_dict(), epoch=epoch + 1, rng=rng_state(gens), args=vars(args),
                         anchors=anchors, class_names=class_names, clip=clip_id, meta=meta, history=history,
                         best=best, last_test=test), last_good)
        save_atomic("".join(json.dumps(r) + "\n" for r in history), os.path.join(args.output, "log.jsonl"))
        say(f"epoch {epoch + 1}/{args.epochs} done | Ls {row['ls']:.4f} Lt {row['lt']:.4f} Lc {row['lc']:.4f} | "
            f"train acc {row['train_accuracy']:.1f}% | test acc {test['accuracy']:.2f}% mean class "
            f"{test['mean_class_accuracy']:.2f}%" + (f" | val acc {val['accuracy']:.2f}%" if val else "") +
            f" | {row['images_per_s']:.0f} img/s | {row['epoch_seconds']:.1f} s")

    final = load_checkpoint(last_good)  # the finished state, also when resuming a run that had ended
    last = final["last_test"]
    metrics = dict(test_accuracy=last["accuracy"], mean_class_accuracy=last["mean_class_accuracy"],
                   per_class_accuracy=last["per_class_accuracy"], confusion_matrix=last["confusion_matrix"],
                   class_names=class_names, epochs=args.epochs, last_epoch=final["history"][-1],
                   best_epoch=final["best"]["epoch"], best=dict(final["best"], note=(
                       "selected on the validation split carved from train (--val-fraction)"
                       if final["best"]["selected_on"] == "val" else
                       "selected on the TEST set, as the released code reports: optimistic, not a held-out number")),
                   anchors=final["clip"], train_seconds=sum(r["epoch_seconds"] for r in final["history"]))
    save_atomic(json.dumps(metrics, indent=2) + "\n", os.path.join(args.output, "metrics.json"))
    b = metrics["best"]
    say(f"finished: last epoch test accuracy {metrics['test_accuracy']:.2f}%, mean class accuracy "
        f"{metrics['mean_class_accuracy']:.2f}% (the number to report); best-on-{b['selected_on']} epoch "
        f"{b['epoch']}: test accuracy {b['test_accuracy']:.2f}%")
    print(f"outputs in {os.path.abspath(args.output)}: last.pt best.pt log.jsonl metrics.json", flush=True)
    if args.demo:
        say(f"next: python evaluate.py --checkpoint {os.path.join(args.output, 'last.pt')} --dataset synthetic\n"
            f"      python evaluate.py --checkpoint {os.path.join(args.output, 'last.pt')} --images YOUR_PHOTOS")
    return metrics


if __name__ == "__main__":
    main()
