"""torchrun's processes, loaded by lib/device.py's process_group only under torchrun: process r of W
drives cuda:LOCAL_RANK through NCCL, or the CPU through gloo. Equal to one process on the same
global batch: the objective (means over the global batch through GlobalSum), the sample order, the
reports; not equal: augmentation (drawn per process), BatchNorm (each process's images unless
--sync-bn)."""

import contextlib
import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from lib.errors import BadInputError


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
    """This process's place in the run: rank r of world W, its device and the backend (the
    interface of lib/device.py's OneProcess)."""

    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device
    local_world: int = 1  # torchrun's processes on this machine: they share its memory and cores
    enabled = True

    @property
    def is_main(self):
        return self.rank == 0

    def global_sum(self, x):
        """sum over every process of x (any shape), differentiable: the backward all-reduces the
        gradient (GlobalSum). The reduction hook of losses.py."""
        return GlobalSum.apply(x)

    def sum_(self, x):
        """In place: x becomes the sum of x over every process (no gradient); returns x."""
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def all_agree(self, flag):
        """True on every process when `flag` is True on every process (one all-reduce)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def from_main(self, make):
        """make() run on process 0 only, its result (any picklable object) handed to every
        process; process 0 alone prints and reads what make needs."""
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def share_buffers(self, module):
        """Every process takes process 0's buffers (BatchNorm statistics), the ones its checkpoint
        holds, before an evaluation."""
        for b in module.buffers():
            dist.broadcast(b.data, src=0)

    def sync_bn(self, module, on):
        """With on (--sync-bn) under torchrun: module's BatchNorm layers become SyncBatchNorm (same
        parameters and buffers, so the optimizer and checkpoints are unchanged)."""
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if on else module

    def wrap(self, model):
        """The training module: DistributedDataParallel around `model` (process 0's parameters and
        buffers broadcast on construction)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _comm_device(self):
        return self.device if self.backend == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def process_group(here, device, batch_size, sync_bn):
    """This process's Distributed on the device `here` (lib/device.py resolved --device `device`):
    the process group started (NCCL on CUDA, gloo on the CPU) and closed on the way out; on
    processes other than 0 stdout goes to os.devnull, so every line is printed once."""
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if batch_size % world:
        raise BadInputError(f"--batch-size {batch_size}: not a multiple of {world} processes")
    if here.type not in ("cuda", "cpu"):
        raise BadInputError(f"--device {device}: torchrun runs on cuda (NCCL) or cpu (gloo)")
    if sync_bn and here.type != "cuda":
        raise BadInputError("--sync-bn needs CUDA devices (SyncBatchNorm); drop it on the CPU")
    backend = "nccl" if here.type == "cuda" else "gloo"
    options = dict(device_id=here) if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **options)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    quiet = open(os.devnull, "w") if rank else None  # noqa: SIM115 (closed below)
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield Distributed(rank, world, local_rank, backend, here, local_world)
        dist.barrier()  # leave together: no group closed while another process still talks to it
    finally:
        if quiet:
            quiet.close()
        dist.destroy_process_group()
