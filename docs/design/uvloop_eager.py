"""Q3 of docs/design/upstream-pool.md: mitmproxy's eager task factory on uvloop.
PYTHONPATH=<uvloop 0.22.1 or 0.23.0> .venv/bin/python docs/design/uvloop_eager.py [wrap|naive]"""
import asyncio
import sys


def eager_factory(task_constructor):  # asyncio.create_eager_task_factory's shape (anyio looks
    def factory(loop, coro, *, eager_start=None, **kwargs):  # for it), + uvloop's eager_start
        return task_constructor(coro, loop=loop, eager_start=True, **kwargs)
    return factory

if "wrap" in sys.argv:  # before mitmproxy/anyio/httpx are imported
    asyncio.eager_task_factory = eager_factory(asyncio.Task)
elif "naive" in sys.argv:  # a plain function: anyio does not recognise it as the eager factory
    asyncio.eager_task_factory = lambda loop, coro, eager_start=None, **kw: asyncio.Task(
        coro, loop=loop, eager_start=True, **kw)
import httpx  # noqa: E402
import uvloop  # noqa: E402
from mitmproxy.utils import asyncio_utils  # noqa: E402


async def main():
    with asyncio_utils.set_eager_task_factory():  # what mitmproxy's Master.run does
        try:
            asyncio_utils.create_task(asyncio.sleep(0), name="t", keep_ref=True)
            async with httpx.AsyncClient() as client:  # anyio task groups under the factory
                outcome = await client.get("http://127.0.0.1:9/")
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
    print(sys.version.split()[0], "uvloop", uvloop.__version__, sys.argv[1:], "->", outcome)

uvloop.run(main())
