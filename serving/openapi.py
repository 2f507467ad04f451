"""The OpenAPI document the service serves at /docs.json: BentoML's, completed.

BentoML's document has no security scheme and lists only its generic errors;
`complete_openapi` adds the bearer scheme and the responses each operation really gives
(installed by `serving.bentoml_fixes.document_openapi`).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from serving.auth import OPEN_PATHS
from serving.schemas import ErrorBody, Unauthorized

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_REF = "#/components/schemas/{model}"


def _response(description: str, model: str) -> dict[str, Any]:
    schema = {"$ref": _REF.format(model=model)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document plus the bearer scheme and the real error responses.

    Every operation except the open probes needs ``Authorization: Bearer <key>`` (the
    global ``security``; the probes and /metrics say ``security: []``) and documents:
    401 (`Unauthorized`), 422 and 503 (`ErrorBody`); POST bodies also 400 (malformed
    body) and 413 (over a request limit or the body size), GET /accounts 413 (limit),
    the per-account paths 404 (no stored score). BentoML's generic 404 is dropped
    where it cannot happen.
    """
    comps = spec.setdefault("components", {})
    schemas = comps.setdefault("schemas", {})
    _, defs = models_json_schema([(ErrorBody, "serialization"), (Unauthorized, "serialization")],
                                 ref_template=_REF)  # fmt: skip
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    comps["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "The service's API key (CSHEALTH_API_KEY): "
                       "`Authorization: Bearer <key>`."}}  # fmt: skip
    spec["security"] = [{"bearerAuth": []}]
    for path, item in spec.get("paths", {}).items():
        for method in _HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            responses = {str(k): v for k, v in (op.get("responses") or {}).items()}
            op["responses"] = responses
            if path in OPEN_PATHS:
                op["security"] = []
                continue
            responses["401"] = _response(
                "Missing, malformed or wrong API key (send 'Authorization: Bearer <key>').",
                "Unauthorized")  # fmt: skip
            responses["422"] = _response(
                "Invalid input, naming the field: loc, msg and type per problem.", "ErrorBody"
            )
            responses["503"] = _response(
                "Not ready (models or store loading) or the score store unreachable; "
                "retry after the Retry-After seconds.", "ErrorBody")  # fmt: skip
            if method == "post":
                responses["400"] = _response("Malformed JSON or a body not matching the "
                                             "schema, naming the field.", "ErrorBody")  # fmt: skip
                responses["413"] = _response(
                    "Over a request limit (serving.max_ids_per_request / "
                    "max_rows_per_request) or the body over serving.max_body_bytes.",
                    "ErrorBody")  # fmt: skip
            if path == "/accounts":
                responses["413"] = _response("limit over max_ids_per_request.", "ErrorBody")
            if "{account_id}" in path:
                responses["404"] = _response("No stored score for this account.", "ErrorBody")
            else:
                responses.pop("404", None)
            op["responses"] = dict(sorted(responses.items()))
    return spec
