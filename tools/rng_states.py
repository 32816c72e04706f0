"""The random state a resumed run replays: torch's, Python's and the named torch.Generators that
draw the batch order and the augmentation (tools/batches.py), of every process of a distributed run
(tools/distributed.py). train.py saves rng_state in every last.pt."""

import random

import torch


def rng_state(generators):
    """The random states a resumed run needs to replay exactly: torch (CPU, CUDA), Python, and the
    named torch.Generators that draw the batch order and the augmentation."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state, generators, log=print):
    """Put back what rng_state saved; a generator of another device or data path is named, not
    fatal. A state without "torch" and "python" (a process new to a distributed run) keeps
    those."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
        random.setstate(_as_tuple(state["python"]))
    for k, g in generators.items():
        try:
            g.set_state(state["generators"][k])
        except (KeyError, RuntimeError):  # another device or data path than the checkpoint's run
            log(
                f"note: the '{k}' generator state does not fit this run; the resumed run is not "
                "bit-exact"
            )
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def rng_for_rank(resumed, here, log=print):
    """The random state process `here.rank` resumes from. last.pt keeps every process's
    (rng_ranks, W entries) beside process 0's (rng): at the same world size each process takes its
    own, and the run continues exactly. At another world size the global sample order continues
    (the order generator is the same on every process), but augmentation and BatchNorm statistics
    are those of the new split: said in one line, the run goes on, not bit-exact."""
    ranks = resumed.get("rng_ranks") or [resumed["rng"]]
    if len(ranks) != here.world:
        log(
            f"note: {resumed.get('world_size', 1)} process(es) wrote this checkpoint, {here.world} "
            "resume it: the global sample order continues, augmentation draws and per-process "
            "BatchNorm statistics differ, so the run is not bit-exact with an uninterrupted one"
        )
    if here.rank < len(ranks):
        return ranks[here.rank]
    order = {k: v for k, v in ranks[0]["generators"].items() if k != "augment"}
    return dict(generators=order)  # a new process: its own seeded augmentation, the shared order
