"""The OpenAPI 3.1 document of the JSON API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["OPENAPI"]

_CATEGORY: Final = {
    "type": ["object", "null"],
    "properties": {
        "name": {"type": "string", "description": "official name (ISPU: Indonesian)"},
        "name_en": {"type": "string"},
        "colour": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
    },
}

_SENSOR: Final = {
    "type": "object",
    "required": ["id", "kind", "district", "registered", "values", "dead"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["air", "traffic", ""]},
        "city": {"type": "string"},
        "district": {"type": "string"},
        "registered": {"type": "boolean", "description": "listed in the sensor registry"},
        "lat": {"type": ["number", "null"]},
        "lon": {"type": ["number", "null"]},
        "model": {"type": "string"},
        "install_date": {"type": ["string", "null"], "format": "date"},
        "values": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "newest value per metric (FIWARE names, canonical units)",
        },
        "last_ts_ns": {"type": ["integer", "null"]},
        "dead": {"type": "boolean", "description": "not heard from within dead_after_s"},
        "ispu": {"type": ["number", "null"]},
        "ispu_category": {"$ref": "#/components/schemas/Category"},
        "ispu_dominant": {"type": ["string", "null"]},
        "aqi": {"type": ["number", "null"]},
        "aqi_category": {"$ref": "#/components/schemas/Category"},
        "los": {"type": ["string", "null"], "enum": ["A", "B", "C", "D", "E", "F", None]},
    },
}

_DISTRICT: Final = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "district": {"type": "string"},
        "sensors": {"type": "integer"},
        "live_sensors": {"type": "integer"},
        "ispu": {"type": ["number", "null"]},
        "ispu_category": {"$ref": "#/components/schemas/Category"},
        "ispu_dominant": {"type": ["string", "null"]},
        "aqi": {"type": ["number", "null"]},
        "aqi_category": {"$ref": "#/components/schemas/Category"},
        "congestion": {
            "type": ["number", "null"],
            "description": "share of live traffic stations at level of service E or F",
        },
        "traffic_stations": {"type": "integer"},
        "open_alerts": {"type": "integer"},
    },
}

_EVENT: Final = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "detector": {"type": "string"},
        "state": {"enum": ["start", "end", "change"]},
        "severity": {"enum": ["info", "warning", "critical"]},
        "city": {"type": "string"},
        "district": {"type": "string"},
        "sensor_id": {"type": "string"},
        "metric": {"type": "string"},
        "value": {"type": ["number", "null"]},
        "event_ns": {"type": "integer"},
        "detected_ns": {"type": "integer"},
        "message": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list(name: str, ref: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "array", "items": {"$ref": ref}}}}


_NOT_IMPLEMENTED: Final = {
    "501": _ok({"$ref": "#/components/schemas/Error"}, "needs the alerts package")
}

OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "UrbanPulse live API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Category": _CATEGORY,
            "Sensor": _SENSOR,
            "District": _DISTRICT,
            "Event": _EVENT,
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {
            "get": {
                "summary": "process alive",
                "security": [],
                "responses": {"200": _ok({"type": "object"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "broker connected and outputs healthy",
                "responses": {
                    "200": _ok({"type": "object"}),
                    "503": _ok({"type": "object"}, "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
            }
        },
        "/api/sensors": {
            "get": {
                "summary": "every known sensor (registered or seen), newest values and indices",
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("kind", "district", "city", "registered")
                ],
                "responses": {"200": _ok(_list("sensors", "#/components/schemas/Sensor"))},
            }
        },
        "/api/sensors/{id}": {
            "get": {
                "summary": "one sensor, with its open alerts",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok({"$ref": "#/components/schemas/Sensor"}),
                    "404": _ok({"$ref": "#/components/schemas/Error"}, "unknown sensor"),
                },
            }
        },
        "/api/districts": {
            "get": {
                "summary": "per-district ISPU, dominant pollutant, AQI, congestion, open alerts",
                "responses": {"200": _ok(_list("districts", "#/components/schemas/District"))},
            }
        },
        "/api/alerts": {
            "get": {
                "summary": (
                    "open alerts from the alerts dispatcher (state, acked_by, "
                    "silenced_until_ns); without a dispatcher, open detector conditions"
                ),
                "responses": {"200": _ok(_list("alerts", "#/components/schemas/Event"))},
            }
        },
        "/api/alerts/{id}/ack": {
            "post": {
                "summary": 'acknowledge an alert by fingerprint; body {"by": name, "comment": text}'
                " (501 without an alerts dispatcher)",
                "responses": _NOT_IMPLEMENTED,
            }
        },
        "/api/alerts/{id}/silence": {
            "post": {
                "summary": 'silence an alert\'s series; body {"duration_s": s, "by": name}'
                " (501 without an alerts dispatcher)",
                "responses": _NOT_IMPLEMENTED,
            }
        },
        "/api/events": {
            "get": {
                "summary": "recent events (the feed)",
                "responses": {"200": _ok(_list("events", "#/components/schemas/Event"))},
            }
        },
        "/api/stream": {
            "get": {
                "summary": "server-sent events: one 'snapshot', then coalesced 'update' messages",
                "responses": {"200": {"description": "OK", "content": {"text/event-stream": {}}}},
            }
        },
    },
}
