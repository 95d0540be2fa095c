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
