"""Micro-batching: concurrent async requests coalesced into one call in a worker thread.

BentoML's adaptive batching does not fit the scoring endpoints: a batchable API must
answer one output per input element, while a /score answer is ``{results, errors}`` for
a list of ids (a repeated or unknown id changes the shape), and an internal batchable
endpoint cannot be called through ``self`` inside the service (it hangs). So the
handlers batch themselves: one store query or one model call for every request that
arrived while the previous batch ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


def count_items(payload: Any) -> int:
    """Items in a request's payload (a list); anything else counts as one."""
    return len(payload) if isinstance(payload, list | tuple) else 1


class MicroBatcher(Generic[P, R]):
    """Coalesces concurrent async calls into one `fn(payloads) -> results` in a thread.

    A call made while no batch runs is dispatched at once (after `max_wait_s`, default
    0); calls made while a batch runs queue up and go together as the next batch, at
    most `max_items` items (measured by `size`) unless a single call is larger. `fn`
    returns one result per payload, in order; a result that is an exception is raised
    to its caller only. One worker thread: batches run one at a time.
    """

    def __init__(
        self,
        fn: Callable[[list[P]], list[R | BaseException]],
        *,
        size: Callable[[P], int] = lambda _: 1,
        max_items: int = 1000,
        max_wait_s: float = 0.0,
        name: str = "batch",
    ) -> None:
        self._fn = fn
        self._size = size
        self._max_items = max_items
        self._max_wait_s = max_wait_s
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"cshealth-{name}")
        self._pending: list[tuple[P, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # statistics: batches run and calls served
        self.calls = 0
        self.on_batch: Callable[[int, int], None] | None = None  # (calls, items) hook

    async def submit(self, payload: P) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (tests)
            self._loop, self._pending, self._task = loop, [], None
        fut: asyncio.Future = loop.create_future()
        self._pending.append((payload, fut))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await fut

    def _take(self) -> list[tuple[P, asyncio.Future]]:
        batch, items = [], 0
        while self._pending:
            n = self._size(self._pending[0][0])
            if batch and items + n > self._max_items:
                break
            batch.append(self._pending.pop(0))
            items += n
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._max_wait_s > 0:
                await asyncio.sleep(self._max_wait_s)
            while self._pending:
                batch = [(p, f) for p, f in self._take() if not f.done()]
                if not batch:
                    continue
                payloads = [p for p, _ in batch]
                self.batches += 1
                self.calls += len(batch)
                if self.on_batch is not None:
                    try:
                        self.on_batch(len(batch), sum(self._size(p) for p in payloads))
                    except Exception:  # a metrics hook must never block the callers
                        log.exception("micro-batcher: on_batch hook failed")
                try:
                    results = await loop.run_in_executor(self._pool, self._fn, payloads)
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch function returned {len(results)} results "
                                           f"for {len(batch)} calls")  # fmt: skip
                except Exception as err:  # fn failed as a whole: every caller gets it
                    results = [err] * len(batch)
                for (_, fut), res in zip(batch, results, strict=True):
                    if fut.done():  # the caller went away
                        continue
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        finally:
            self._task = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
