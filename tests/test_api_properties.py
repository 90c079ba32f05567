"""Property-based test against the served OpenAPI schema: no generated request gets a 5xx.

Bodies are generated from ``/openapi.json`` (the request schema of each POST route, with
``$ref`` resolved) by hypothesis, then mutated (wrong types, dropped fields); the server must
answer every one with 200 or a 4xx naming a field. Bounded: a fixed number of examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import body

from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.settings import Settings

_TIMES = st.sampled_from(
    [
        "2026-01-05T08:12:00Z",
        "2026-01-05T09:00:00+02:00",
        "2026-01-05T08:12:00",  # zone-less
        "2025-12-31T23:59:59.999999Z",
        "not a time",
        "1900-01-01T00:00:00Z",
    ]
)
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)


def _strategy(
    schema: dict[str, Any], defs: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        return _strategy(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth)
    if depth > 6:
        return st.none()
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([_strategy(s, defs, depth + 1) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {
            name: _strategy(sub, defs, depth + 1) for name, sub in props.items() if name in required
        }
        optional = {
            name: _strategy(sub, defs, depth + 1)
            for name, sub in props.items()
            if name not in required
        }
        return st.fixed_dictionaries(fields, optional=optional)
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*[_strategy(s, defs, depth + 1) for s in schema["prefixItems"]]).map(
                list
            )
        return st.lists(_strategy(schema.get("items", {}), defs, depth + 1), max_size=3)
    if kind == "string":
        if schema.get("format") == "date-time":
            return _TIMES
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(max_size=20)
    if kind == "integer":
        return st.integers(
            min_value=int(schema.get("minimum", -(10**6))) - 2,
            max_value=min(int(schema.get("maximum", 10**13)), 10**13) + 2,
        )
    if kind == "number":
        return st.floats(min_value=-10.0, max_value=1e6, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _ANY


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[str, dict[str, Any]]]:
    with BackgroundServer(create_app(Settings(model=None))) as server:
        schema = httpx.get(server.url + "/openapi.json").json()
        yield server.url, schema


def _request_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    return schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def _mutate(value: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Replace a random leaf of a valid body with an arbitrary value, or drop it."""
    path: list[Any] = []
    node: Any = value
    while isinstance(node, dict | list) and node:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        path.append(key)
        if data.draw(st.booleans()):
            break
        node = node[key]
    if not path:
        return value
    parent: Any = value
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        parent.pop(path[-1])
    else:
        parent[path[-1]] = data.draw(_ANY)
    return value


def test_openapi_lists_the_routes(api: tuple[str, dict[str, Any]]) -> None:
    _, schema = api
    for path in ("/v1/retry-decisions", "/v1/retry-decisions/batch", "/healthz", "/metrics"):
        assert path in schema["paths"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_schema_generated_bodies_never_get_a_5xx(
    api: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    url, schema = api
    defs = schema["components"]["schemas"]
    path = data.draw(st.sampled_from(["/v1/retry-decisions", "/v1/retry-decisions/batch"]))
    payload = data.draw(_strategy(_request_schema(schema, path), defs))
    r = httpx.post(url + path, json=payload, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.json()["detail"][0]["field"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_valid_bodies_never_get_a_5xx(
    api: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    url, _ = api
    n = data.draw(st.integers(min_value=1, max_value=4))
    payload = _mutate(body(n_attempts=n), data)
    r = httpx.post(url + "/v1/retry-decisions", json=payload, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code in (200, 422), r.text[:500]
