"""The OpenAPI document of the server: request bodies, authentication and error responses.

The endpoints read their JSON bodies themselves (size limit, exact error
messages, unknown fields forwarded untouched), so FastAPI cannot infer their
schemas; :func:`document` adds them from the same pydantic models the
handlers validate with, so the schema a client (or a fuzzer) reads is the one
the server enforces.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from serving.schemas import AnthropicMessagesRequest, FeedbackRequest, OpenAIChatRequest, RouteRequest

REF = "#/components/schemas/{model}"

BODIES: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "/v1/chat/completions": (OpenAIChatRequest, {"model": "thrifty", "messages": [{"role": "user", "content": "hello"}]}),
    "/v1/messages": (AnthropicMessagesRequest,
                     {"model": "thrifty", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}),
    "/v1/route": (RouteRequest, {"model": "thrifty", "prompt": "hello"}),
    "/v1/feedback": (FeedbackRequest, {"decision_id": "dec_0", "success": 1}),
}

ERROR = {
    "description": "An error, in the endpoint's style (OpenAI: {error: {message, type, param, code}}; "
                   "Anthropic: {type: error, error: {type, message}})",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
ERRORS = {
    "400": ERROR, "401": ERROR, "404": ERROR, "413": ERROR,
    "429": {**ERROR, "description": "Rate limited upstream, or over the client's budget (code budget_exceeded)"},
    "502": ERROR, "503": ERROR, "504": ERROR,
}


def document(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe request bodies, the API key schemes and error responses."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "a router API key (OpenAI SDKs)"},
            "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                          "description": "a router API key (Anthropic SDKs)"},
        }
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if path.startswith("/v1/"):
                    operation["security"] = [{"bearer": []}, {"x-api-key": []}]
                    operation.setdefault("responses", {}).update(
                        {k: v for k, v in ERRORS.items() if k not in operation["responses"]})
                if method == "post" and path in BODIES:
                    model, example = BODIES[path]
                    body = model.model_json_schema(ref_template=REF)
                    schemas.update(body.pop("$defs", {}))
                    schemas[model.__name__] = body
                    operation["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)},
                                                          "example": example}},
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
