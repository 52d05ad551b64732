"""The route stage: who may call which model, whether the model can take the request, and which
instance serves it (within the caller's allowed regions)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from openautoglm.core.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from openautoglm.core.types import GenerationRequest
from openautoglm.routing.catalog import Instance, ModelCatalog, ServedModel, model_not_found
from openautoglm.tenancy.model import Principal


def authorised_model(catalog: ModelCatalog, principal: Principal, name: str | None) -> ServedModel:
    """The named model, if the caller may use it; otherwise the same 404 as an unknown model."""
    model = catalog.get(name)
    if not principal.may_use_model(model.name):
        # Same answer as an unknown model: a key must not learn what it cannot use.
        raise model_not_found(model.name)
    return model


def require_inference_role(principal: Principal) -> None:
    """Refuse callers whose role may not call models (auditors)."""
    if not principal.role.may_infer:
        raise PermissionDeniedError(
            f"role '{principal.role.value}' may not call models", code="role_forbidden"
        )


def choose_instance(
    catalog: ModelCatalog,
    principal: Principal,
    request: GenerationRequest,
    policy_regions: tuple[str, ...] | None = None,
    exclude: Collection[Instance] = (),
    among: Sequence[Instance] | None = None,
) -> Instance:
    """Authorise and validate ``request`` against its model, then pick an instance (among
    ``among`` when given — one version's instances —, in the key's regions and, when a policy
    names regions, only in those)."""
    require_inference_role(principal)
    model = authorised_model(catalog, principal, request.model)
    capabilities = model.capabilities
    if not (capabilities.chat or capabilities.completion):
        raise InvalidRequestError(
            f"model '{model.name}' is an embedding model: use /v1/embeddings",
            code="unsupported_endpoint",
            param="model",
        )
    if request.kind == "chat" and not capabilities.chat:
        raise InvalidRequestError(
            f"model '{model.name}' does not support chat completions; use /v1/completions",
            code="unsupported_endpoint",
        )
    if request.kind == "completion" and not capabilities.completion:
        raise InvalidRequestError(
            f"model '{model.name}' does not support text completions", code="unsupported_endpoint"
        )
    if request.has_images and not capabilities.vision:
        raise InvalidRequestError(
            f"model '{model.name}' does not accept image input",
            code="image_input_not_supported",
            param="messages",
        )
    if among is not None and not among:
        raise ServiceUnavailableError(
            f"model '{model.name}' has no instance of the version this call was routed to",
            code="no_healthy_instance",
        )
    if principal.allowed_regions is None and policy_regions is None:
        return model.pick(among=among, key=request.context_id, exclude=exclude)
    allowed = [
        i
        for i in (model.instances if among is None else among)
        if principal.may_use_region(i.config.region)
        and (policy_regions is None or i.config.region in policy_regions)
    ]
    if not allowed:
        regions = principal.allowed_regions if policy_regions is None else policy_regions
        raise PermissionDeniedError(
            f"no instance of model '{model.name}' is in a region this "
            f"{'key' if policy_regions is None else 'policy'} allows ({', '.join(regions or ())})",
            code="region_not_allowed",
        )
    return model.pick(among=allowed, key=request.context_id, exclude=exclude)
