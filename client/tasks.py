"""Background tasks that live as long as an ``open_*`` context manager.

:func:`open_service_nursery` is the one place where user code runs inside a nursery. A plain
nursery would wrap an exception raised by the ``async with`` body into an ``ExceptionGroup``
(Trio's strict groups), so callers would have to catch ``ReplyError`` through ``except*``.
Here the body's exception is taken out of the nursery, the background tasks are cancelled,
and the exception is raised again, unwrapped, once the nursery has closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_service_nursery"]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """Yield a nursery for background tasks; cancel them when the body ends.

    An exception from the body propagates as itself, not inside an ``ExceptionGroup``.
    """
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:  # re-raised below, after the tasks are cancelled
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
