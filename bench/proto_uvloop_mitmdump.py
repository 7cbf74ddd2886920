"""mitmdump on uvloop, with the task-factory workaround (docs/design/upstream-pool.md, Q3).

uvloop 0.23's ``Loop.create_task`` (loop.pyx, its PY313 branch) calls the task factory as
``factory(loop, coro, context=..., eager_start=...)``; Python 3.13's
``asyncio.eager_task_factory`` (asyncio/tasks.py ``create_eager_task_factory``) takes only
``name`` and ``context``: TypeError at mitmproxy's first ``create_task`` once ``Master.run``
has installed that factory (mitmproxy/utils/asyncio_utils.py ``set_eager_task_factory``).

The replacement keeps the *shape* of ``create_eager_task_factory``'s closure (first cell: the
task constructor) because anyio (httpx's backend) recognises the eager factory by its
``__code__``, taken from ``asyncio.eager_task_factory`` when anyio's asyncio backend is
imported, and then starts its task-group tasks non-eagerly; a factory it does not recognise
breaks its cancel scopes. So it is installed before anything imports anyio.
"""

import asyncio
import sys


def _eager_factory(task_constructor):
    def factory(loop, coro, *, eager_start=None, **kwargs):
        return task_constructor(coro, loop=loop, eager_start=True, **kwargs)
    return factory


asyncio.eager_task_factory = _eager_factory(asyncio.Task)

import uvloop  # noqa: E402

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

from mitmproxy.tools.main import mitmdump  # noqa: E402

sys.exit(mitmdump())
