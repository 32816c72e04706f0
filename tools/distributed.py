"""One model trained by several processes: torchrun, DistributedDataParallel and the global batch.

    torchrun --standalone --nproc_per_node=N train.py ...      # one machine, N devices
    torchrun --nnodes=M --node_rank=I --rdzv_endpoint=HOST:PORT --nproc_per_node=N train.py ...

torchrun starts one process per device and tells each its place through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without those variables a run is one process and
everything here is a no-op (world size 1, no process group). Process r of W drives cuda:LOCAL_RANK
through NCCL, or the CPU through gloo.

What stays equal to one process on the same global batch (--batch-size is the global batch, B = W *
b, each process taking b of it):

- the objective. L_s, L_t and L_c are means over the global batch (L_t, L_c over its non-neutral
  samples S), written in losses.py as sums over counts; `Distributed.global_sum` all-reduces those
  sums and counts (GlobalSum), and its backward all-reduces the gradients too. Each process then
  holds the global loss, and the gradient of its own samples' features is W times the one-process
  gradient; DDP's average over W processes cancels the W, so the parameter gradient is the
  one-process one up to float round-off.
- the sample order. Every process draws the same global permutation (or class-balanced draw) from
  the same seeded generator; process r takes rows r*b .. (r+1)*b of each global batch.
- the reports. Evaluation is sharded by whole batches (batch i to process i mod W), so each batch is
  the one a single process would see; the confusion matrices are summed. Before that every process
  takes process 0's BatchNorm statistics, the ones its checkpoint holds.

What does not: augmentation is drawn per process (seeds from the seed and the rank, rank_seed), and
BatchNorm normalises over each process's b images unless --sync-bn (CUDA) syncs the statistics.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import io
import os

import torch
import torch.distributed as dist

from lib.errors import BadInputError


def rank_seed(seed, rank):
    """The seed of process `rank`'s own random streams: `seed` itself on process 0 (so a one-process
    run draws what it always did), else a 63-bit hash of (seed, rank) that no other seed maps to."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"ke2nt seed {seed} rank {rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def launched_world_size():
    """WORLD_SIZE as torchrun set it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


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
    device: torch.device = None

    @property
    def enabled(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0

    def record(self):
        """What metrics.json keeps about the processes."""
        return dict(world_size=self.world, backend=self.backend or "none (one process)")

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

    def gather(self, obj):
        """[obj of process 0, ..., obj of process W-1] on every process."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

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


def error_stream():
    """Where cli_errors prints a user error: stderr on process 0 (None), nowhere on the others, so a
    bad flag is said once."""
    return None if int(os.environ.get("RANK", "0")) == 0 else io.StringIO()


def check_batch_size(batch_size, world):
    """--batch-size is the global batch: it must split evenly over the processes."""
    if batch_size % world:
        raise BadInputError(
            f"--batch-size {batch_size} does not split evenly over {world} processes "
            f"(WORLD_SIZE={world}): it is the global batch; use a multiple of {world}, e.g. "
            f"{max(world, batch_size // world * world)}"
        )


@contextlib.contextmanager
def process_group(args):
    """This process's Distributed: from torchrun's environment (the process group started, NCCL on
    CUDA, gloo on the CPU; closed on the way out), or one process without it. Checks --device,
    --sync-bn and --batch-size against the world size; on processes other than 0 stdout goes to
    os.devnull, so every line is printed once."""
    world = launched_world_size()
    if world == 1:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        yield Distributed(device=device)
        return
    check_batch_size(args.batch_size, world)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    if kind not in ("cuda", "cpu"):
        raise BadInputError(f"--device {args.device}: torchrun runs on cuda (NCCL) or cpu (gloo)")
    if getattr(args, "sync_bn", False) and kind != "cuda":
        raise BadInputError("--sync-bn needs CUDA devices (SyncBatchNorm); drop it on the CPU")
    if kind == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise BadInputError(
                f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} CUDA devices: "
                "--nproc_per_node must not exceed the GPUs of each machine"
            )
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    options = dict(device_id=device) if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **options)
    here = Distributed(rank, world, local_rank, backend, device)
    quiet = open(os.devnull, "w") if rank else None  # noqa: SIM115 (closed below)
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield here
    finally:
        if quiet:
            quiet.close()
        dist.destroy_process_group()
