"""The device agents: export the ops of a search space, time them on a target, upload the statistics;
validate whole models against a table.

``targets`` (where programs run: the typed ``Target``) and ``transports/`` (host, native, adb, iOS),
``protocol`` (the measurement protocol under noise: the typed ``ProtocolConfig``), ``exporters``,
``profiling`` (the profile flow), ``validate`` (the whole-model flow), ``perlayer``, ``uploader``
(spool and resume over :mod:`fbnet.client`) are the library; ``cli`` is ``fbnet-agent``, which
nothing else imports. Stands on ``fbnet`` only: never imports the search, the server or ``db``.
"""

__version__ = "0.1.0"
