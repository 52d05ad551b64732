"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from openautoglm.api.context import services_of
from openautoglm.api.responses import json_response

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: the store answers and at least one model is healthy")
async def readyz(request: Request) -> Response:
    services = services_of(request)
    checks: dict[str, bool] = {}
    try:
        async with services.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["store"] = True
    except (SQLAlchemyError, OSError):
        checks["store"] = False
    models = {
        model.name: any([await instance.backend.health() for instance in model.instances])
        for model in services.catalog
    }
    ready = checks["store"] and any(models.values())
    body = {"status": "ready" if ready else "not_ready", "store": checks["store"], "models": models}
    response = json_response(body)
    response.status_code = 200 if ready else 503
    return response


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(services_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
