"""The ``tunn`` mode: local plaintext listeners relaying to Redis behind TLS.

Modules: :mod:`tunnel.rewrite` and :mod:`tunnel.tracking` are pure (bytes in, bytes out);
:mod:`tunnel.relay` moves the bytes of one client connection; :mod:`tunnel.server` owns the
listeners, the pinned listener table and shutdown; :mod:`tunnel.main` is the mode's entry.
"""

from __future__ import annotations

__all__: list[str] = []
