"""The one home of the precision and memory-layout choice for training and evaluation.

CPU flags cannot tell whether bf16 autocast is faster than fp32 on a CPU (an Intel Xeon with
AVX512-BF16 but no AMX runs a ResNet-18 step slower in bf16; an AMD EPYC runs it about twice as
fast), so `--amp auto` on a CPU measures: a few forward+backward steps of a copy of the actual model
at the actual batch and image size, in each candidate (rates in images/s)

    fp32 channels-last | bf16 channels-last                (the default candidates)
    fp32 | fp32 channels-last | bf16 | bf16 channels-last  (CANDIDATES: all that can be measured)

and takes a lower precision only when it beats the best fp32 rate by more than a margin (15%):

    bf16  iff  rate(bf16, its layout) > (1 + margin) * max(rate(fp32), rate(fp32 channels-last))

The layout inside the chosen precision is channels-last (the project's default) unless the plain
layout was measured too and beats it by more than the same margin. The margins keep a near-tie from
flipping between two fresh runs. By default only channels-last is measured: on the CPUs measured so
far it was the faster layout or a near-tie (within run-to-run noise), and a layout measured on a
busy machine flipped between fresh runs; measuring two candidates instead of four also halves the
cost. On CUDA `auto` is bf16 where the GPU supports it natively, else fp16 (with a GradScaler); no
measurement. `bf16`, `fp16`, `off` force a choice.

Two things shorten the measurement. CPU flags may rule bf16 out, never in: where torch reports no
native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False, e.g. an AVX2-only CPU, where
bf16 is emulated and about 9x slower), the bf16 candidates are not timed at all, and with a single
candidate left nothing is measured. And a candidate whose timed step is slower than the round's
fastest by more than the margin is not timed further: it cannot win (the rule above needs more than
the margin), and when one candidate is left the measurement stops.

The choice is a plain dict (str, float, bool, dict) that fits both json.dumps and a checkpoint
loaded with torch.load(weights_only=True):

    {"amp": "bf16" | "fp16" | "off", "channels_last": bool,
     "how": "measured" | "ruled out" | "forced" | "cuda" | "default",
     "rates": {candidate: images/s} (empty unless measured), "ruled_out": {candidate: why not timed
     or why timing stopped}, "seconds": float, "margin": float, "device": "cpu",
     "cpu": "<CPU model name>"}
"""

import copy
import platform
import statistics
import time

import torch

CANDIDATES = ("fp32", "fp32 channels-last", "bf16", "bf16 channels-last")
DEFAULT_CANDIDATES = ("fp32 channels-last", "bf16 channels-last")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
KEYS = ("amp", "channels_last", "how", "rates", "ruled_out", "seconds", "margin", "device", "cpu")
NO_NATIVE_BF16 = (
    "no native bf16 on this CPU (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False)"
)


def cpu_name():
    """The CPU's model name: /proc/cpuinfo 'model name' on Linux, else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device):
    """The device in words: the GPU's name, or the CPU's model name."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cpu_has_native_bf16():
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); False where it would
    emulate it."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported()) if supported is not None else False


def autocast_dtype(choice):
    """The autocast dtype of a choice: torch.bfloat16, torch.float16, or None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[check_choice(choice)["amp"]]


def autocast(choice, device):
    """torch.autocast for `device` in the choice's dtype; disabled (plain fp32) when amp is
    'off'."""
    dtype = autocast_dtype(choice)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def memory_format(choice):
    """torch.channels_last or torch.contiguous_format, for model.to(...) and x.contiguous(...)."""
    return torch.channels_last if check_choice(choice)["channels_last"] else torch.contiguous_format


def uses_grad_scaler(choice):
    """True for fp16, whose small gradients underflow without torch.amp.GradScaler."""
    return check_choice(choice)["amp"] == "fp16"


def check_choice(choice, source="precision choice"):
    """The choice itself if it is a well-formed precision dict; else ValueError naming `source` and
    the key."""
    if not isinstance(choice, dict):
        raise ValueError(f"{source}: expected a dict with keys {KEYS}, got {type(choice).__name__}")
    if choice.get("amp") not in ("bf16", "fp16", "off"):
        raise ValueError(
            f"{source}: key 'amp' must be 'bf16', 'fp16' or 'off', got {choice.get('amp')!r}"
        )
    if not isinstance(choice.get("channels_last"), bool):
        raise ValueError(
            f"{source}: key 'channels_last' must be a bool, got {choice.get('channels_last')!r}"
        )
    return choice


def describe(choice):
    """Short name of a choice, e.g. 'bf16 channels-last' or 'fp32'."""
    name = "fp32" if choice["amp"] == "off" else choice["amp"]
    return name + (" channels-last" if choice["channels_last"] else "")


def _loss_of_outputs(out):
    """Default timing loss: sum over the model's outputs (tensors, or a tuple of them) of
    mean(output.float())."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(o.float().mean() for o in outs if torch.is_tensor(o) and o.is_floating_point())


def measure_rates(
    model,
    device,
    batch_size,
    image_size,
    candidates=CANDIDATES,
    steps=3,
    warmup=1,
    train=True,
    loss_fn=None,
    margin=0.15,
    clock=time.perf_counter,
):
    """(rates, stopped): images/s of each candidate, and {candidate: why its timing stopped early}.
    `warmup` untimed then `steps` timed rounds, one step of each candidate per round, back to back.
    A step is forward + backward of loss_fn(model(x)) in train mode (train=True), or a no-grad
    forward in eval mode. Rates (see paired_rates) compare the steps of one round, so a burst of
    load from other processes that slows a whole round cancels out. After each timed round a
    candidate slower than the round's fastest by more than `margin` is not timed further (its rate
    comes from the rounds it ran), and the rounds end when one candidate is left. Runs on deep
    copies of the model (one per layout) under torch.random.fork_rng: the model, its buffers, its
    grads and the RNG states are left as they were. A candidate that raises RuntimeError gets
    0.0."""
    device = torch.device(device)
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise ValueError(
            f"measure_rates: candidates must be some of {CANDIDATES}, got {tuple(candidates)}"
        )
    loss_fn = loss_fn or _loss_of_outputs
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)  # (B, 3, S, S)
    copies = {}
    for name in candidates:
        cl = name.endswith("channels-last")
        if cl not in copies:
            fmt = torch.channels_last if cl else torch.contiguous_format
            net = copy.deepcopy(model).to(device).to(memory_format=fmt).train(train)
            net.zero_grad(set_to_none=True)
            copies[cl] = (net, x.contiguous(memory_format=fmt))
    times = {name: [] for name in candidates}
    failed, stopped = set(), {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        for r in range(warmup + steps):
            active = [n for n in candidates if n not in failed and n not in stopped]
            if r > warmup and len(active) < 2:
                break  # nothing left to compare
            for name in active:
                net, xi = copies[name.endswith("channels-last")]
                dtype = torch.bfloat16 if name.startswith("bf16") else None
                t0 = clock()
                try:
                    _one_step(net, xi, device, dtype, train, loss_fn)
                    sync()
                except RuntimeError:
                    failed.add(name)
                    continue
                seconds = clock() - t0
                if r >= warmup:
                    times[name].append(seconds)
            if r >= warmup:
                stopped.update(_too_slow(times, active, r - warmup, margin))
    return paired_rates(
        {n: ([] if n in failed else t) for n, t in times.items()}, batch_size
    ), stopped


def _too_slow(times, active, timed_round, margin):
    """{candidate: why}: the candidates of this timed round slower than its fastest by more than
    margin."""
    this_round = {n: times[n][timed_round] for n in active if len(times[n]) > timed_round}
    if len(this_round) < 2:
        return {}
    fastest = min(this_round, key=this_round.get)
    best = this_round[fastest]
    return {
        n: (
            f"{t / best:.2f}x the step time of {fastest} on timed step {timed_round + 1} "
            f"(> {1 + margin:.2f}x): not timed further"
        )
        for n, t in this_round.items()
        if t > (1 + margin) * best
    }


def paired_rates(times, batch_size):
    """Images/s from step seconds times[candidate][round] (an empty list: the candidate failed,
    0.0). The first candidate c0 with times: rate(c0) = batch_size / median_r t(c0, r); any other c:
    rate(c) = rate(c0) * median_r [t(c0, r) / t(c, r)], the median of same-round speed ratios, so a
    slow-down that hits one round (both steps) cancels and one hitting a single step is outvoted."""
    ok = [n for n, t in times.items() if t]
    rates = dict.fromkeys(times, 0.0)
    if not ok:
        return rates
    ref = times[ok[0]]
    rates[ok[0]] = batch_size / statistics.median(ref)
    for n in ok[1:]:  # a candidate stopped early ran fewer rounds: the rounds both ran count
        rates[n] = rates[ok[0]] * statistics.median(
            a / b for a, b in zip(ref, times[n], strict=False)
        )
    return rates


def _one_step(net, x, device, dtype, train, loss_fn):
    """One timed step: forward (+ backward when training) under autocast(dtype); grads dropped
    after."""
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        if not train:
            with torch.no_grad():
                net(x)
            return
        loss = loss_fn(net(x))
    loss.backward()
    for p in net.parameters():
        p.grad = None


def decide(rates, margin=0.15):
    """(amp, channels_last) from measured rates by the margin rules of the module docstring. Layout
    inside a precision: channels-last unless plain beats it by > margin (or it was not measured)."""

    def layout(prefix):
        cl, plain = rates.get(prefix + " channels-last", 0.0), rates.get(prefix, 0.0)
        return (True, cl) if cl > 0 and not plain > (1 + margin) * cl else (False, plain)

    best_fp32 = max(rates.get("fp32", 0.0), rates.get("fp32 channels-last", 0.0))
    bf16_cl, bf16_rate = layout("bf16")
    if bf16_rate > (1 + margin) * best_fp32:
        return "bf16", bf16_cl
    fp32_cl, _ = layout("fp32")
    return "off", fp32_cl if best_fp32 > 0 else True


def _summary(choice):
    """The one printed line: rates, decision, the margin rule and what was not timed, e.g.
    'precision: fp32 channels-last 75, bf16 channels-last 55 img/s -> fp32 channels-last (best bf16
    0.73x best fp32, bf16 needs > 1.15x; bf16 channels-last stopped after 1 step, 1.36x slower;
    measured in 1.9 s)' or 'precision: fp32 channels-last, nothing timed (bf16 channels-last ruled
    out: no native bf16 ...)'."""
    r, ruled_out = choice["rates"], choice.get("ruled_out", {})
    notes = [f"{name}: {why}" for name, why in ruled_out.items()]
    if not r:
        return f"precision: {describe(choice)}, nothing timed ({'; '.join(notes)})"
    rates = ", ".join(f"{k} {v:.0f}" for k, v in r.items())
    fp32 = max(r.get("fp32", 0.0), r.get("fp32 channels-last", 0.0))
    bf16 = max(r.get("bf16", 0.0), r.get("bf16 channels-last", 0.0))
    ratio = f"best bf16 {bf16 / fp32:.2f}x best fp32, " if fp32 > 0 and bf16 > 0 else ""
    rule = f"{ratio}bf16 needs > {1 + choice['margin']:.2f}x"
    extra = "".join(f"; {note}" for note in notes)
    return (
        f"precision: {rates} img/s -> {describe(choice)} ({rule}{extra}; "
        f"measured in {choice['seconds']:.1f} s)"
    )


def choose_precision(
    amp,
    device,
    model=None,
    batch_size=None,
    image_size=None,
    say=print,
    margin=0.15,
    steps=3,
    warmup=1,
    train=True,
    loss_fn=None,
    candidates=DEFAULT_CANDIDATES,
    measure=measure_rates,
    native_bf16=None,
):
    """The precision choice dict for `--amp amp` on `device` (see the module docstring). amp 'bf16'
    | 'fp16' | 'off': forced, channels-last. 'auto': CUDA -> bf16 if
    torch.cuda.is_bf16_supported(including_emulation=False) else fp16; CPU -> bf16 ruled out where
    native_bf16() (default cpu_has_native_bf16) is False, the rest measured on `model` at
    (batch_size, 3, image_size, image_size) with measure(model, device, batch_size, image_size,
    candidates=, steps=, warmup=, train=, loss_fn=, margin=) -> (rates, stopped), one line printed
    through `say`; other devices -> fp32. Cost on the CPU: at most (warmup + steps) *
    len(candidates) steps (8 by default), none with one candidate left."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    device = torch.device(device)
    choice = dict(
        amp="off",
        channels_last=True,
        how="forced",
        rates={},
        ruled_out={},
        seconds=0.0,
        margin=float(margin),
        device=device.type,
        cpu=cpu_name(),
    )
    if amp != "auto":
        choice["amp"] = amp
        return choice
    if device.type == "cuda":
        with torch.cuda.device(device):  # the question is asked of the current GPU: this one
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        choice.update(amp="bf16" if native else "fp16", how="cuda")
        return choice
    if device.type != "cpu":
        choice["how"] = "default"
        return choice
    if model is None or batch_size is None or image_size is None:
        raise ValueError(
            "choose_precision: --amp auto on the CPU measures, so it needs model, batch_size "
            "and image_size"
        )
    t0 = time.perf_counter()
    if not (
        native_bf16 or cpu_has_native_bf16
    )():  # flags rule bf16 out; only a measurement rules it in
        choice["ruled_out"] = {c: NO_NATIVE_BF16 for c in candidates if c.startswith("bf16")}
    left = tuple(c for c in candidates if c not in choice["ruled_out"])
    if len(left) < 2:  # nothing to compare: the one candidate left (fp32 channels-last by default)
        only = left[0] if left else "fp32 channels-last"
        choice.update(amp="off", channels_last=only.endswith("channels-last"), how="ruled out")
        say(_summary(choice))
        return choice
    rates, stopped = measure(
        model,
        device,
        batch_size,
        image_size,
        candidates=left,
        steps=steps,
        warmup=warmup,
        train=train,
        loss_fn=loss_fn,
        margin=margin,
    )
    amp_name, channels_last = decide(rates, margin)
    choice["ruled_out"].update(stopped)
    choice.update(
        amp=amp_name,
        channels_last=channels_last,
        how="measured",
        seconds=time.perf_counter() - t0,
        rates={k: float(v) for k, v in rates.items()},
    )
    say(_summary(choice))
    return choice
