"""A ``Gateway`` over in-memory stores, for tests that drive the request path without HTTP."""

from __future__ import annotations

from collections.abc import Sequence

from openautoglm.contexts.ports import InMemoryContextStore
from openautoglm.contexts.service import ContextService
from openautoglm.core.clock import Clock
from openautoglm.gateway.conversation import Conversations
from openautoglm.gateway.limiting import RequestLimits
from openautoglm.gateway.pipeline import Gateway
from openautoglm.limits.ports import InMemoryRateLimiter
from openautoglm.observability.metrics import GatewayMetrics
from openautoglm.policy.service import PolicyService
from openautoglm.routing.catalog import ModelCatalog, ServedModel
from openautoglm.tenancy.auth import Authenticator
from openautoglm.tenancy.ports import InMemoryTenancyStore


def in_memory_gateway(
    models: Sequence[ServedModel], clock: Clock, policies: PolicyService | None = None
) -> Gateway:
    catalog = ModelCatalog(models, None)
    return Gateway(
        catalog,
        Authenticator(InMemoryTenancyStore(), clock),
        GatewayMetrics(lambda: catalog.instances, lambda: list(catalog)),
        RequestLimits(InMemoryRateLimiter(clock)),
        Conversations(ContextService(InMemoryContextStore(), clock)),
        policies=policies,
    )
