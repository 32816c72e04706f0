"""Where the run computes: the device each process drives, its precision, and torchrun's processes.

resolve_device     --device as written -> the one torch.device this process drives, index resolved
choose_precision   --amp -> {"amp": "bf16" | "fp16" | "off", "how": ..., "rates": ..., ...}
autocast           torch.autocast for such a choice (the memory layout is always channels-last)
process_group      torchrun's environment -> this process's Distributed (a no-op for one process)

On CUDA `--amp auto` is bf16 where the GPU has it natively, else fp16 with a GradScaler. On a CPU no
flag tells whether bf16 pays (slower on a Xeon with avx512_bf16 but no AMX, 1.4-1.5x faster with
AMX or on an AMD EPYC), so auto times a few steps of the model in each and takes bf16 only when it
is more than 15% faster; where torch reports no native bf16 (emulated, 9x slower) nothing is timed.
Checkpoints keep the choice; --resume and evaluate.py reuse it.
"""

import contextlib
import copy
import dataclasses
import datetime
import os
import platform
import time

import torch
import torch.distributed as dist

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
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice["amp"])
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def describe(choice):
    rates = ", ".join(f"{k} {v:.0f} img/s" for k, v in choice.get("rates", {}).items())
    return f"{choice['amp']} ({choice['how']}{': ' + rates if rates else ''})"


def choose_precision(amp, device, model=None, batch_size=64, image_size=112, train=True):
    """The choice for `--amp amp` on `device` (see the module docstring); on a CPU `auto` times
    `model` on random (batch_size, 3, image_size, image_size) batches."""
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


# ---------------------------------------------------------------- torchrun's processes
# torchrun starts one process per device and tells each its place (RANK, WORLD_SIZE, LOCAL_RANK);
# without them a run is one process and everything here is a no-op. Equal to one process on the
# same global batch: the objective (losses.py's means over the global batch through GlobalSum),
# the sample order (each process takes its rows of every global batch), the reports (evaluation
# sharded by whole batches, confusion matrices summed). Not equal: augmentation (drawn per
# process), BatchNorm (each process's images unless --sync-bn).


class GlobalSum(torch.autograd.Function):
    """y = sum over the processes of x, on every process. Each process's loss is then a function of
    every process's x, so dL/dx sums the gradients of all the processes' losses: the backward is
    an all-reduce too (what torch.distributed.nn.functional.all_reduce, now deprecated, did)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


@dataclasses.dataclass
class Distributed:
    """This process's place in the run: rank r of world W, its device and the backend."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    local_world: int = 1  # torchrun's processes on this machine: they share its memory and cores

    @property
    def enabled(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0

    def global_sum(self, x):
        """sum over every process of x (any shape), differentiable: the backward all-reduces the
        gradient (GlobalSum). The reduction hook of losses.py."""
        return GlobalSum.apply(x) if self.enabled else x

    def sum_(self, x):
        """In place: x becomes the sum of x over every process (no gradient); returns x."""
        if self.enabled:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def all_agree(self, flag):
        """True on every process when `flag` is True on every process (one all-reduce)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def from_main(self, make):
        """make() run on process 0 only, its result (any picklable object) handed to every
        process; process 0 alone prints and reads what make needs."""
        if not self.enabled:
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def share_buffers(self, module):
        """Every process takes process 0's buffers (BatchNorm statistics), the ones its checkpoint
        holds, before an evaluation."""
        if self.enabled:
            for b in module.buffers():
                dist.broadcast(b.data, src=0)

    def sync_bn(self, module, on):
        """With on (--sync-bn) under torchrun: module's BatchNorm layers become SyncBatchNorm (same
        parameters and buffers, so the optimizer and checkpoints are unchanged)."""
        if not (on and self.enabled):
            return module
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def wrap(self, model):
        """The training module: DistributedDataParallel around `model` (process 0's parameters and
        buffers broadcast on construction); `model` itself when one process."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _comm_device(self):
        return self.device if self.backend == "nccl" else torch.device("cpu")


def default_workers(device, local_world=1):
    """Image-decoding processes when --num-workers is not given: on a GPU the cores of this machine
    shared among its torchrun processes (a GPU waits for one decoding process); on the CPU none
    (no core to spare)."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores // local_world)


@contextlib.contextmanager
def process_group(device=None, batch_size=1, sync_bn=False):
    """This process's Distributed: from torchrun's environment (the process group started, NCCL on
    CUDA, gloo on the CPU; closed on the way out), or one process without it. device: --device as
    written (resolve_device); --batch-size (the global batch) and --sync-bn are checked against the
    world. On processes other than 0 stdout goes to os.devnull, so every line is printed once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Distributed(device=resolve_device(device))
        return
    if batch_size % world:
        raise BadInputError(f"--batch-size {batch_size}: not a multiple of {world} processes")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = resolve_device(device, local_rank)
    if here.type not in ("cuda", "cpu"):
        raise BadInputError(f"--device {device}: torchrun runs on cuda (NCCL) or cpu (gloo)")
    if sync_bn and here.type != "cuda":
        raise BadInputError("--sync-bn needs CUDA devices (SyncBatchNorm); drop it on the CPU")
    backend = "nccl" if here.type == "cuda" else "gloo"
    options = dict(device_id=here) if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **options)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    quiet = open(os.devnull, "w") if rank else None  # noqa: SIM115 (closed below)
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield Distributed(rank, world, local_rank, backend, here, local_world)
    finally:
        if quiet:
            quiet.close()
        dist.destroy_process_group()
