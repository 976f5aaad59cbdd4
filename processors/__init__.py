"""Stream processors over columnar ``ReadingBatch`` micro-batches."""

from processors._windows import (
    DEFAULT_WINDOW_SPECS,
    MultiWindows,
    TumblingWindows,
    WindowAggregates,
    WindowPartials,
    WindowSpec,
    WindowState,
    WindowUpdate,
    close_horizon,
    finalize,
    merge_partials,
    partial_aggregate,
    series_metric,
)

__all__ = [
    "DEFAULT_WINDOW_SPECS",
    "MultiWindows",
    "TumblingWindows",
    "WindowAggregates",
    "WindowPartials",
    "WindowSpec",
    "WindowState",
    "WindowUpdate",
    "close_horizon",
    "finalize",
    "merge_partials",
    "partial_aggregate",
    "series_metric",
]
