"""The queue stage: a call waits for one of its model's scheduler slots, or is refused early."""

from __future__ import annotations

import asyncio

from openautoglm.core.types import GenerationRequest
from openautoglm.gateway.policing import Deadline
from openautoglm.gateway.routing import authorised_model, require_inference_role
from openautoglm.gateway.trace import CallTrace
from openautoglm.routing.catalog import ModelCatalog, ServedModel
from openautoglm.scheduling.slot import Slot
from openautoglm.tenancy.model import Principal


async def take_slot(
    catalog: ModelCatalog,
    model: ServedModel,
    principal: Principal,
    request: GenerationRequest,
    trace: CallTrace,
    deadline: Deadline | None,
) -> Slot | None:
    """Wait for one of ``model``'s slots (priority, then deadline, tenant fair share), or be
    refused at once (503 ``queue_full`` / ``deadline_unreachable``, 504 past the deadline).
    ``None`` when the model has no scheduler."""
    scheduler = model.scheduler
    if scheduler is None:
        return None
    require_inference_role(principal)
    authorised_model(catalog, principal, model.name)  # never queue what would be refused
    timeout_s = None
    if deadline is not None:
        timeout_s = deadline.at - asyncio.get_running_loop().time()
    priority = model.resilience.default_priority
    if request.priority is not None:
        priority = request.priority
    ticket = scheduler.new_ticket(
        request.request_id, principal.tenant_id, priority=priority, timeout_s=timeout_s
    )
    with trace.stage("queue"):
        return await scheduler.acquire(ticket)
