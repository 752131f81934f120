"""The profiler service (no torch): stores devices, runs and measurements and serves per-device
latency tables, the FBNetV2 grids with their fitted entries, comparisons, plots and pages.

``app`` wires ``config`` (settings), ``middleware`` (the gate before every route), ``auth`` and
``deps`` (who is calling, injected), ``routes/`` (thin HTTP handlers), ``domain/`` (what they call),
``ui/`` (read-only pages) and ``plots``; ``launcher`` starts the service as a local subprocess (the
demo, benchmarks and tests); ``cli`` is ``fbnet-server``. Stands on ``fbnet`` and ``db``; never
imports the agents or the search.
"""

__version__ = "0.1.0"
