"""The search app: FBNet's differentiable architecture search on a device's latency table.

``config`` holds the typed settings (no torch); ``trainer`` (the search), ``child`` (training an
architecture from scratch), ``supernet``/``superkernels``/``loss``/``sampling``/``select`` (its
parts), ``masking``/``v2_cost`` (DMaskingNAS on the v2 spaces: the masked supernet, the exact
expected latency, FLOPs or parameters), ``data`` and ``dist`` (datasets, torchrun) are the library;
``cli/`` is the ``fbnet-search`` command line, which nothing else imports. Stands on ``fbnet`` only: never imports the agents, the
server or ``db`` (import-linter contracts in pyproject.toml).
"""
