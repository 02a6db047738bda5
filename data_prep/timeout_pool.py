"""Worker processes that run one call per input, each call bounded in time.

A Lakh-scale corpus has a few pathological MIDI files (runaway lengths, millions of events) that can keep a worker
busy for minutes; ``multiprocessing.Pool`` cannot stop one call. pebble's ``ProcessPool`` (a maintained, pure-Python
library) can: a call over its ``timeout`` is cancelled, its worker process is killed and replaced (the replacement
runs the initializer again), and the other calls go on. Only a bounded window of calls is scheduled at a time, so
memory stays flat however many inputs there are.
"""
from __future__ import annotations

import itertools
from concurrent.futures import FIRST_COMPLETED, TimeoutError, wait
from typing import Callable, Iterable, Iterator, Optional, Tuple

TIMEOUT = "timeout"  # the error reported for a call that ran past its limit
CRASHED = "crashed"  # the worker process died during the call (e.g. a segfault in a C extension)


def imap_bounded(fn: Callable, items: Iterable, workers: int, timeout: Optional[float],
                 initializer: Optional[Callable] = None, initargs: tuple = (),
                 window: Optional[int] = None) -> Iterator[Tuple[object, object, Optional[object]]]:
    """Yield ``(item, result, error)`` for every item, in completion order.

    ``error`` is None on success, ``TIMEOUT`` when the call ran longer than ``timeout`` seconds (None: no limit),
    ``CRASHED`` when its worker died, or the exception the call raised. ``window`` calls are in flight at most
    (default 4 per worker). Stopping the iteration (an exception in the consumer, Ctrl-C) stops the workers.
    """
    from pebble import ProcessExpired, ProcessPool

    window = window or 4 * workers
    source = iter(items)
    pool = ProcessPool(max_workers=workers, initializer=initializer, initargs=initargs)
    pending = {}

    def schedule(count: int) -> None:
        for item in itertools.islice(source, count):
            pending[pool.schedule(fn, args=(item,), timeout=timeout)] = item

    try:
        schedule(window)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                try:
                    yield item, future.result(), None
                except TimeoutError:
                    yield item, None, TIMEOUT
                except ProcessExpired:
                    yield item, None, CRASHED
                except Exception as err:  # the call's own exception, passed on to the caller to record
                    yield item, None, err
            schedule(len(done))
        pool.close()
    finally:
        pool.stop()  # no-op after close() with nothing pending; kills the workers on an early exit
        pool.join()
