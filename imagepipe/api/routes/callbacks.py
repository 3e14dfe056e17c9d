"""`POST /internal/callbacks`: the worker reports; the signature is checked here and the
event handed to the index (`api.indexing`), which applies it once.

Signed per Standard Webhooks: the route reads the raw body itself, because the signature
covers its exact bytes, and verifies it before anything parses them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from imagepipe import webhooks
from imagepipe.api.bodies import read_small
from imagepipe.api.deps import ServicesDep
from imagepipe.errors import BadRequest
from imagepipe.models import CallbackEvent

router = APIRouter(tags=["internal"])
MAX_CALLBACK_BYTES = 256 * 1024


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its ``$defs`` references written in place (self-contained)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _documented_request() -> dict[str, Any]:
    """The signed JSON event and its Standard Webhooks headers, for the OpenAPI schema."""
    schema = CallbackEvent.model_json_schema()
    headers = [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
        for name in webhooks.HEADERS
    ]
    body = {"application/json": {"schema": _inline_refs(schema, schema.get("$defs", {}))}}
    return {"parameters": headers, "requestBody": {"required": True, "content": body}}


def _parse(body: bytes) -> CallbackEvent:
    try:
        return CallbackEvent.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(f"not a callback event: {exc.error_count()} error(s)") from None


@router.post("/internal/callbacks", openapi_extra=_documented_request())
async def receive_callback(request: Request, services: ServicesDep) -> dict[str, Any]:
    """A worker's signed report (processing.started | processing.completed | processing.failed)."""
    body = await read_small(request, MAX_CALLBACK_BYTES, "callback body")
    webhook_id = webhooks.verify(services.settings.callback_secrets, request.headers, body)
    outcome = await services.index.apply_once(webhook_id, _parse(body))
    return {"status": outcome, "webhook_id": webhook_id}
