"""Webhooks for registry and release events: the signed envelope and the background sender.

An event is written to an outbox (``webhook_deliveries``) in the same transaction that made it;
:class:`WebhookDispatcher` claims due deliveries, POSTs them, and marks each delivered or failed.
Delivery is at least once: a receiver may see a delivery id twice and should ignore repeats.

The contract receivers implement
--------------------------------
Each delivery is an HTTP ``POST`` of a JSON body (UTF-8, keys sorted, no insignificant spaces)::

    {"data": {...}, "event": "version.transitioned", "id": "whd_...", "occurred_at": "2026-...Z"}

with these headers:

- ``Content-Type: application/json; charset=utf-8``
- ``X-AutoGLM-Event``: the event name, e.g. ``alias.moved``
- ``X-AutoGLM-Delivery``: the delivery id (the same as the body's ``id``; stable across retries)
- ``X-AutoGLM-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
  ``HMAC-SHA256(secret, f"{t}.".encode() + raw_body)``, hex-encoded, lowercase.

To verify, a receiver recomputes the HMAC over the raw body bytes exactly as received (before any
JSON parsing), compares it in constant time, and refuses a ``t`` more than five minutes from its
own clock (replays). :func:`verify_signature` does exactly this. Any 2xx answer means delivered;
anything else (or no answer within the webhook's ``timeout_s``) is retried with exponential
backoff, up to the webhook's ``max_attempts``.

Invariants: the bytes sent are the stored payload, unchanged on every retry; a delivery is sent by
one dispatcher at a time (a claim leases it); every attempt is counted before it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from openautoglm.core.clock import Clock

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-AutoGLM-Signature"
EVENT_HEADER = "X-AutoGLM-Event"
DELIVERY_HEADER = "X-AutoGLM-Delivery"
CONTENT_TYPE = "application/json; charset=utf-8"
DEFAULT_TOLERANCE_S = 300
GONE_WEBHOOK_ERROR = "webhook no longer configured"


# --- signing ------------------------------------------------------------------------------------


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _is_unix_seconds(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 12


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-AutoGLM-Signature`` header value for ``body`` sent at ``timestamp`` (unix s)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify_signature(
    secret: str, header: str, body: bytes, now_s: int, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance_s`` of now.

    False for a malformed header, a stale (or far-future) timestamp, or no matching ``v1``.
    Several ``v1`` entries are allowed; any one matching is enough.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not value:
            return False
        if key == "t":
            if timestamp is not None or not _is_unix_seconds(value):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now_s - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, body, timestamp)
    # No early exit: every candidate is compared, each in constant time.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode(), expected.encode())
    return matched


# --- the envelope and the deliveries ----------------------------------------------------------


def envelope(delivery_id: str, event: str, data: Mapping[str, Any], occurred_at: datetime) -> str:
    """The JSON body of a delivery: canonical (sorted keys, compact), non-ASCII kept as is.

    Raises ``ValueError`` for a naive ``occurred_at`` and ``TypeError`` for data that JSON cannot
    hold, so a bad event fails in its own transaction instead of at send time.
    """
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    moment = occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    body = {"id": delivery_id, "event": event, "occurred_at": moment, "data": dict(data)}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one webhook, as the outbox holds it.

    ``attempts`` counts sends started (a claim counts one); ``next_attempt_at`` is None once the
    delivery is finished: delivered (``delivered_at`` set) or given up.
    """

    id: str
    webhook: str
    event: str
    payload: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    created_at: datetime


class WebhookTarget(Protocol):
    """What the dispatcher needs of a webhook (``config.settings.WebhookConfig`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def events(self) -> Sequence[str] | None: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...


def is_subscribed(webhook: WebhookTarget, event: str) -> bool:
    """Whether ``webhook`` wants ``event`` (no list of events: every event)."""
    return webhook.events is None or event in webhook.events


class WebhookOutbox(Protocol):
    """The store of deliveries, as the dispatcher uses it."""

    async def claim_due(self, now: datetime, limit: int, lease_s: float) -> list[Delivery]:
        """Up to ``limit`` deliveries due at ``now``, leased for ``lease_s`` and counted."""
        ...

    async def mark_delivered(self, delivery_id: str, at: datetime) -> None: ...

    async def mark_failed(
        self, delivery_id: str, error: str, next_attempt_at: datetime | None
    ) -> None:
        """Record a failed attempt; retry at ``next_attempt_at`` (None: give up)."""
        ...


# --- the dispatcher ---------------------------------------------------------------------------


class WebhookDispatcher:
    """Sends due deliveries, concurrently, and records each outcome in the outbox.

    The backoff after the n-th failed attempt is ``base_backoff_s * 2 ** (n - 1)``, capped at
    ``max_backoff_s``; with an ``rng`` it is spread by ±10% (replicas retrying a dead receiver do
    not all come back at once), without one it is exact. After the webhook's ``max_attempts``
    attempts the delivery is given up, keeping its last error.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        webhooks: Sequence[WebhookTarget],
        clock: Clock,
        client: httpx.AsyncClient | None = None,
        poll_interval_s: float = 0.5,
        base_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        rng: random.Random | None = None,
        batch_size: int = 32,
        lease_s: float | None = None,
    ) -> None:
        self._outbox = outbox
        self._webhooks = {webhook.name: webhook for webhook in webhooks}
        self._clock = clock
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self.poll_interval_s = poll_interval_s
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self._rng = rng
        self.batch_size = batch_size
        # A lease must outlast the slowest send, or another replica sends the same delivery.
        longest_timeout_s = max((webhook.timeout_s for webhook in webhooks), default=10.0)
        self.lease_s = lease_s if lease_s is not None else longest_timeout_s + 30.0
        self._wake = asyncio.Event()
        self._busy = asyncio.Lock()
        self._closing = False

    def wake(self) -> None:
        """Send what is due now instead of at the next poll (call after enqueueing)."""
        self._wake.set()

    def backoff_s(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        delay_s = min(self.base_backoff_s * 2.0 ** max(attempts - 1, 0), self.max_backoff_s)
        if self._rng is not None:
            delay_s *= self._rng.uniform(0.9, 1.1)
        return delay_s

    async def run_once(self) -> int:
        """Claim what is due, send it, record the outcomes; how many deliveries were attempted."""
        async with self._busy:
            if self._closing:
                return 0
            due = await self._outbox.claim_due(self._clock.now(), self.batch_size, self.lease_s)
            # Every send finishes and is recorded even if recording another one failed.
            outcomes = await asyncio.gather(
                *(self._attempt(delivery) for delivery in due), return_exceptions=True
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return sum(outcome for outcome in outcomes if isinstance(outcome, int))

    async def run(self) -> None:
        """Send deliveries until :meth:`close` (or cancellation), surviving any failure."""
        while not self._closing:
            self._wake.clear()
            attempted = 0
            try:
                attempted = await self.run_once()
            except Exception:  # a store outage must not end delivery: log it, poll again
                logger.exception("webhook dispatch failed; retrying at the next poll")
            if attempted >= self.batch_size:
                continue  # a full batch: more may be due already
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self._wake.wait()

    async def close(self) -> None:
        """Stop :meth:`run` after the batch in flight; close the HTTP client if it is ours."""
        self._closing = True
        self._wake.set()
        async with self._busy:
            if self._owns_client:
                await self._client.aclose()

    async def _attempt(self, delivery: Delivery) -> int:
        webhook = self._webhooks.get(delivery.webhook)
        if webhook is None:
            logger.warning(
                "webhook delivery %s given up: webhook %r is no longer configured",
                delivery.id,
                delivery.webhook,
            )
            await self._outbox.mark_failed(delivery.id, GONE_WEBHOOK_ERROR, None)
            return 0
        if delivery.attempts > webhook.max_attempts:
            # Its last attempt was claimed but never recorded (the sender stopped mid-send).
            await self._give_up(delivery, webhook, delivery.last_error or "attempt interrupted")
            return 0
        error = await self._send(delivery, webhook)
        if error is None:
            await self._outbox.mark_delivered(delivery.id, self._clock.now())
        elif delivery.attempts >= webhook.max_attempts:
            await self._give_up(delivery, webhook, error)
        else:
            retry_at = self._clock.now() + timedelta(seconds=self.backoff_s(delivery.attempts))
            await self._outbox.mark_failed(delivery.id, error, retry_at)
        return 1

    async def _send(self, delivery: Delivery, webhook: WebhookTarget) -> str | None:
        """POST the delivery; None when the receiver accepted it, else what went wrong."""
        body = delivery.payload.encode()
        headers = {
            "Content-Type": CONTENT_TYPE,
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.id,
            SIGNATURE_HEADER: sign(webhook.secret, body, int(self._clock.now().timestamp())),
        }
        try:
            response = await self._client.post(
                webhook.url, content=body, headers=headers, timeout=webhook.timeout_s
            )
        except httpx.TimeoutException:
            return f"no answer within {webhook.timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if response.is_success:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"

    async def _give_up(self, delivery: Delivery, webhook: WebhookTarget, error: str) -> None:
        logger.warning(
            "webhook delivery %s (%s to %r) given up after %d attempts: %s",
            delivery.id,
            delivery.event,
            webhook.name,
            delivery.attempts,
            error,
        )
        await self._outbox.mark_failed(delivery.id, error, None)
