"""redis-client's base: RESP engine, command table, connections and the cluster client.

``tunnel`` and ``fill`` build on this package; it never imports them. The CLI lives here too
(``client.shell``), because it is a client.
"""

from __future__ import annotations

__all__: list[str] = []
