"""One exit code per kind of error, the same for ``fbnet-server``, ``fbnet-agent`` and ``fbnet-search``.

====  =====================================================================================
0     success
1     the work failed: an export, a measurement on the device, a training run
2     bad input: an argument, a file, a space, an architecture, a table that does not fit
3     the service could not be reached (results are spooled where that applies)
4     the service refused the request (HTTP 4xx: token, unknown device, conflict)
====  =====================================================================================

Library code raises typed errors; the command lines map them to these codes (``fbnet.cli.run``).
"""

from __future__ import annotations

from enum import IntEnum

EXIT_CODES_HELP = ("Exit codes: 0 success, 1 the work failed (export, measurement, training), 2 bad input, "
                   "3 the service could not be reached, 4 the service refused the request.")


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    REFUSED = 4


__all__ = ["EXIT_CODES_HELP", "Exit"]
