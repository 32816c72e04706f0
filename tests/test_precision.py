"""lib/device.py: --amp auto on a CPU takes bf16 only when a few timed steps show it more than 15%
faster, never where torch reports no native bf16; forced choices are kept; the timing leaves the
model as it was; --device spellings resolve to one device."""

import pytest
import torch

from lib import device as dev
from lib import errors

CPU = torch.device("cpu")


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_a_forced_choice_is_kept_without_timing(amp, monkeypatch):
    monkeypatch.setattr(dev, "_rates", lambda *a, **k: pytest.fail("a forced choice times nothing"))
    assert dev.choose_precision(amp, CPU) == dict(amp=amp, how="forced", rates={}, device="cpu")


def test_no_native_bf16_rules_it_out_without_timing(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(dev, "_rates", lambda *a, **k: pytest.fail("bf16 was ruled out"))
    choice = dev.choose_precision("auto", CPU, small_net())
    assert choice["amp"] == "off" and choice["how"] == "no native bf16 here"


@pytest.mark.parametrize(
    "rates, amp",
    [
        ({"off": 100.0, "bf16": 116.0}, "bf16"),  # more than 15% faster
        ({"off": 100.0, "bf16": 114.0}, "off"),  # a near-tie stays fp32
        ({"off": 100.0, "bf16": 60.0}, "off"),  # slower (a Xeon without AMX)
    ],
)
def test_bf16_is_taken_only_when_measured_faster_by_the_margin(rates, amp, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(dev, "_rates", lambda *a, **k: rates)
    choice = dev.choose_precision("auto", CPU, small_net())
    assert choice == dict(amp=amp, how="measured", rates=rates, device="cpu")


def test_timing_measures_both_and_leaves_the_model_unchanged():
    net = small_net()
    net(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rates = dev._rates(net, batch_size=4, image_size=8, train=True, rounds=1)
    assert set(rates) == {"off", "bf16"} and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_autocast_follows_the_choice():
    x = torch.randn(2, 4)
    lin = torch.nn.Linear(4, 4)
    with dev.autocast(dict(amp="bf16"), CPU):
        assert lin(x).dtype == torch.bfloat16
    with dev.autocast(dict(amp="off"), CPU):
        assert lin(x).dtype == torch.float32


def test_device_spellings_resolve_to_one_device():
    assert dev.resolve_device("cpu") == dev.resolve_device("cpu:0") == torch.device("cpu")
    with pytest.raises(errors.BadInputError, match="--device 'gpu0' is not a device"):
        dev.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(errors.BadInputError, match="0 CUDA device"):
            dev.resolve_device("cuda:0")
