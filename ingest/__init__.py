"""Ingest: MQTT subscription, topic parsing, payload decoding and validation,
columnar micro-batches and dead letters."""

from ingest._codecs import CODEC_REASONS, CodecName, CodecRule
from ingest._decode import (
    NATIVE_REASONS,
    REASONS,
    DecodeOptions,
    DecodeResult,
    NativeJsonDecoder,
    RadioBatch,
    TimestampUnit,
)
from ingest._models import AirPayload, TrafficPayload, UnknownFields
from ingest._shard import ShardBy, ShardFilter, ShardSpec, shard_key, shard_of
from ingest._topics import TopicError, TopicInfo, TopicPattern
from ingest._units import Unit, normalise_units

__all__ = [
    "CODEC_REASONS",
    "NATIVE_REASONS",
    "REASONS",
    "AirPayload",
    "CodecName",
    "CodecRule",
    "DecodeOptions",
    "DecodeResult",
    "NativeJsonDecoder",
    "RadioBatch",
    "ShardBy",
    "ShardFilter",
    "ShardSpec",
    "TimestampUnit",
    "TopicError",
    "TopicInfo",
    "TopicPattern",
    "TrafficPayload",
    "Unit",
    "UnknownFields",
    "normalise_units",
    "shard_key",
    "shard_of",
]
