"""Dynamic micro-batching (serving.microbatch): coalescing, isolation of errors and conflicts.

Pure asyncio tests of the batcher with a small deterministic ``decide`` function; the HTTP
behaviour with the real model is tested in tests/test_api.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable

import pytest

from retryopt.serving.microbatch import MicroBatcher, conflict_free_groups


class Recorder:
    """``decide``: squares the items; raises on negative items; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError(f"negative item in {items}")
        return [x * x for x in items]


def own_key(x: int) -> Iterable[Hashable]:
    return [abs(x)]


def run_all(batcher: MicroBatcher[int, int], items: list[int]) -> list[object]:
    async def main() -> list[object]:
        try:
            return list(
                await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
            )
        finally:
            await batcher.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("executor", ["loop", "thread"])
def test_concurrent_submits_are_decided_in_one_call(executor: str) -> None:
    rec = Recorder()
    sizes: list[int] = []
    batcher = MicroBatcher(rec, keys=own_key, executor=executor, on_batch=sizes.append)  # type: ignore[arg-type]
    items = list(range(1, 11))
    assert run_all(batcher, items) == [x * x for x in items]
    assert rec.calls == [items]
    assert sizes == [10]


def test_max_batch_splits_in_arrival_order() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, keys=own_key, max_batch=4)
    assert run_all(batcher, list(range(1, 11))) == [x * x for x in range(1, 11)]
    assert rec.calls == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_a_failing_request_gets_its_own_error_only() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, keys=own_key)
    out = run_all(batcher, [1, 2, -3, 4])
    assert out[0] == 1 and out[1] == 4 and out[3] == 16
    assert isinstance(out[2], ValueError) and "-3" in str(out[2])
    # The combined call, then each request alone.
    assert rec.calls == [[1, 2, -3, 4], [1], [2], [-3], [4]]


def test_conflicting_requests_are_decided_apart() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, keys=own_key)
    # The two 2s share a key (e.g. the same customer): never in the same call.
    run_all(batcher, [2, 5, 2, 7])
    assert rec.calls == [[2, 5, 7], [2]]


def test_waiting_collects_later_arrivals() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, keys=own_key, max_wait_s=0.5, max_batch=3)

    async def main() -> list[int]:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)  # the batcher is waiting for more (up to 0.5 s)
        rest = [asyncio.ensure_future(batcher.submit(x)) for x in (2, 3)]
        out = [await first, *[await r for r in rest]]
        await batcher.aclose()
        return out

    # A full batch (3) is taken at once, without waiting the rest of the 0.5 s.
    assert asyncio.run(main()) == [1, 4, 9]
    assert rec.calls == [[1, 2, 3]]


def test_sequential_submits_are_alone() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, keys=own_key)

    async def main() -> list[int]:
        out = [await batcher.submit(x) for x in (3, 4)]
        await batcher.aclose()
        return out

    assert asyncio.run(main()) == [9, 16]
    assert rec.calls == [[3], [4]]


def test_conflict_free_groups() -> None:
    keys = {0: ["a"], 1: ["b"], 2: ["a", "c"], 3: ["c"], 4: ["d"]}
    groups = conflict_free_groups(list(keys), lambda i: keys[i], max_size=10)
    assert groups == [[0, 1, 3, 4], [2]]
    assert conflict_free_groups(list(keys), lambda i: [i], max_size=2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="max_size"):
        conflict_free_groups([1], lambda i: [i], max_size=0)


def test_bad_settings_are_refused() -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(rec, keys=own_key, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(rec, keys=own_key, max_wait_s=-1)
    with pytest.raises(ValueError, match="executor"):
        MicroBatcher(rec, keys=own_key, executor="process")  # type: ignore[arg-type]


# --- server stack settings and per-worker sockets ------------------------------------------


def test_server_stack_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from retryopt.serving.settings import Settings

    have_httptools = importlib.util.find_spec("httptools") is not None
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    http, loop = Settings().server_stack()
    assert http == ("httptools" if have_httptools else "h11")
    assert loop == ("uvloop" if have_uvloop else "asyncio")
    assert Settings(http="h11", loop="asyncio").server_stack() == ("h11", "asyncio")
    monkeypatch.setenv("RETRYOPT_MICROBATCH_MAX_SIZE", "1")
    monkeypatch.setenv("RETRYOPT_MICROBATCH_EXECUTOR", "thread")
    s = Settings()
    assert s.microbatch_max_size == 1 and s.microbatch_executor == "thread"
    with pytest.raises(ValueError, match="microbatch_max_wait_ms"):
        Settings(microbatch_max_wait_ms=-1)


def test_workers_can_share_a_port_through_reuse_port() -> None:
    from retryopt.commands.serve import bind_reuse_port, reuse_port_supported

    if not reuse_port_supported():  # pragma: no cover - Linux and macOS have it
        pytest.skip("SO_REUSEPORT not available")
    first = bind_reuse_port("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = bind_reuse_port("127.0.0.1", port)  # a second worker on the same port
        assert second.getsockname()[1] == port
        second.close()
    finally:
        first.close()
