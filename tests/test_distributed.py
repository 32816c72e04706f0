"""train.py under torchrun, on the CPU with gloo and two processes: the distributed losses and
gradients equal one process's on the concatenated batch; each process takes its rows of the
one-process order; a two-process run prints each line once and writes one set of files; killed
with SIGKILL and resumed with torchrun it ends with the weights of an uninterrupted two-process
run; the sharded evaluation equals evaluate.py's one-process report on the same checkpoint."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

# light imports only: the spawned processes of the loss test import this module
import losses
from lib import device as dev
from lib import distributed, errors

NEUTRAL = 3
# unequal non-neutral counts: three on process 0's rows, one on process 1's
LABELS = [0, 3, 1, 2, 3, 3, 3, 3, 1, 3, 3, 3]


class _Tiny(torch.nn.Module):
    """x (B, 8) -> f = Linear(8, D) x, n = g(f) = Linear(D, D) f."""

    def __init__(self, D=16):
        super().__init__()
        self.f, self.g = torch.nn.Linear(8, D), torch.nn.Linear(D, D)

    def forward(self, x):
        f = self.f(x)
        return f, self.g(f)


def _problem(B=12, D=16, K=4, seed=0):
    """A float64 batch: inputs x (B, 8), labels, anchors (K, D) and the _Tiny model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 8, generator=g, dtype=torch.float64)
    t = torch.randn(K, D, generator=g, dtype=torch.float64) * 3 + 1
    torch.manual_seed(seed)
    return x, torch.tensor(LABELS), t, _Tiny(D).double()


def _objective(model, x, y, t, contrast, global_sum):
    """The KE2NT loss, its terms and (f, n, logits = 100 cos(f, t_k)), kept for their gradients."""
    f, n = model(x)
    logits = 100.0 * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).T  # model.similarity_logits
    for v in (f, n, logits):
        v.retain_grad()
    total, terms = losses.ke2nt_loss(
        f, n, logits, t, y, NEUTRAL, contrast=contrast, global_sum=global_sum
    )
    return total, terms, (f, n, logits)


def _loss_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    here = distributed.Distributed(rank, world, rank, "gloo", torch.device("cpu"), world)
    x, y, t, net = _problem()
    rows = slice(rank * len(y) // world, (rank + 1) * len(y) // world)
    model = here.wrap(net)  # DistributedDataParallel: averages the parameter gradients
    results = {}
    for contrast in ("all_pairs", "per_sample"):
        model.zero_grad()
        total, terms, tensors = _objective(model, x[rows], y[rows], t, contrast, here.global_sum)
        total.backward()
        results[contrast] = dict(
            total=total.detach(),
            **terms,
            grads=[v.grad for v in tensors],
            params={k: p.grad.clone() for k, p in net.named_parameters()},
        )
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # no process leaves while the other's gloo threads still talk to it
    dist.destroy_process_group()


def test_distributed_losses_and_gradients_equal_one_process_on_the_concatenated_batch(tmp_path):
    world = 2
    mp.spawn(_loss_worker, args=(world, str(tmp_path / "pg"), str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    x, y, t, net = _problem()
    for contrast in ("all_pairs", "per_sample"):
        net.zero_grad()
        total, terms, tensors = _objective(net, x, y, t, contrast, None)
        total.backward()
        for r, got in enumerate(ranks):
            got = got[contrast]
            rows = slice(r * len(y) // world, (r + 1) * len(y) // world)
            # every process holds the global L_s, L_t, L_c and total
            for k in ("ls", "lt", "lc"):
                assert torch.allclose(got[k], terms[k], rtol=1e-12, atol=1e-12), (contrast, k, r)
            assert torch.allclose(got["total"], total.detach(), rtol=1e-12, atol=1e-12)
            # d(its loss)/d(its rows of f, n, logits) is world times the one-process gradient ...
            for mine, one in zip(got["grads"], tensors, strict=True):
                assert torch.allclose(mine / world, one.grad[rows], rtol=1e-10, atol=1e-13)
            # ... so DDP's average of the parameter gradients is the one-process gradient
            for name, p in net.named_parameters():
                assert torch.allclose(got["params"][name], p.grad, rtol=1e-10, atol=1e-13), name
        # what the test tells apart: per-process means of L_t, L_c average to something else
        f, n = (v.detach() for v in tensors[:2])
        for loss in (losses.transformation_loss, losses.self_contrast_loss):
            halves = [loss(f[h], n[h], t, y[h], NEUTRAL) for h in (slice(0, 6), slice(6, 12))]
            assert not torch.allclose(sum(halves) / 2, loss(f, n, t, y, NEUTRAL))


def test_each_process_takes_its_rows_of_the_one_process_order():
    from lib import batches, streaming

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2).contiguous()
    labels = torch.arange(40) % 4

    def keep(x, generator=None):
        return x[:, 0, 0, 0].long()

    def loaders(train, balanced, world):
        return [
            batches.CachedBatches(
                images,
                labels,
                8,
                keep,
                train,
                balanced,
                torch.Generator().manual_seed(5),
                rank=r,
                world=world,
            )
            for r in range(world)
        ]

    for balanced in (False, True):
        (one,), two = loaders(True, balanced, 1), loaders(True, balanced, 2)
        assert len(one) == len(two[0]) == len(two[1]) == 5
        for (x1, y1), (xa, ya), (xb, yb) in zip(one, *two, strict=True):
            assert torch.equal(x1, torch.cat([xa, xb])) and torch.equal(y1, torch.cat([ya, yb]))
    # evaluation: whole batches, i to process i % 2, every image once
    (one,), two = loaders(False, False, 1), loaders(False, False, 2)
    assert [len(s) for s in two] == [3, 2]
    one_batches = [x for x, _ in one]
    for i, x in enumerate(one_batches):
        assert torch.equal(x, list(two[i % 2])[i // 2][0])
    # the streaming sampler: the same rows of the same global batches
    sampler = torch.utils.data.RandomSampler(range(40), generator=torch.Generator().manual_seed(5))
    whole = list(torch.utils.data.BatchSampler(sampler, 8, drop_last=True))
    sampler.generator.manual_seed(5)
    parts = []
    for r in range(2):
        sampler.generator.manual_seed(5)
        batch = torch.utils.data.BatchSampler(sampler, 8, drop_last=True)
        parts.append(list(streaming.RankSlices(batch, r, 2)))
    assert [a + b for a, b in zip(*parts, strict=True)] == whole
    assert streaming._eval_shard(20, 8, 0, 2) + streaming._eval_shard(20, 8, 1, 2) == [
        *range(8),
        *range(16, 20),
        *range(8, 16),
    ]


def test_batch_size_must_split_over_the_processes_and_seeds_differ_by_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    refused = pytest.raises(errors.BadInputError, match=r"--batch-size 30: not a multiple of 4")
    with refused, dev.process_group("cpu", 30):  # refused before any process group starts
        pass
    from lib import batches

    seeds = {
        batches.derived_seed(s, "augment", e, r) for s in range(5) for e in (1, 2) for r in range(4)
    }
    assert len(seeds) == 40 and all(0 <= x < 2**63 for x in seeds)  # no two streams alike


def _data_path_worker(rank, world, init_file, out_dir, flags):
    import train
    from lib import batches

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if rank == 1:  # this process finds too little memory free to cache: alone, it would stream
        batches.available_memory = lambda: 1024
    args = train.get_args(flags)
    args.num_workers = 0
    here = distributed.Distributed(rank, world, rank, "gloo", torch.device("cpu"), world)
    splits = train.load_data(args, here, lambda *a: None)
    batches.seed_epoch(splits.generators, args.seed, 1, rank)
    labels = [y for _, y in splits.train]
    torch.save(dict(path=type(splits.train).__name__, labels=labels), f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_processes_that_would_choose_different_data_paths_take_one_and_one_order(tmp_path):
    from test_train import make_anchors, tiny_synthetic_args

    import text_prompts
    import train
    from lib import batches

    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    flags = tiny_synthetic_args(tmp_path / "run", anchors, epochs=1, num_train=64)
    mp.spawn(_data_path_worker, args=(2, str(tmp_path / "pg"), str(tmp_path), flags), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # both stream, since one must; together they draw the one-process streaming order
    assert [r["path"] for r in ranks] == ["DataLoader", "DataLoader"]
    args = train.get_args(flags + ["--cache", "off"])
    args.num_workers = 0
    one = train.load_data(args, dev.OneProcess(), lambda *a: None)
    batches.seed_epoch(one.generators, args.seed, 1)
    whole = [y for _, y in one.train]
    assert len(whole) == 4
    for i, y in enumerate(whole):
        assert torch.equal(y, torch.cat([ranks[0]["labels"][i], ranks[1]["labels"][i]]))


def _torchrun(args, stdout=subprocess.DEVNULL):
    from test_train import ROOT

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        command + [os.path.join(ROOT, "train.py")] + args,
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def _descendants(pid):
    """The pids of every process below pid (from /proc: torchrun starts its workers in sessions of
    their own, so killing its process group leaves them running)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    stack, out = [pid], []
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _kill_all(process):
    """SIGKILL torchrun and its workers at once, as when the machine goes down."""
    for pid in [*_descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def _finish(process, timeout=180):
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(process)
        raise


def test_two_processes_write_once_and_resume_bit_exact_after_sigkill(tmp_path):
    from test_train import assert_same_run, make_anchors, tiny_synthetic_args

    import evaluate
    import text_prompts

    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    full, broken = tmp_path / "full", tmp_path / "broken"

    def flags(out):
        flags = tiny_synthetic_args(out, anchors, epochs=2, num_train=64)
        flags.remove("--quiet")
        return flags + ["--eval-batch-size", "8", "--log-every", "2", "--num-test", "32"]

    ref = _torchrun(flags(full), stdout=subprocess.PIPE)
    victim = _torchrun(flags(broken))
    deadline = time.time() + 120
    while not os.path.exists(broken / "last.pt") and victim.poll() is None:
        assert time.time() < deadline, "the victim wrote no checkpoint"
        time.sleep(0.02)
    time.sleep(0.1)  # somewhere inside epoch 2 (or while it writes)
    _kill_all(victim)
    stopped = torch.load(broken / "last.pt", map_location="cpu", weights_only=True)
    assert stopped["epoch"] == 1, "the kill came too late to interrupt the run"
    resumed = _torchrun(["--resume", str(broken / "last.pt"), "--quiet"])  # beside ref's end
    printed, stderr = ref.communicate(timeout=180)
    assert ref.returncode == 0, stderr.decode()
    assert _finish(resumed) == 0, resumed.stderr.read().decode()

    # one set of files, each line printed once
    lines = printed.decode().splitlines()
    for epoch in (1, 2):
        assert sum(line.startswith(f"epoch {epoch}/2 done") for line in lines) == 1, lines
        assert sum(line.startswith(f"epoch {epoch}/2 step 2/4") for line in lines) == 1
    assert sum(line.startswith("outputs in") for line in lines) == 1
    run_files = ["last.pt", "best.pt", "log.jsonl", "metrics.json"]
    written = [f for f in os.listdir(full) if f in run_files or ".tmp" in f]
    assert sorted(written) == sorted(run_files)  # no temporaries left behind
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["environment"]["distributed"] == dict(world_size=2, backend="gloo")

    # the resumed run ends where the uninterrupted one does
    a, _ = assert_same_run(full, broken, epochs=2)
    assert a["world_size"] == 2

    # the sharded evaluation (4 batches of 8, two per process) is evaluate.py's on last.pt
    report = evaluate.main(
        ["--checkpoint", str(full / "last.pt"), "--dataset", "synthetic", "--num-test", "32",
         "--batch-size", "8", "--device", "cpu", "--output", str(tmp_path / "eval")]
    )  # fmt: skip
    assert report["confusion_matrix"] == metrics["confusion_matrix"]
    assert report["accuracy"] == metrics["test_accuracy"]


def test_a_user_error_on_process_zero_alone_ends_every_process(tmp_path):
    """Only process 0 holds the output folder, so only it refuses a folder holding a run: torchrun
    then stops the other process at once, which would otherwise wait at its next collective for the
    process group's 30-minute timeout."""
    from test_train import make_anchors, tiny_synthetic_args

    import text_prompts

    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"a run was here")
    refused = _torchrun(tiny_synthetic_args(tmp_path / "run", anchors, epochs=1, num_train=64))
    assert _finish(refused, timeout=120) != 0  # within 2 minutes, or _finish fails the test
    assert b"already holds a training run" in refused.stderr.read()


def test_only_process_zero_prints_a_user_error(monkeypatch, capsys):
    for rank, said in (("1", ""), ("0", "error: a bad flag\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e, errors.cli_errors():
            raise errors.BadInputError("a bad flag")
        assert e.value.code == 2 and capsys.readouterr().err == said


def test_the_finite_check_sees_the_model_and_the_optimizer():
    """What every process's check before a save reads (train.all_finite; ddp.all_agree stops all
    of them when one finds a nan): the parameters, the buffers and the momentum."""
    import train

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert train.all_finite(net, opt)
    for tensor in (opt.state[net[0].weight]["momentum_buffer"], net[1].running_var, net[0].bias):
        kept = tensor.clone()
        with torch.no_grad():
            tensor.view(-1)[0] = float("nan")
        assert not train.all_finite(net, opt)
        with torch.no_grad():
            tensor.copy_(kept)
    assert train.all_finite(net, opt)
