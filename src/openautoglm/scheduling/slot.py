"""A held model slot: the right to run one request, released exactly once.

Invariant: ``on_release`` is called at most once per slot, however often ``release`` is called,
so a double release (or a release racing a cancellation) can never free two slots.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from openautoglm.scheduling.ticket import Ticket


class Slot:
    """The right to run one request on the model. Release it once; later calls do nothing.

    As a context manager it releases on exit, ``ok`` when no exception left the block.
    """

    __slots__ = ("_on_release", "admitted_at", "released", "ticket", "waited_s")

    def __init__(
        self,
        ticket: Ticket,
        admitted_at: float,
        waited_s: float,
        on_release: Callable[[Slot, bool], None],
    ) -> None:
        self._on_release = on_release
        self.ticket = ticket
        self.admitted_at = admitted_at
        self.waited_s = waited_s
        self.released = False

    def release(self, ok: bool = True) -> None:
        """Free the slot; ``ok`` feeds the time it was held into the service-time estimate."""
        if self.released:
            return
        self.released = True
        self._on_release(self, ok)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release(ok=exc_type is None)
