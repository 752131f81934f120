"""fbnet: the core every app stands on. Imported by the three apps and ``db``; imports none of them.

- :mod:`fbnet.space`, :mod:`fbnet.ops`, :mod:`fbnet.arch`: FBNet spaces, op keys, architectures as text (no torch)
- :mod:`fbnet.space_v2`, :mod:`fbnet.ops_v2`, :mod:`fbnet.arch_v2`: the FBNetV2 spaces over widths,
  expansions and resolutions, their op configurations and the released F/L models (no torch)
- :mod:`fbnet.configuration`: what a table was measured under, and the selector that picks one
- :mod:`fbnet.wire`: the pydantic wire contract of the HTTP API (a package; no torch)
- :mod:`fbnet.lut`: a served table -> latency matrix, ``predict``; the one home of the table maths (no torch)
- :mod:`fbnet.client`: the one client of the service: typed calls, auth, retries, table cache (no torch)
- :mod:`fbnet.blocks`: the torch block registry (torch); :mod:`fbnet.export`: a module -> ``.pte`` / ``.mlpackage``
- :mod:`fbnet.progress`, :mod:`fbnet.exitcodes`: the progress factory and exit codes the apps share
- :mod:`fbnet.cli`, :mod:`fbnet.options`: typed configs as command-line options; only command
  lines import :mod:`fbnet.cli` (an import-linter contract)
"""

__version__ = "0.2.0"
