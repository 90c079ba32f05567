"""Dynamic micro-batching: concurrent single requests decided in one planner call.

Like Triton's dynamic batching: each request is parsed and validated on its own (so a bad
request still gets its own 4xx), then :meth:`MicroBatcher.submit` enqueues it and awaits its
result. One batcher task per event loop takes everything pending (after letting the loop parse
the requests that already arrived, and optionally waiting up to ``max_wait_s`` for more), splits
it into conflict-free groups (requests sharing a key, e.g. the same customer, never share a
call, so every request gets exactly the answer it would get alone) and runs ``decide`` once per
group. If a combined call raises, every request of the group is retried alone, so only the
culprit gets the error.

``decide`` runs either inline on the event loop (``executor="loop"``) or in one worker thread
(``executor="thread"``, the loop keeps parsing requests meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Literal, TypeVar

log = logging.getLogger("retryopt.serving")

T = TypeVar("T")
R = TypeVar("R")

Executor = Literal["loop", "thread"]

# Loop passes granted before a batch is taken: a request that has arrived on a socket needs a
# pass for the protocol to read it and one for its handler to parse, validate and enqueue it.
_YIELD_PASSES = 2
# Polling step while waiting ``max_wait_s`` for more requests.
_POLL_S = 0.0002


def conflict_free_groups(
    items: Sequence[T], keys: Callable[[T], Iterable[Hashable]], *, max_size: int
) -> list[list[int]]:
    """Split ``items`` (indices, order kept) into groups without a shared key, of <= max_size.

    Each item goes into the first group that has room and none of its keys (first fit).

    Parameters
    ----------
    items
        The items.
    keys
        Keys of an item; two items with a common key never share a group.
    max_size
        Largest group (>= 1).
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    groups: list[list[int]] = []
    used: list[set[Hashable]] = []
    for i, item in enumerate(items):
        own = set(keys(item))
        for g, seen in zip(groups, used, strict=True):
            if len(g) < max_size and seen.isdisjoint(own):
                g.append(i)
                seen |= own
                break
        else:
            groups.append([i])
            used.append(own)
    return groups


class MicroBatcher(Generic[T, R]):
    """Coalesce concurrent :meth:`submit` calls into batched ``decide`` calls.

    Parameters
    ----------
    decide
        ``decide(items) -> results`` (same length and order); synchronous, CPU-bound.
    keys
        Conflict keys of an item (items sharing one are decided in separate calls).
    max_batch
        Most items per ``decide`` call (>= 1).
    max_wait_s
        After the first item, wait at most this long for more (0 = take what is pending).
    executor
        ``"loop"``: run ``decide`` inline on the event loop; ``"thread"``: in one worker thread.
    on_batch
        Optional callback with the size of each ``decide`` call (metrics).
    """

    def __init__(
        self,
        decide: Callable[[list[T]], list[R]],
        *,
        keys: Callable[[T], Iterable[Hashable]],
        max_batch: int = 64,
        max_wait_s: float = 0.0,
        executor: Executor = "loop",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if executor not in ("loop", "thread"):
            raise ValueError(f"executor must be 'loop' or 'thread', got {executor!r}")
        self._decide = decide
        self._keys = keys
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor
        self._on_batch = on_batch
        self._pending: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def submit(self, item: T) -> R:
        """Enqueue ``item`` and wait for its result (or its own exception)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop or self._task.done():
            self._start(loop)
        assert self._wake is not None
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        self._wake.set()
        return await fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wake = asyncio.Event()
        self._pending = deque(p for p in self._pending if not p[1].done())
        self._task = loop.create_task(self._run(), name="retryopt-microbatcher")

    async def aclose(self) -> None:
        """Stop the batcher task (pending requests get a ``RuntimeError``) and its thread."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._pending:
            _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(RuntimeError("the service is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._gather()
                taken: list[tuple[T, asyncio.Future[R]]] = []
                while self._pending and len(taken) < self.max_batch:
                    item, fut = self._pending.popleft()
                    if not fut.done():  # skip requests whose client went away
                        taken.append((item, fut))
                if taken:
                    await self._process(taken)

    async def _gather(self) -> None:
        """Let requests that already arrived reach the queue; wait up to ``max_wait_s``."""
        for _ in range(_YIELD_PASSES):
            if len(self._pending) >= self.max_batch:
                return
            await asyncio.sleep(0)
        if self.max_wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, _POLL_S))

    async def _process(self, taken: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [t for t, _ in taken]
        for group in conflict_free_groups(items, self._keys, max_size=self.max_batch):
            chunk = [taken[i] for i in group]
            try:
                results = await self._call([t for t, _ in chunk])
            except Exception as exc:
                if len(chunk) == 1:
                    if not chunk[0][1].done():
                        chunk[0][1].set_exception(exc)
                    continue
                log.warning(
                    "a combined decision call of %d requests failed; retrying each alone",
                    len(chunk),
                )
                for item, fut in chunk:
                    await self._retry_alone(item, fut)
                continue
            for (_, fut), res in zip(chunk, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _retry_alone(self, item: T, fut: asyncio.Future[R]) -> None:
        try:
            (res,) = await self._call([item])
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(res)

    async def _call(self, items: list[T]) -> list[R]:
        if self._on_batch is not None:
            self._on_batch(len(items))
        if self.executor == "loop":
            results = self._decide(items)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retryopt-decide")
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._pool, self._decide, items)
        if len(results) != len(items):
            raise RuntimeError(f"decide returned {len(results)} results for {len(items)} items")
        return results
