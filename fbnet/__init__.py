"""fbnet: the core every app stands on.

- :mod:`fbnet.space`  spaces, ops, op keys, architectures as text (no torch)
- :mod:`fbnet.wire`   the pydantic wire contract of the HTTP API (no torch)
- :mod:`fbnet.lut`    a served table -> latency matrix, ``predict`` (no torch)
- :mod:`fbnet.client` the one client of the service: typed calls, auth, retries, table cache (no torch)
- :mod:`fbnet.blocks` the torch block registry (torch)
- :mod:`fbnet.export` a module -> ``.pte`` / ``.mlpackage`` (torch, executorch, coremltools)

The apps (``profiler_server``, ``device_agents``, ``search``) import this package and never each
other; this package imports none of them.
"""

__version__ = "0.2.0"
