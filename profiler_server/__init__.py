"""The profiler service: stores per-op latency measurements and serves per-device tables (no torch)."""

__version__ = "0.1.0"
