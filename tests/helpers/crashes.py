"""Background submits pouring in while a process is SIGKILLed under them."""

from __future__ import annotations

import signal
import subprocess
from typing import Protocol

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.servers import connect


class Victim(Protocol):
    """What gets killed: a job server, or a supervisor in front of one."""

    addr: str
    proc: subprocess.Popen


def submit_until_killed(
    srv: Victim, uniques: list[str], kill_after: int | None, window: int = 256
) -> int:
    """Submit background jobs, ``window`` in flight; SIGKILL the server after ``kill_after``
    JOB_CREATEDs, while submits are still in flight.

    Returns how many of ``uniques`` (a prefix, since replies come in order) were created.
    """
    sock = connect(srv.addr, timeout=30)
    decoder = p.Decoder(allow_admin=False)
    packets = [p.encode_req(T.SUBMIT_JOB_BG, b"r", u.encode(), b"x") for u in uniques]
    sent = min(window, len(packets))
    sock.sendall(b"".join(packets[:sent]))
    created = 0
    try:
        while created < len(uniques):
            data = sock.recv(1 << 16)
            if not data:
                break
            for pkt in decoder.feed(data):
                assert pkt.type == T.JOB_CREATED
                created += 1
            if kill_after is not None and created >= kill_after:
                srv.proc.send_signal(signal.SIGKILL)
                kill_after = None
            more = min(created + window, len(packets)) - sent
            if more > 0:
                sock.sendall(b"".join(packets[sent : sent + more]))
                sent += more
    except (ConnectionResetError, BrokenPipeError):
        pass
    sock.close()
    return created
