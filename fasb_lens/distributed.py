"""Data parallelism over processes that ``torchrun`` starts: who does which share of the work.

``torchrun --nproc-per-node N --no-python fasb-lens reproduce ...`` starts N copies of the
command; each loads its own model (on its own GPU, or group of GPUs with ``--n-devices``)
and takes a share of every phase's pending work. The processes exchange nothing big: each
appends its records to its own log (``records.rank1.jsonl`` beside ``records.jsonl``, see
:class:`fasb_lens.storage.JsonlLog`), the run folder's records are the merge of those logs
by key, and what one process chose (a fold's calibration) is a file the others read after
a :func:`barrier`. The few numbers that travel over ``torch.distributed`` (a layer's
ablation values, a dataset's accuracies, phase timings) go as JSON text in byte tensors
(:func:`gather_json`; no pickle), over gloo, which needs no GPU. On one machine gloo is
reliable with ``GLOO_SOCKET_IFNAME=lo``.

Rules that keep it correct:

* Without ``torchrun`` (or with one process) every function here is the identity or does
  nothing, so a single process runs exactly the code it always ran.
* Work is shared in the units a single process already uses (the same chunks, batches,
  folds, layers or datasets, in the same order) and each unit is computed whole by one
  process, so every number is bit for bit the number one process computes.
* A function that calls :func:`barrier` or :func:`gather_json` must be called by every
  process, the same number of times: the run framework calls them between phases, never
  inside work only some processes do.
* Inside :func:`split` the processes work in groups (one fold's calibration per group):
  :func:`world_size`, :func:`rank`, :func:`share`, :func:`share_map`, :func:`gather_json`,
  :func:`barrier` and :func:`is_main` then concern this process's group only.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT_ENV = "FASB_LENS_TIMEOUT_S"
"""Seconds a process waits at a barrier for the others (default :data:`DEFAULT_TIMEOUT_S`):
the longest piece of work one process does alone (a fold's calibration, a dataset) must
fit in it."""
DEFAULT_TIMEOUT_S = 24 * 3600


def launched() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` >
    1 in the environment), whether or not :func:`start` ran yet."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_GROUP: list[Any] = [None]
"""The process group work is shared in now (``None``: every process; see :func:`split`)."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """How many processes share the work (1 without ``torchrun``; inside :func:`split`,
    the processes of this one's group)."""
    return torch.distributed.get_world_size(_GROUP[0]) if _initialized() else 1


def rank() -> int:
    """This process's number, 0 to :func:`world_size` - 1 (inside :func:`split`, in its
    group)."""
    return torch.distributed.get_rank(_GROUP[0]) if _initialized() else 0


def global_rank() -> int:
    """This process's number among all of them, in a group or not."""
    return torch.distributed.get_rank() if _initialized() else 0


def is_main() -> bool:
    """Whether this is the process that writes the run's summary and prints (rank 0; in a
    group, the group's first process)."""
    return rank() == 0


def describe() -> str:
    """``"process 2 of 4"``, or ``""`` for a single process (for messages)."""
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return ""
    return f"process {global_rank() + 1} of {torch.distributed.get_world_size()}"


def gpus_for_rank(
    local_rank: int, local_world: int, devices_per_process: int, visible: list[str]
) -> list[str]:
    """The GPUs (entries of ``visible``) process ``local_rank`` of ``local_world`` on this
    machine uses, ``devices_per_process`` each: disjoint groups when there are enough, one
    GPU shared round-robin when each process needs one and there are fewer GPUs than
    processes; too few GPUs for split models is an error."""
    wanted = local_world * devices_per_process
    if len(visible) >= wanted:
        start = local_rank * devices_per_process
        return visible[start : start + devices_per_process]
    if devices_per_process == 1 and visible:
        return [visible[local_rank % len(visible)]]
    raise ValueError(
        f"{local_world} processes with --n-devices {devices_per_process} need {wanted} GPUs; "
        f"this machine shows {len(visible)}"
    )


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries; counted
    through NVML, so CUDA is not initialised yet and the variable can still be narrowed."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()  # NVML; torch.cuda.is_available() could start CUDA
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]
    return [str(index) for index in range(count)]


def start(devices_per_process: int = 1) -> None:
    """Join the processes ``torchrun`` started (gloo), and give this one its GPUs.

    On a machine with GPUs, this process sees only its own (``CUDA_VISIBLE_DEVICES`` is
    narrowed before CUDA starts): ``cuda`` is its GPU, and ``--n-devices K`` splits the
    model over its K GPUs. Does nothing unless :func:`launched`.
    """
    if not launched() or _initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    visible = _visible_gpus()
    if visible:
        mine = gpus_for_rank(local_rank, local_world, devices_per_process, visible)
        if torch.cuda.is_initialized():  # too late to narrow (no NVML): its first GPU by index
            torch.cuda.set_device(visible.index(mine[0]))
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=seconds))
    logger.info("%s joined (GPUs: %s)", describe(), os.environ.get("CUDA_VISIBLE_DEVICES", "-"))


def stop() -> None:
    """Leave the process group (at the end of a command)."""
    if _initialized():
        torch.distributed.destroy_process_group()


def reports_error() -> bool:
    """Whether this process should print the error it is failing with: the first process
    of the run to fail does (counted in the rendezvous store ``torchrun`` keeps), so an
    error every process meets is printed once; before the processes joined, the first
    process does. Always true for a single process."""
    if not launched():
        return True
    if not _initialized():
        return os.environ.get("RANK", "0") == "0"
    try:
        store = torch.distributed.distributed_c10d._get_default_store()
        return int(store.add("fasb_lens/failed", 1)) == 1
    except Exception:  # the store went away with another process: say it anyway
        return True


def barrier() -> None:
    """Wait until every process (of the group) arrives here (nothing with one process)."""
    if world_size() > 1:
        torch.distributed.barrier(group=_GROUP[0])


def share(items: Iterable[T]) -> list[T]:
    """This process's share of ``items``: every :func:`world_size`-th one from its rank
    (all of them with one process). Every process must pass the same items."""
    items = list(items)
    return items[rank() :: world_size()] if world_size() > 1 else items


def owner(index: int) -> int:
    """The rank whose :func:`share` holds item ``index``."""
    return index % world_size()


def gather_json(value: Any) -> list[Any]:
    """``value`` (anything JSON can hold) from every process, in rank order; ``[value]``
    with one process. Sent as UTF-8 JSON in byte tensors, so nothing is unpickled."""
    if world_size() == 1:
        return [value]
    data = json.dumps(value).encode()
    size = torch.tensor([len(data)], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    torch.distributed.all_gather(sizes, size, group=_GROUP[0])
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    torch.distributed.all_gather(parts, padded, group=_GROUP[0])
    return [
        json.loads(bytes(part[: int(n.item())].tolist()).decode())
        for part, n in zip(parts, sizes, strict=True)
    ]


def share_map(
    items: Iterable[T],
    compute: Callable[[T], Any],
    *,
    encode: Callable[[Any], Any] = lambda value: value,
    decode: Callable[[Any], Any] = lambda value: value,
) -> list[Any]:
    """``[compute(item) for item in items]``, each item computed by one process (its
    :func:`share`) and sent to the others as JSON (``encode`` makes a result JSON-ready,
    ``decode`` makes it back). With one process, exactly the list comprehension."""
    items = list(items)
    if world_size() == 1:
        return [compute(item) for item in items]
    mine = {index: compute(items[index]) for index in range(rank(), len(items), world_size())}
    sent = {str(index): encode(value) for index, value in mine.items()}
    results: dict[int, Any] = {}
    for part in gather_json(sent):
        results.update({int(index): value for index, value in part.items()})
    return [mine[i] if i in mine else decode(results[i]) for i in range(len(items))]


@contextmanager
def split(count: int) -> Iterator[tuple[int, int]]:
    """Split the processes into ``min(count, world_size())`` groups (process ``r`` in group
    ``r % groups``) and work inside this process's group: yields ``(group, groups)``.
    With one process, or one group, yields ``(0, 1)`` and changes nothing. Every process
    must enter it (the groups are made together)."""
    if _GROUP[0] is not None:
        raise RuntimeError("the processes are split into groups already")
    total = world_size()
    groups = max(1, min(count, total))
    if groups == 1:
        yield 0, 1
        return
    made = [torch.distributed.new_group(list(range(g, total, groups))) for g in range(groups)]
    mine = rank() % groups
    _GROUP[0] = made[mine]
    try:
        yield mine, groups
    finally:
        _GROUP[0] = None


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block in the main process first, then (after a barrier) in the others: for
    writing something once that the others then read (a run's ``config.json``)."""
    if world_size() == 1:
        yield
        return
    if is_main():
        yield
        barrier()
    else:
        barrier()
        yield
