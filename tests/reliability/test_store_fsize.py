"""A running server's store under a file-size limit says so, as the start's read does.

Found in a review: under `ulimit -f` the store's writes failed with EFBIG, which SQLite says
as "disk I/O error", as it says a failing disk: every background job was refused with
"cannot be written: disk I/O error" and no word of the limit; and the store's disk reserve
was left at 0 bytes, said only at -v, so the store had no room kept for its deletes.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, wait_connectable

#: The server's file-size limit (RLIMIT_FSIZE): below the reserve's 8 MiB, and a few of the
#: payloads past it.
LIMIT = 1 << 20
PAYLOAD = 100_000


def _limited() -> None:  # in the child, before it runs the server
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_store_past_the_file_size_limit_says_the_limit(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    store = tmp_path / "q.db"
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", str(store)]
    srv = subprocess.Popen([*cmd, "-l", str(log)], cwd=ROOT, preexec_fn=_limited)
    try:
        addr = f"127.0.0.1:{port}"
        wait_connectable(addr, srv)
        client = Peer(addr)
        refused = None
        for n in range(2 * LIMIT // PAYLOAD):
            client.send(T.SUBMIT_JOB_BG, "f", f"u{n}", bytes(PAYLOAD))
            reply = client.recv()
            if reply.type != T.JOB_CREATED:
                refused = reply
                break
        assert refused is not None, "the store took more than its file-size limit"
        assert refused.type == T.ERROR, refused
        said = refused.args[1].decode()
        client.close()
    finally:
        srv.terminate()
        srv.wait(timeout=15)
    text = log.read_text()
    # The refusal names the limit, and its value, with the load's words of the fix.
    assert f"the job store {store} cannot be written" in said, said
    assert f"raise the file-size limit, {LIMIT} bytes now (ulimit -f" in said, said
    assert "free space in" in said, said
    assert f"raise the file-size limit, {LIMIT} bytes now" in text, text
    # And the reserve that could not be made is said at start, with why.
    assert f"the job store's disk reserve {store}-reserve could not be made" in text, text
    assert f"the file-size limit, {LIMIT} bytes now: raise it" in text, text
