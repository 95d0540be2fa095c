"""Back-pressure between peers: a mixin of :class:`farm.server.connection.Connection`.

A connection whose peer does not read its replies (the transport passed its high-water
mark) is not read either, so one slow reader cannot make the server buffer without
bound; a worker streaming WORK_DATA or WARNING to such a client is not read until that
client has drained. The state lives on the connection (``Connection.__init__``).
"""

from __future__ import annotations

import asyncio

from farm.server.jobs import Job


class BackPressure:
    """Who waits for whose reader (see the module docstring)."""

    # The connection's, read and written here (declared for the type checker).
    transport: asyncio.Transport | None
    closed: bool
    write_paused: bool
    reading: bool
    waiting_on: set[BackPressure]
    held_back: set[BackPressure]

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop reading its requests until it does.
        self.write_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.update_reading()
        self.release_held_back()

    def update_reading(self) -> None:
        want = not (self.write_paused or self.waiting_on)
        if want == self.reading or self.closed or self.transport is None:
            return
        self.reading = want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def wait_for_readers(self, job: Job) -> None:
        """Stop reading this worker until the clients of ``job`` that stopped reading
        (their transport past the high-water mark) have drained what they were sent."""
        for client in job.clients:
            if not isinstance(client, BackPressure) or client is self or client.closed:
                continue
            if client.write_paused:
                client.held_back.add(self)
                self.waiting_on.add(client)
        self.update_reading()

    def release_held_back(self) -> None:
        held, self.held_back = self.held_back, set()
        for worker in held:
            worker.waiting_on.discard(self)
            worker.update_reading()
