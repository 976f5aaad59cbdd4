"""Outputs: line protocol from columnar batches, and writers for InfluxDB/VictoriaMetrics/files."""

from outputs._files import LineProtocolFileWriter
from outputs._influx import (
    InfluxV1Options,
    InfluxV1Writer,
    InfluxV2Options,
    InfluxV2Writer,
    LineWriter,
    parse_retry_after,
)
from outputs._lineprotocol import (
    EncodedLines,
    InvalidTagError,
    InvalidTagPolicy,
    TagCache,
    WindowAggregatesLike,
    encode_aggregates,
    encode_readings,
    escape_field_key,
    escape_measurement,
    escape_string_field,
    escape_tag,
    tag_set,
    window_label,
)
from outputs._retry import RetryingWriter, RetryPolicy

__all__ = [
    "EncodedLines",
    "InfluxV1Options",
    "InfluxV1Writer",
    "InfluxV2Options",
    "InfluxV2Writer",
    "InvalidTagError",
    "InvalidTagPolicy",
    "LineProtocolFileWriter",
    "LineWriter",
    "RetryPolicy",
    "RetryingWriter",
    "TagCache",
    "WindowAggregatesLike",
    "encode_aggregates",
    "encode_readings",
    "escape_field_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "parse_retry_after",
    "tag_set",
    "window_label",
]
