"""What all requests share besides the model: the pixels being decoded at once, and the memory
handed back to the system after a burst of large images."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import time
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MemoryTrimmer", "PixelBudget"]


class PixelBudget:
    """Pixels being decoded at once, all requests together: a request waits until its image's
    pixels fit (an image over the whole budget waits until nothing else is decoding).

    ``run`` holds an image's share until its decoding *thread* ends, not until the request does:
    a request that times out (or whose client leaves) stops waiting, but its decode runs on, and
    giving its share back then let new decodes pile on top (3.7 GB from 13 MB of requests)."""

    def __init__(self, limit: int, executor: ThreadPoolExecutor):
        self.limit, self.used, self.executor = limit, 0, executor
        self.changed = asyncio.Condition()

    async def run(self, pixels: int, function, *arguments):
        """``function(*arguments)`` in a decoding thread once ``pixels`` fit in the budget."""
        pixels = min(pixels, self.limit)
        async with self.changed:
            await self.changed.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        loop = asyncio.get_running_loop()
        try:
            work = self.executor.submit(function, *arguments)
        except BaseException:
            await self._give_back(pixels)
            raise
        work.add_done_callback(lambda _: self._decoded(loop, pixels))
        return await asyncio.wrap_future(work)

    def _decoded(self, loop: asyncio.AbstractEventLoop, pixels: int) -> None:
        """In the decoding thread, when it is done: the share goes back on the server's loop."""
        with contextlib.suppress(RuntimeError):  # the server stopped first: nothing to give back to
            loop.call_soon_threadsafe(lambda: loop.create_task(self._give_back(pixels)))

    async def _give_back(self, pixels: int) -> None:
        async with self.changed:
            self.used -= pixels
            self.changed.notify_all()


class MemoryTrimmer:
    """Hands freed memory back to the system after a burst of large images: glibc keeps freed
    decode buffers in its arenas (its effect alone is not measured: bench/serve_attack.py measures
    the server with it, +5% a minute after an attack). Runs
    ``malloc_trim(0)`` once decoding has been quiet for a moment after at least ``after_pixels``."""

    def __init__(self, after_pixels: int = 50_000_000, quiet_s: float = 2.0):
        self.after_pixels, self.quiet_s = after_pixels, quiet_s
        self.decoded_pixels, self.last_decode = 0, time.monotonic()
        library = ctypes.util.find_library("c")
        self.trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
        self.task: asyncio.Task | None = None

    def note(self, pixels: int) -> None:
        self.decoded_pixels += pixels
        self.last_decode = time.monotonic()

    def start(self) -> None:
        if self.trim is not None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.quiet_s)
            quiet = time.monotonic() - self.last_decode >= self.quiet_s
            if quiet and self.decoded_pixels >= self.after_pixels:
                self.decoded_pixels = 0
                await asyncio.to_thread(self.trim, 0)
