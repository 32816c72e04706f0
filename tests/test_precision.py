"""Tests of lib/precision.py: the margin rules on injected rates (no timing), forced flags, the CUDA
rule, that a real measurement leaves the model, its grads and the RNG untouched, and that the choice
is record-friendly (json and torch.load(weights_only=True))."""

import contextlib
import io
import json

import pytest
import torch
import torch.nn as nn

from lib import precision
from model import KE2NT, build_backbone


def fake(rates):
    """A `measure` stand-in returning fixed rates and counting its calls."""
    calls = []

    def measure(model, device, batch_size, image_size, **kw):
        calls.append((batch_size, image_size, kw))
        return dict(rates), {}

    measure.calls = calls
    return measure


def choose(rates, margin=0.15, native=True, **kw):
    lines = []
    m = fake(rates)
    c = precision.choose_precision(
        "auto",
        "cpu",
        nn.Linear(2, 2),
        64,
        64,
        say=lines.append,
        margin=margin,
        measure=m,
        native_bf16=lambda: native,
        **kw,
    )
    return c, lines, m


def never(*a, **k):
    raise AssertionError("measure must not be called")


@pytest.mark.parametrize(
    "bf16, amp", [(116.0, "bf16"), (114.0, "off"), (100.0, "off"), (300.0, "bf16")]
)
def test_bf16_needs_more_than_the_margin_over_the_best_fp32(bf16, amp):
    # best fp32 is 100 (fp32 channels-last); bf16 must exceed 1.15 * 100 = 115
    c, lines, m = choose(
        {"fp32": 90.0, "fp32 channels-last": 100.0, "bf16": 50.0, "bf16 channels-last": bf16}
    )
    assert c["amp"] == amp and c["how"] == "measured" and len(m.calls) == 1
    assert c["rates"]["bf16 channels-last"] == bf16
    assert len(lines) == 1 and "->" in lines[0] and "1.15x" in lines[0]


def test_baseline_is_the_fastest_fp32_layout():
    # bf16 channels-last is 1.2x fp32 channels-last but only 1.2/1.1 = 1.09x plain fp32: stays fp32
    c, _, _ = choose({"fp32": 110.0, "fp32 channels-last": 100.0, "bf16 channels-last": 120.0})
    assert c["amp"] == "off"


def test_margin_parameter_is_used():
    rates = {"fp32": 100.0, "fp32 channels-last": 100.0, "bf16 channels-last": 110.0}
    assert choose(rates, margin=0.15)[0]["amp"] == "off"
    assert choose(rates, margin=0.05)[0]["amp"] == "bf16"


@pytest.mark.parametrize("plain, cl", [(121.0, False), (114.0, True), (80.0, True)])
def test_layout_is_channels_last_unless_plain_wins_by_the_margin(plain, cl):
    c, _, _ = choose(
        {"fp32": plain, "fp32 channels-last": 105.0, "bf16": 10.0, "bf16 channels-last": 10.0}
    )
    # plain must exceed 1.15 * 105 = 120.75 to replace channels-last
    assert c["amp"] == "off" and c["channels_last"] is cl


def test_bf16_layout_follows_the_same_rule():
    c, _, _ = choose(
        {"fp32": 50.0, "fp32 channels-last": 50.0, "bf16": 130.0, "bf16 channels-last": 100.0}
    )
    assert (c["amp"], c["channels_last"]) == ("bf16", False)  # 130 > 1.15 * 100
    c, _, _ = choose(
        {"fp32": 50.0, "fp32 channels-last": 50.0, "bf16": 110.0, "bf16 channels-last": 100.0}
    )
    assert (c["amp"], c["channels_last"]) == ("bf16", True)


def test_measure_gets_the_actual_batch_and_image_size():
    _, _, m = choose({"fp32": 1.0}, steps=3, warmup=2, train=False)
    assert m.calls[0][:2] == (64, 64) and m.calls[0][2]["candidates"] == (
        "fp32 channels-last",
        "bf16 channels-last",
    )
    assert (
        m.calls[0][2]["steps"] == 3
        and m.calls[0][2]["warmup"] == 2
        and m.calls[0][2]["train"] is False
    )
    assert m.calls[0][2]["margin"] == 0.15


def test_no_native_bf16_rules_bf16_out_without_timing_it():
    lines = []
    c = precision.choose_precision(
        "auto",
        "cpu",
        nn.Linear(2, 2),
        64,
        64,
        say=lines.append,
        measure=never,
        native_bf16=lambda: False,
    )
    assert (c["amp"], c["channels_last"], c["how"], c["rates"]) == ("off", True, "ruled out", {})
    assert c["ruled_out"] == {"bf16 channels-last": precision.NO_NATIVE_BF16}
    assert len(lines) == 1 and "nothing timed" in lines[0] and "no native bf16" in lines[0]
    # with all four candidates the two fp32 layouts are still compared, the bf16 ones never
    c, _, m = choose(
        {"fp32": 100.0, "fp32 channels-last": 90.0}, native=False, candidates=precision.CANDIDATES
    )
    assert m.calls[0][2]["candidates"] == ("fp32", "fp32 channels-last") and c["how"] == "measured"
    assert set(c["ruled_out"]) == {"bf16", "bf16 channels-last"} and c["amp"] == "off"


def test_auto_asks_the_cpu_flags_by_default(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # an AVX2-only CPU
    c = precision.choose_precision(
        "auto", "cpu", nn.Linear(2, 2), 8, 8, say=lambda s: None, measure=never
    )
    assert c["how"] == "ruled out" and c["amp"] == "off"


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_forced_flags_do_not_measure(amp, device):
    c = precision.choose_precision(amp, device, nn.Linear(2, 2), 8, 8, say=never, measure=never)
    assert (c["amp"], c["how"], c["channels_last"], c["rates"]) == (amp, "forced", True, {})


@pytest.mark.parametrize("native, amp", [(True, "bf16"), (False, "fp16")])
def test_cuda_auto_uses_native_bf16_support(monkeypatch, native, amp):
    seen = []

    def is_bf16_supported(**kw):
        seen.append(kw)
        return native

    def current(device):  # the GPU asked is the one given, not whichever is current
        seen.append(torch.device(device))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", current)
    c = precision.choose_precision(
        "auto", "cuda:1", nn.Linear(2, 2), 8, 8, say=never, measure=never
    )
    assert seen == [torch.device("cuda:1"), {"including_emulation": False}]
    assert (c["amp"], c["how"], c["device"]) == (amp, "cuda", "cuda")
    assert precision.uses_grad_scaler(c) is (amp == "fp16")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="--amp"):
        precision.choose_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="model, batch_size"):
        precision.choose_precision("auto", "cpu", say=never, measure=never)
    with pytest.raises(ValueError, match="candidates"):
        precision.measure_rates(nn.Linear(2, 2), "cpu", 2, 4, candidates=("fp16",))
    with pytest.raises(ValueError, match="'amp'"):
        precision.check_choice({"amp": "bf17", "channels_last": True}, "ckpt.pt")
    with pytest.raises(ValueError, match="ckpt.pt.*'channels_last'"):
        precision.check_choice({"amp": "off", "channels_last": "yes"}, "ckpt.pt")


def test_helpers_map_the_choice_to_torch():
    c = {"amp": "bf16", "channels_last": True}
    assert precision.autocast_dtype(c) is torch.bfloat16
    assert precision.autocast_dtype({"amp": "fp16", "channels_last": True}) is torch.float16
    assert precision.autocast_dtype({"amp": "off", "channels_last": False}) is None
    assert precision.memory_format(c) is torch.channels_last
    assert (
        precision.memory_format({"amp": "off", "channels_last": False}) is torch.contiguous_format
    )
    with precision.autocast(c, torch.device("cpu")):
        assert (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
        )
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype is torch.bfloat16  # autocast really ran the Linear in bf16
    with precision.autocast({"amp": "off", "channels_last": True}, "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_paired_rates_cancel_a_slow_round():
    # round 2 is slowed ten-fold for both (another process's burst); round 3 favours bf16 by chance
    times = {
        "fp32 channels-last": [0.4, 4.0, 0.4],
        "bf16 channels-last": [0.5, 4.4, 0.2],
        "bf16": [],
    }
    rates = precision.paired_rates(times, 64)
    assert rates["fp32 channels-last"] == pytest.approx(64 / 0.4)  # median step 0.4 s
    # same-round ratios 0.4/0.5 = 0.8, 4.0/4.4 = 0.909, 0.4/0.2 = 2.0 -> median 0.909
    assert rates["bf16 channels-last"] == pytest.approx(160 * 4.0 / 4.4)
    assert rates["bf16"] == 0.0
    assert precision.paired_rates({"fp32": []}, 8) == {"fp32": 0.0}


def test_measure_rates_uses_the_timed_rounds_only():
    # scripted clock: two calls per step; warm-up round durations 9 s (ignored), then 0.4/0.5,
    # 0.4/0.5, 4/4.4
    durations = [9.0, 9.0, 0.4, 0.5, 0.4, 0.5, 4.0, 4.4]
    ticks = []
    for d in durations:
        ticks += [100.0, 100.0 + d]
    clock = iter(ticks).__next__
    rates, stopped = precision.measure_rates(
        nn.Sequential(nn.Conv2d(3, 2, 1)),
        "cpu",
        4,
        8,
        candidates=("fp32 channels-last", "bf16 channels-last"),
        steps=3,
        warmup=1,
        margin=0.3,
        clock=clock,
    )
    assert rates["fp32 channels-last"] == pytest.approx(4 / 0.4)
    assert rates["bf16 channels-last"] == pytest.approx(10.0 * 0.8)  # ratios 0.8, 0.8, 0.909
    assert stopped == {}  # 0.5 / 0.4 = 1.25x is within the margin 0.3


def test_a_candidate_slower_by_more_than_the_margin_is_not_timed_further():
    # warm-up 9 s each; timed step 1: fp32 0.4 s, bf16 0.8 s (2x slower) -> bf16 stopped, and with
    # one candidate left the rounds end: 4 steps of the 8 that three timed rounds would take
    durations = [9.0, 9.0, 0.4, 0.8] + [0.4] * 4
    ticks = []
    for d in durations:
        ticks += [100.0, 100.0 + d]
    clock_calls = []

    def clock():
        clock_calls.append(1)
        return ticks[len(clock_calls) - 1]

    rates, stopped = precision.measure_rates(
        nn.Sequential(nn.Conv2d(3, 2, 1)),
        "cpu",
        4,
        8,
        candidates=("fp32 channels-last", "bf16 channels-last"),
        steps=3,
        warmup=1,
        margin=0.15,
        clock=clock,
    )
    assert len(clock_calls) == 8  # two clock reads per step
    assert rates == pytest.approx({"fp32 channels-last": 10.0, "bf16 channels-last": 5.0})
    assert list(stopped) == ["bf16 channels-last"] and "2.00x" in stopped["bf16 channels-last"]
    assert precision.decide(rates) == ("off", True)


def test_a_stopped_candidate_is_named_in_the_choice_and_its_line():
    def measure(model, device, batch_size, image_size, **kw):
        return {"fp32 channels-last": 100.0, "bf16 channels-last": 40.0}, {
            "bf16 channels-last": "2.50x slower"
        }

    lines = []
    c = precision.choose_precision(
        "auto",
        "cpu",
        nn.Linear(2, 2),
        8,
        8,
        say=lines.append,
        measure=measure,
        native_bf16=lambda: True,
    )
    assert c["ruled_out"] == {"bf16 channels-last": "2.50x slower"} and c["amp"] == "off"
    assert "bf16 channels-last: 2.50x slower" in lines[0] and "->" in lines[0]


class Tiny(nn.Module):
    """Conv-BN-Dropout net returning a tuple, like KE2NT; its dropout draws from the global RNG."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        f = self.body(x)  # (B, 8)
        return f, self.head(f)  # (B, 8), (B, 3)


def test_measurement_leaves_model_grads_and_rng_untouched():
    torch.manual_seed(0)
    net = Tiny().train()
    net(torch.randn(4, 3, 16, 16))[
        1
    ].sum().backward()  # give it grads and non-default BN statistics
    state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    # sanity: a training forward of this net does advance the RNG and the BN buffers
    probe = Tiny().train()
    probe(torch.randn(2, 3, 16, 16))
    assert (
        not torch.equal(torch.get_rng_state(), rng)
        and probe.body[1].num_batches_tracked.item() == 1
    )
    torch.set_rng_state(rng)

    lines = []
    # both layouts: two model copies
    c = precision.choose_precision(
        "auto",
        "cpu",
        net,
        4,
        16,
        say=lines.append,
        steps=1,
        warmup=1,
        candidates=precision.CANDIDATES,
        margin=100.0,  # none stopped early
        native_bf16=lambda: True,
    )
    assert torch.equal(torch.get_rng_state(), rng)
    assert net.training and net.state_dict().keys() == state.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads, strict=True))
    assert net.body[0].weight.is_contiguous()  # the real model's layout was not converted
    assert set(c["rates"]) == set(precision.CANDIDATES) and all(r > 0 for r in c["rates"].values())
    assert len(lines) == 1 and lines[0].startswith("precision: ")


def test_eval_mode_measurement_on_ke2nt():
    net = KE2NT(build_backbone("resnet18"), torch.randn(4, 512), 3, num_classes=3).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rates, _ = precision.measure_rates(
        net, "cpu", 2, 32, candidates=("fp32", "bf16 channels-last"), steps=1, warmup=0, train=False
    )
    assert set(rates) == {"fp32", "bf16 channels-last"} and all(r > 0 for r in rates.values())
    assert not net.training and all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


class NoBf16(nn.Module):
    """A model that fails under autocast, as an op without a bf16 kernel would."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no bf16 kernel")
        return self.lin(x.mean((2, 3)))  # (B, 2)


def test_a_failing_candidate_gets_rate_zero_and_loses():
    c = precision.choose_precision(
        "auto",
        "cpu",
        NoBf16(),
        2,
        4,
        say=lambda s: None,
        steps=1,
        warmup=0,
        native_bf16=lambda: True,
    )
    assert (
        set(c["rates"])
        == set(precision.DEFAULT_CANDIDATES)
        == {"fp32 channels-last", "bf16 channels-last"}
    )
    assert c["rates"]["bf16 channels-last"] == 0.0
    assert c["rates"]["fp32 channels-last"] > 0 and (c["amp"], c["channels_last"]) == ("off", True)


def test_choice_survives_json_and_weights_only_load():
    c, _, _ = choose(
        {"fp32": 70.5, "fp32 channels-last": 75.0, "bf16": 52.0, "bf16 channels-last": 55.0}
    )
    assert set(c) == set(precision.KEYS)
    assert json.loads(json.dumps(c)) == c
    buf = io.BytesIO()
    torch.save({"precision": c, "model": {"w": torch.zeros(2)}}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["precision"]
    assert loaded == c and precision.check_choice(loaded) is loaded
    assert precision.describe(loaded) == "fp32 channels-last"
