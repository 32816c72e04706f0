"""Where the run computes: the device each process drives (resolve_device), its precision
(choose_precision, autocast) and its place in the run (process_group).

On CUDA `--amp auto` is bf16 where the GPU has it natively, else fp16 with a GradScaler. On a CPU no
flag tells whether bf16 pays (slower on a Xeon with avx512_bf16 but no AMX, 1.4-1.5x faster with
AMX or on an AMD EPYC), so auto times a few steps of the model in each and takes bf16 only when it
is more than 15% faster; where torch reports no native bf16 (emulated, 9x slower) nothing is timed.
Checkpoints keep the choice; --resume and evaluate.py reuse it.
"""

import contextlib
import copy
import dataclasses
import os
import platform
import time

import torch

from lib.errors import BadInputError

MARGIN = 0.15  # bf16 must beat fp32 by this much on a CPU: a near-tie must not flip between runs


def resolve_device(spec=None, local_rank=None):
    """The torch.device this process drives: --device as written (None: cuda where there is a GPU,
    else cpu), cuda:LOCAL_RANK under torchrun. The index is always resolved ('cuda' is the current
    GPU, 'cpu:0' is 'cpu'), so the device equals the one its tensors report, and a GPU becomes the
    current one, so that torch's queries without a device argument ask this GPU."""
    try:
        device = torch.device(spec or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise BadInputError(
            f"--device {spec!r} is not a device: write cpu, cuda, cuda:1 or mps"
        ) from None
    if device.type != "cuda":
        return torch.device("cpu") if device.type == "cpu" else torch.device(device.type, 0)
    count = torch.cuda.device_count()
    index = local_rank if local_rank is not None else device.index
    if index is None and count:
        index = torch.cuda.current_device()
    if index is None or index >= count:
        where = f"LOCAL_RANK {local_rank}" if local_rank is not None else f"--device {spec}"
        raise BadInputError(f"{where}: {count} CUDA device(s) visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def device_name(device):
    """The GPU's name, or the CPU's model name (/proc/cpuinfo), for the run's record."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or device.type


def autocast(choice, device):
    """torch.autocast for a choose_precision choice (the memory layout is always channels-last)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice["amp"])
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def describe(choice):
    rates = ", ".join(f"{k} {v:.0f} img/s" for k, v in choice.get("rates", {}).items())
    return f"{choice['amp']} ({choice['how']}{': ' + rates if rates else ''})"


def choose_precision(amp, device, model=None, batch_size=64, image_size=112, train=True):
    """The choice for `--amp amp` on `device` (see the module docstring): {"amp": "bf16" | "fp16" |
    "off", "how", "rates", "device"}; on a CPU `auto` times `model` on random (batch_size, 3,
    image_size, image_size) batches."""
    choice = dict(amp=amp, how="forced", rates={}, device=device.type)
    if amp != "auto":
        return choice
    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return dict(choice, amp="bf16" if native else "fp16", how="cuda")
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return dict(choice, amp="off", how="no native bf16 here")
    rates = _rates(model, batch_size, image_size, train)
    faster = rates["bf16"] > (1 + MARGIN) * rates["off"]
    return dict(choice, amp="bf16" if faster else "off", how="measured", rates=rates)


def _rates(model, batch_size, image_size, train, rounds=3):
    """Images per second of a copy of `model` in fp32 and in bf16 autocast: after a warm-up step
    each, `rounds` alternating timed steps, the fastest of each kept (the least disturbed)."""
    net = copy.deepcopy(model).cpu().to(memory_format=torch.channels_last).train(train)
    x = torch.randn(batch_size, 3, image_size, image_size).contiguous(
        memory_format=torch.channels_last
    )
    best = {"off": float("inf"), "bf16": float("inf")}
    for r in range(rounds + 1):
        for amp in best:
            started = time.perf_counter()
            with torch.set_grad_enabled(train), autocast(dict(amp=amp), torch.device("cpu")):
                out = net(x)
            if train:
                sum(o.float().sum() for o in (out if isinstance(out, tuple) else [out])).backward()
            if r:  # round 0 warms up
                best[amp] = min(best[amp], time.perf_counter() - started)
    return {amp: batch_size / seconds for amp, seconds in best.items()}


@dataclasses.dataclass
class OneProcess:
    """A run of one process: the interface of lib/distributed.py's Distributed (torchrun's), where
    every sum over the processes is this process's own, and nothing is shared or wrapped."""

    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    rank, world, local_rank, local_world, backend = 0, 1, 0, 1, None
    enabled, is_main = False, True

    def global_sum(self, x):  # losses.py's reduction hook; like sum_ and wrap, x itself
        return x

    sum_ = wrap = global_sum

    def all_agree(self, flag):
        return bool(flag)

    def from_main(self, make):
        return make()

    def share_buffers(self, module):
        pass

    def sync_bn(self, module, on):
        return module


def default_workers(device, local_world=1):
    """Image-decoding processes when --num-workers is not given: on a GPU the cores of this machine
    shared among its torchrun processes (a GPU waits for one decoding process); on the CPU none
    (no core to spare)."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores // local_world)


def process_group(device=None, batch_size=1, sync_bn=False):
    """A context manager giving this process's place in the run: OneProcess, or under torchrun
    (WORLD_SIZE > 1) a lib/distributed.py Distributed, its process group started, and closed on the
    way out. device: --device as written (resolve_device; cuda:LOCAL_RANK under torchrun);
    --batch-size, the global batch, and --sync-bn are checked against the processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return contextlib.nullcontext(OneProcess(resolve_device(device)))
    from lib import distributed  # torchrun's code: loaded only when torchrun started the process

    here = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    return distributed.process_group(here, device, batch_size, sync_bn)
