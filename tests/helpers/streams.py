"""Jobs flowing through a running farm while it is changed, and what it runs now."""

from __future__ import annotations

import threading

from farm.client import Client
from tests.helpers.farmproc import FarmUp


class JobStream:
    """Clients submitting jobs back to back until stopped; every answer is checked."""

    def __init__(self, addr: str, clients: int = 3) -> None:
        self.addr = addr
        self.done = 0
        self.errors: list[BaseException] = []
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, n: int) -> None:
        client = Client(self.addr)
        try:
            i = 0
            while not self.halt.is_set():
                payload = f"{n}:{i}:" + "x" * (i % 50)
                assert client.call("hash", f"2000 00\n{payload}", timeout=15)
                assert client.call("reverse", payload, timeout=15) == payload[::-1].encode()
                self.done += 2
                i += 1
        except BaseException as e:  # reported by stop()
            self.errors.append(e)
        finally:
            client.close()

    def stop(self) -> int:
        self.halt.set()
        for t in self.threads:
            t.join(20)
        assert not self.errors, self.errors
        return self.done


def running(up: FarmUp) -> dict[str, int]:
    """Workers idle or busy per pool; {} while any is starting (not yet counted)."""
    counts: dict[str, int] = {}
    for row in up.workers():
        if row["state"] in ("idle", "busy"):
            counts[row["function"]] = counts.get(row["function"], 0) + 1
        elif row["state"] != "draining":
            return {}  # still starting
    return counts


def call_in_thread(
    addr: str, function: str, data: str, timeout: float
) -> tuple[threading.Thread, list[object]]:
    """One ``Client.call`` in a thread of its own, started; the list gets its result, or
    what it raised (for the test to report once the thread is joined)."""
    result: list[object] = []

    def call() -> None:
        with Client(addr) as client:
            try:
                result.append(client.call(function, data, timeout=timeout))
            except BaseException as e:  # reported by the test
                result.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result
