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

What does not: augmentation is drawn per process (seeds from the seed, the epoch and the rank), and
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


def derived_seed(*parts):
    """A 63-bit seed of its own for each tuple of parts, e.g. (seed, "augment", epoch, rank): a
    hash, so that no two streams share their numbers (seed + rank would: rank 1 of seed 5 is rank 0
    of seed 6)."""
    digest = hashlib.sha256(repr(("ke2nt",) + parts).encode()).digest()
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
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

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


def local_world_size():
    """The processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 outside torchrun): they
    share its memory and cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def resolve_device(spec=None, local_rank=None):
    """The one torch.device this process drives, from --device as written (None: cuda where there is
    a GPU, else cpu) and, under torchrun, LOCAL_RANK. The index is always resolved ('cuda' is the
    current GPU, cuda:LOCAL_RANK under torchrun; 'cpu:0' is 'cpu'), so the device equals the one
    its tensors report however it was written. A CUDA device becomes the current one, so that
    torch's per-device queries without a device argument (bf16 support, streams) ask this GPU."""
    try:
        device = torch.device(spec or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise BadInputError(
            f"--device {spec!r} is not a device: write cpu, cuda, cuda:1 or mps"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        return torch.device(device.type, device.index or 0)
    count = torch.cuda.device_count()
    index = local_rank if local_rank is not None else device.index
    if index is None and count:
        index = torch.cuda.current_device()
    if index is None or index >= count:
        where = f"LOCAL_RANK {local_rank}" if local_rank is not None else f"--device {spec}"
        raise BadInputError(
            f"{where}: {count} CUDA device(s) visible; "
            + ("--nproc_per_node must not exceed them" if local_rank is not None else "use cpu")
        )
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def default_workers(device):
    """Image-decoding processes when --num-workers is not given: on a GPU the cores of this machine
    shared among its torchrun processes (a GPU waits for one decoding process); on the CPU none
    (no core to spare)."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores // local_world_size())


@contextlib.contextmanager
def process_group(args):
    """This process's Distributed: from torchrun's environment (the process group started, NCCL on
    CUDA, gloo on the CPU; closed on the way out), or one process without it. The device comes
    from resolve_device; --num-workers, when not given, from default_workers. Checks --device,
    --sync-bn and --batch-size against the world size; on processes other than 0 stdout goes to
    os.devnull, so every line is printed once."""
    world = launched_world_size()
    if world == 1:
        here = Distributed(device=resolve_device(args.device))
    else:
        check_batch_size(args.batch_size, world)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(args.device, local_rank)
        if device.type not in ("cuda", "cpu"):
            raise BadInputError(
                f"--device {args.device}: torchrun runs on cuda (NCCL) or cpu (gloo)"
            )
        if getattr(args, "sync_bn", False) and device.type != "cuda":
            raise BadInputError("--sync-bn needs CUDA devices (SyncBatchNorm); drop it on the CPU")
        backend = "nccl" if device.type == "cuda" else "gloo"
        options = dict(device_id=device) if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **options)
        here = Distributed(rank, world, local_rank, backend, device)
    if getattr(args, "num_workers", 0) is None:
        args.num_workers = default_workers(here.device)
    if not here.enabled:
        yield here
        return
    quiet = open(os.devnull, "w") if here.rank else None  # noqa: SIM115 (closed below)
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield here
    finally:
        if quiet:
            quiet.close()
        dist.destroy_process_group()
