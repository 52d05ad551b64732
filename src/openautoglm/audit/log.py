"""``AuditLog``: the writer the request path hands records to, and the log's reading facade.

``record`` only appends to an in-memory buffer (it never awaits the database). A background
task writes the buffer in batches — every ``flush_interval_s``, or at once when ``batch_size``
records are waiting — and signs the chain head every ``checkpoint_interval_s``.

What always holds:
- records of one ``AuditLog`` are chained in the order they were recorded;
- while the store is down, records stay buffered and are retried; beyond ``max_pending`` the
  oldest are dropped and counted in ``dropped`` (the log never grows without bound);
- ``close`` writes everything still buffered before it returns (graceful shutdown).
Durability: ``kill -9`` loses only the records not yet written, at most the last
``flush_interval_s`` (plus any backlog while the store was down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from openautoglm.audit.chain import encode_payload, record_body
from openautoglm.audit.model import GENESIS_HASH, AuditRecord, VerifyReport
from openautoglm.audit.ports import AuditPage, AuditQuery, AuditStore, AuditStoreError, Order
from openautoglm.audit.signing import Checkpoint, CheckpointSigner
from openautoglm.audit.verify import verify_log
from openautoglm.core.clock import Clock

logger = logging.getLogger(__name__)
MAX_RETRY_DELAY_S = 5.0


@dataclass(frozen=True, slots=True)
class AuditLogOptions:
    flush_interval_s: float = 0.2
    batch_size: int = 500
    max_pending: int = 100_000
    checkpoint_interval_s: float = 60.0


def _encodable(record: AuditRecord) -> bool:
    try:
        encode_payload(record_body(record), 1, GENESIS_HASH)
    except (TypeError, ValueError):
        return False
    return True


class AuditLog:
    """Buffers records, writes them in batches, signs checkpoints; reads go to the store."""

    def __init__(
        self,
        store: AuditStore,
        signer: CheckpointSigner,
        clock: Clock,
        options: AuditLogOptions | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.options = options or AuditLogOptions()
        self._clock = clock
        self._buffer: deque[AuditRecord] = deque()
        self._in_flight: list[AuditRecord] = []
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._closing = False
        self._last_checkpoint_seq = 0
        self.written = 0
        self.dropped = 0
        self.last_flush_error: str | None = None

    @property
    def pending(self) -> int:
        """Records recorded and not yet written."""
        return len(self._buffer) + len(self._in_flight)

    # writing

    def record(self, record: AuditRecord) -> None:
        """Queue ``record`` for writing; returns at once and never touches the store.

        Call it on the event loop's thread (the request path does)."""
        self._buffer.append(record)
        if len(self._buffer) + len(self._in_flight) > self.options.max_pending:
            self._drop_oldest()
        if len(self._buffer) >= self.options.batch_size:
            self._wake.set()

    def _drop_oldest(self) -> None:
        excess = min(self.pending - self.options.max_pending, len(self._buffer))
        for _ in range(excess):
            self._buffer.popleft()
        self.dropped += excess
        if self.dropped == excess or self.dropped // 10_000 > (self.dropped - excess) // 10_000:
            logger.error("audit buffer full (store down?): %d records dropped", self.dropped)

    async def flush(self) -> None:
        """Write everything recorded so far; ``AuditStoreError`` if the store fails (the records
        stay buffered for the next try)."""
        async with self._write_lock:
            while self._buffer:
                await self._write_batch()

    async def _write_batch(self) -> None:
        size = min(self.options.batch_size, len(self._buffer))
        batch = [self._buffer.popleft() for _ in range(size)]
        self._in_flight = batch
        try:
            await self.store.append(batch)
        except AuditStoreError as exc:
            self._buffer.extendleft(reversed(batch))
            self.last_flush_error = str(exc) or type(exc).__name__
            raise
        except (TypeError, ValueError):
            # A record that cannot be encoded (a detail that is not JSON) would fail every
            # batch it is in: drop just those and keep the rest for the next batch.
            kept = [record for record in batch if _encodable(record)]
            self._buffer.extendleft(reversed(kept))
            if len(kept) == len(batch):
                raise  # not the records' fault
            self.dropped += len(batch) - len(kept)
            logger.error("dropped %d audit records that cannot be encoded", len(batch) - len(kept))
            return
        except Exception:
            self._buffer.extendleft(reversed(batch))  # keep them for the next try
            raise
        finally:
            self._in_flight = []
        self.written += len(batch)
        self.last_flush_error = None

    # background work

    async def start(self) -> None:
        """Start the flusher and the checkpoint loop (idempotent)."""
        if self._flusher is None:
            self._closing = False
            self._flusher = asyncio.ensure_future(self._flush_loop())
            self._checkpointer = asyncio.ensure_future(self._checkpoint_loop())

    async def close(self) -> None:
        """Stop the loops, write everything still buffered (one last try), sign the head."""
        # The flusher is asked to stop, not cancelled: a batch cancelled mid-write could be
        # committed by the store and still look unwritten here, and be written twice.
        self._closing = True
        self._wake.set()
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        await asyncio.gather(
            *(task for task in (self._flusher, self._checkpointer) if task is not None),
            return_exceptions=True,
        )
        self._flusher = self._checkpointer = None
        try:
            await self.flush()
            await self.checkpoint()  # the next verification is pinned up to here
        except AuditStoreError as exc:
            logger.error("audit log closed with %d records unwritten: %s", self.pending, exc)

    async def _flush_loop(self) -> None:
        delay_s = self.options.flush_interval_s
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return  # close() writes the rest
            try:
                await self.flush()
            except AuditStoreError as exc:
                delay_s = min(delay_s * 2, max(MAX_RETRY_DELAY_S, self.options.flush_interval_s))
                logger.warning("audit flush failed (%d pending), retrying: %s", self.pending, exc)
            except Exception:  # an unexpected bug must not stop auditing: log it, keep trying
                delay_s = min(delay_s * 2, max(MAX_RETRY_DELAY_S, self.options.flush_interval_s))
                self.last_flush_error = "unexpected error (see the log)"
                logger.exception("audit flush failed unexpectedly (%d pending)", self.pending)
            else:
                delay_s = self.options.flush_interval_s

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.checkpoint_interval_s)
            try:
                await self.checkpoint()
            except AuditStoreError as exc:
                logger.warning("audit checkpoint failed: %s", exc)

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the chain head unless it is already signed; the new checkpoint, if any.

        Several replicas may do this at once; a duplicate checkpoint is harmless.
        """
        head = await self.store.head()
        if head is None or head.seq <= self._last_checkpoint_seq:
            return None
        latest = await self.store.latest_checkpoint()
        if latest is not None and latest.seq >= head.seq:
            self._last_checkpoint_seq = latest.seq
            return None
        checkpoint = self.signer.sign(head, self._clock.now(), "periodic")
        await self.store.add_checkpoint(checkpoint)
        self._last_checkpoint_seq = head.seq
        return checkpoint

    # retention

    async def prune(self, before: datetime, chunk_events: int = 10_000) -> int:
        """Delete events older than ``before``; how many.

        Deletes a prefix of the chain, ``chunk_events`` at a time, each chunk in its own
        transaction anchored by a signed ``prune`` checkpoint of its last event, so verification
        starts from a known hash and writers wait for one short transaction at a time.
        """
        total = 0
        while True:
            point = await self.store.prune_point(before, chunk_events)
            if point is None:
                return total
            anchor = self.signer.sign(point, self._clock.now(), "prune")
            deleted = await self.store.prune(anchor)
            if not deleted:
                return total
            total += deleted
            logger.info("audit retention: deleted events up to seq %d", point.seq)

    # reading

    async def verify(self) -> VerifyReport:
        """Check the whole stored log (see ``audit.verify``)."""
        return await verify_log(self.store, self.signer.verifier)

    async def page(
        self,
        query: AuditQuery,
        *,
        limit: int = 100,
        cursor: str | None = None,
        order: Order = "desc",
    ) -> AuditPage:
        return await self.store.page(query, limit=limit, cursor=cursor, order=order)

    async def pages(
        self, query: AuditQuery, *, order: Order = "asc", page_size: int = 1000
    ) -> AsyncIterator[AuditPage]:
        """Every matching event, a page at a time (exports)."""
        cursor: str | None = None
        while True:
            page = await self.store.page(query, limit=page_size, cursor=cursor, order=order)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
