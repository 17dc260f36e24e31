"""``redis-client fill``: bulk-load a Redis server or cluster with exact, verified key counts.

* :mod:`fill.plan` (pure): flags -> settings -> jobs, chunks and key layout (the arithmetic).
* :mod:`fill.payload` (pure): pre-built SET batches, written column-wise at C speed.
* :mod:`fill.progress`: counters, live/plain progress and the summary.
* :mod:`fill.runner` (Trio): flush, blast with CLIENT REPLY OFF, watch errorstats, verify.
* :mod:`fill.auth`: logins per target, re-AUTH of live connections, worker login updates.
* :mod:`fill.main`: the ``fill`` mode (flags, ``MODE``).
"""

from __future__ import annotations

__all__: list[str] = []
