"""Ingest: MQTT subscription, topic parsing, payload decoding and validation,
columnar micro-batches and dead letters."""

from ingest._decode import REASONS, DecodeOptions, DecodeResult, NativeJsonDecoder, TimestampUnit
from ingest._models import AirPayload, TrafficPayload, UnknownFields
from ingest._topics import TopicError, TopicInfo, TopicPattern

__all__ = [
    "REASONS",
    "AirPayload",
    "DecodeOptions",
    "DecodeResult",
    "NativeJsonDecoder",
    "TimestampUnit",
    "TopicError",
    "TopicInfo",
    "TopicPattern",
    "TrafficPayload",
    "UnknownFields",
]
