"""Where calibration and tuning work runs: in this process, or on a Ray cluster.

``engine_for(None)`` is :class:`InProcess`: everything runs here, in order (the default; Ray
is not needed). ``engine_for("local")`` starts a Ray cluster on this machine with one worker
per core, every connection on the loopback address; ``engine_for(ADDRESS)`` joins a running
cluster (``host:port`` of its head, ``ray://host:port``, or ``auto``). Ray is the optional
extra ``sparc[distributed]`` and is imported only here, inside functions.

The surface, the same on every engine:

- ``engine.shards(items) -> ShardSet``: item i of n goes to shard i mod k (k = min(workers, n));
  each shard lives on a stateful worker (a Ray actor holding one CPU) with its items and a
  ``state`` dict kept between calls. ``ShardSet.map(fn, *args)`` runs ``fn(shard, *args)`` on
  every shard at once and returns the results in shard order; each argument goes to Ray's
  object store once per call, whatever the number of shards.
- ``engine.put(value)``: a handle to pass to many tasks (stored once); ``engine.submit(fn,
  *args) -> Task`` runs ``fn(*args)`` as a task with one CPU; ``engine.wait(tasks)`` blocks
  until at least one has finished and returns the finished ones; ``task.result()``. Tasks run
  on the same workers as shards (each on the one with the fewest calls running), so the
  workers start once per engine.
- ``engine.map(fn, items) -> list``: ``fn(item)`` for every item as tasks, up to ``workers``
  at once, the next submitted when one finishes (uneven jobs balance themselves); the
  results in item order. It may be called while a shard set is open (between its ``map``
  calls).

Jobs must not modify their arguments: in this process every shard is handed the same objects.
Errors raised in a worker are raised again here, as they were (a :class:`SparcError` stays
itself), with the worker's traceback as a note; a worker that dies, or a cluster that cannot
be reached, is a :class:`DistributedError`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pickle
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from sparc.errors import DistributedError

logger = logging.getLogger(__name__)

LOCAL = "local"
CONNECT_SECONDS = 5.0  # a cluster address that accepts no connection in this time is unreachable
INSTALL_HINT = "Ray is not installed: pip install 'sparc[distributed]' (or pip install ray)"


@dataclasses.dataclass
class Shard:
    """One worker's share of the items (item i of n is on shard i mod k), and a ``state`` dict
    that jobs run on this shard may keep values in between calls."""

    index: int
    items: list
    state: dict = dataclasses.field(default_factory=dict)


class Task:
    """A submitted call: ``result()`` returns its value or raises its error."""

    def result(self) -> Any:
        raise NotImplementedError


class ShardSet:
    """Items dealt to stateful workers (module docstring); close it (or use ``with``) to free them."""

    count: int

    def map(self, fn: Callable, *args) -> list:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Engine:
    """Where work runs (module docstring); ``workers`` is how many run at once."""

    workers: int = 1

    def shards(self, items: Sequence) -> ShardSet:
        raise NotImplementedError

    def put(self, value: Any) -> Any:
        return value

    def submit(self, fn: Callable, *args) -> Task:
        raise NotImplementedError

    def wait(self, tasks: Sequence[Task]) -> list[Task]:
        raise NotImplementedError

    def map(self, fn: Callable, items: Sequence) -> list:
        """``fn(item)`` for every item, at most ``workers`` submitted at once (module docstring)."""
        results: list = [None] * len(items)
        running: dict[Task, int] = {}
        for index, item in enumerate(items):
            while len(running) >= self.workers:
                self._take_finished(running, results)
            running[self.submit(fn, item)] = index
        while running:
            self._take_finished(running, results)
        return results

    def _take_finished(self, running: dict, results: list) -> None:
        for task in self.wait(list(running)):
            results[running.pop(task)] = task.result()

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def deal(items: Sequence, count: int) -> list[list]:
    """Round-robin: shard j gets items j, j + k, j + 2k, … (k = min(count, len(items)), at least 1)."""
    k = max(1, min(count, len(items)))
    return [list(items[j::k]) for j in range(k)]


# --- in this process -------------------------------------------------------------------------


class _Done(Task):
    def __init__(self, fn: Callable, args: tuple):
        try:
            self._value, self._error = fn(*args), None
        except Exception as exc:  # kept and raised by result(), as a Ray task's error would be
            self._value, self._error = None, exc

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _LocalShards(ShardSet):
    def __init__(self, items: Sequence, workers: int):
        self._shards = [Shard(j, part) for j, part in enumerate(deal(items, workers))]
        self.count = len(self._shards)

    def map(self, fn: Callable, *args) -> list:
        return [fn(shard, *args) for shard in self._shards]


class InProcess(Engine):
    """Everything in this process, in order. ``workers`` > 1 deals shards as a cluster of that
    size would (to check that sharded work merges to the same result), still one at a time."""

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise DistributedError(f"workers must be at least 1, got {workers}")
        self.workers = workers

    def shards(self, items: Sequence) -> ShardSet:
        return _LocalShards(items, self.workers)

    def submit(self, fn: Callable, *args) -> Task:
        return _Done(fn, args)

    def wait(self, tasks: Sequence[Task]) -> list[Task]:
        return list(tasks)


# --- on a Ray cluster --------------------------------------------------------------------------


def _guarded(fn: Callable, *args) -> tuple:
    """``("ok", value)`` or ``("error", exception, traceback text)``; an exception that would
    not survive pickling becomes a DistributedError with its type and message."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            exc = DistributedError(f"{type(exc).__name__}: {exc}")
        return ("error", exc, text)


def _unwrap(outcome: tuple) -> Any:
    if outcome[0] == "ok":
        return outcome[1]
    _, exc, text = outcome
    if hasattr(exc, "add_note"):
        exc.add_note(f"raised on a Ray worker:\n{text}")
    raise exc


class _ShardHost:
    """A Ray actor's body: holds shards of several shard sets by key and runs jobs on them, and
    runs submitted calls."""

    def __init__(self):
        self.shards: dict[int, Shard] = {}

    def hold(self, key: int, index: int, items: list) -> None:
        self.shards[key] = Shard(index, list(items))

    def run(self, key: int, fn: Callable, *args) -> tuple:
        return _guarded(fn, self.shards[key], *args)

    def call(self, fn: Callable, *args) -> tuple:
        return _guarded(fn, *args)

    def drop(self, key: int) -> None:
        self.shards.pop(key, None)


class _RayTask(Task):
    def __init__(self, engine: RayEngine, ref):
        self._engine, self.ref = engine, ref

    def result(self) -> Any:
        return _unwrap(self._engine._get(self.ref, "a task"))


class _RayShards(ShardSet):
    def __init__(self, engine: RayEngine, hosts: list, key: int, items: Sequence):
        self._engine, self._hosts, self._key = engine, hosts, key
        parts = deal(items, len(hosts))
        self.count = len(parts)
        ray = engine.ray
        engine._get([host.hold.remote(key, j, ray.put(part)) for j, (host, part) in enumerate(zip(hosts, parts))],
                    "receiving shards")

    def map(self, fn: Callable, *args) -> list:
        shared = [self._engine.put(a) for a in args]  # once per call, not per shard
        refs = [host.run.remote(self._key, fn, *shared) for host in self._hosts[: self.count]]
        return [_unwrap(outcome) for outcome in self._engine._get(refs, getattr(fn, "__name__", "a job"))]

    def close(self) -> None:
        if self._key in self._engine._open:
            self._engine._open.discard(self._key)
            for host in self._hosts[: self.count]:
                host.drop.remote(self._key)


class RayEngine(Engine):
    """Work on a Ray cluster: ``address`` ``"local"`` starts one on this machine with
    ``workers`` CPUs (default: every core), anything else joins a running cluster (its CPUs
    are the workers). A cluster this engine started is shut down by :meth:`close`."""

    def __init__(self, address: str = LOCAL, *, workers: int | None = None):
        if workers is not None and workers < 1:
            raise DistributedError(f"workers must be at least 1, got {workers}")
        self.address = address
        if address != LOCAL:
            _check_reachable(address)
        self.ray = _import_ray(local=address == LOCAL)
        self._started = False
        if not self.ray.is_initialized():
            self._init(address, workers)
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise DistributedError(f"the Ray cluster at {address} has no CPU to run work on")
        self.workers = min(workers or cpus, cpus)
        self._hosts: list = []
        self._running: list[set] = []  # per host, the refs of submitted calls not seen finished
        self._open: set[int] = set()
        self._keys = itertools.count()
        self._host_class = self.ray.remote(num_cpus=1)(_ShardHost)

    def _init(self, address: str, workers: int | None) -> None:
        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        local = address == LOCAL
        try:
            if local:
                self.ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
            else:
                self.ray.init(address=address, **options)
        except Exception as exc:
            what = "start a local Ray cluster" if local else f"join the Ray cluster at {address}"
            raise DistributedError(f"cannot {what}: {_first_line(exc)}") from None
        self._started = True
        logger.info("Ray cluster %s: %s", address, self.ray.cluster_resources())

    def shards(self, items: Sequence) -> ShardSet:
        self._start_hosts(max(1, min(self.workers, len(items))))
        key = next(self._keys)
        self._open.add(key)
        return _RayShards(self, self._hosts, key, items)

    def _start_hosts(self, count: int) -> None:
        while len(self._hosts) < count:
            self._hosts.append(self._host_class.remote())
            self._running.append(set())

    def put(self, value: Any) -> Any:
        return value if isinstance(value, self.ray.ObjectRef) else self.ray.put(value)

    def submit(self, fn: Callable, *args) -> Task:
        self._start_hosts(self.workers)
        index = self._idlest_host()
        ref = self._hosts[index].call.remote(fn, *(self.put(a) for a in args))
        self._running[index].add(ref)
        return _RayTask(self, ref)

    def _idlest_host(self) -> int:
        """The host with the fewest submitted calls still running (an idle one when the caller
        keeps at most ``workers`` in flight, as ``sparc tune`` does)."""
        for running in self._running:
            if running:
                done, _ = self.ray.wait(list(running), num_returns=len(running), timeout=0)
                running.difference_update(done)
        return min(range(len(self._hosts)), key=lambda i: len(self._running[i]))

    def wait(self, tasks: Sequence[Task]) -> list[Task]:
        refs = [t.ref for t in tasks]
        self.ray.wait(refs, num_returns=1)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        return [t for t in tasks if t.ref in done]

    def close(self) -> None:
        """End the workers, and the cluster if this engine started it."""
        self._open.clear()
        for host in self._hosts:
            self.ray.kill(host)
        self._hosts, self._running = [], []
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def _get(self, refs, what: str):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as exc:
            raise DistributedError(f"a Ray worker failed while running {what}: {_first_line(exc)}") from None


def engine_for(ray: str | Engine | None, *, workers: int | None = None) -> Engine:
    """The engine for a ``ray=`` option: None → :class:`InProcess`; ``"local"`` or an address →
    :class:`RayEngine`; an engine → itself."""
    if ray is None:
        return InProcess()
    if isinstance(ray, Engine):
        return ray
    if not isinstance(ray, str) or not ray.strip():
        raise DistributedError(f"ray must be 'local' or a cluster address, got {ray!r}")
    return RayEngine(ray.strip(), workers=workers)


class session:
    """``with session(ray) as engine``: :func:`engine_for`, closed at the end unless the
    caller gave an engine (then it is the caller's to close)."""

    def __init__(self, ray: str | Engine | None):
        self._owned = not isinstance(ray, Engine)
        self.engine = engine_for(ray)

    def __enter__(self) -> Engine:
        return self.engine

    def __exit__(self, *exc) -> None:
        if self._owned:
            self.engine.close()


def _import_ray(*, local: bool):
    """The ray module. A local cluster keeps every address on the loopback interface: Ray
    reads this switch when it is first imported (a process that imported Ray before keeps
    Ray's own choice, the machine's network address)."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise DistributedError(INSTALL_HINT) from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing accepts connections at ``host:port``
    (Ray itself would retry for minutes); ``auto`` is left to Ray."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        if address == "auto":
            return
        raise DistributedError(f"not a Ray cluster address: {address!r} (give host:port, ray://host:port or 'local')")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise DistributedError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
