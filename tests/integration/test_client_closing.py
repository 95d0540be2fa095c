"""``farm.Client.close()`` from another thread, or from a signal handler, while a call is
under way: in a connect nothing answers (a host that drops our SYNs), or waiting on a
server that accepted and never answers. The call ends then, as closed, not when its
connect or its wait would have ended."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest

import farm
from tests.helpers.servers import free_port
from tests.helpers.serving import reverse, serving
from tests.helpers.signalonce import signal_once
from tests.helpers.stalled import unanswered_listener
from tests.helpers.waiting import wait_for

#: Past the test's own bound: a call that ends did not wait its connect out.
LONG = 120.0


def syn_sent(port: int) -> int:
    """How many of this process's connects to ``port`` wait for an answer."""
    conns = psutil.Process().net_connections("tcp4")
    return sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == "SYN_SENT")


@contextmanager
def silent_server() -> Iterator[str]:
    """A server whose kernel takes connections that it never accepts: nothing answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def in_thread(ask: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            ask()
        except BaseException as exc:  # what the call ended with, for the test to look at
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ask", ["call", "status", "echo"])
def test_close_from_another_thread_ends_a_connect_that_nothing_answers(ask: str) -> None:
    # close() raised RuntimeError "in use by another thread" and closed nothing: the call
    # went on connecting for its whole connect_timeout.
    with unanswered_listener() as hung:
        port = int(hung.rsplit(":", 1)[1])
        waiting = syn_sent(port)  # the listener's fillers
        client = farm.Client(hung, connect_timeout=LONG)
        asks: dict[str, Callable[[], object]] = {
            "call": lambda: client.call("reverse", b"x"),
            "status": lambda: client.status("H:nowhere:1"),
            "echo": lambda: client.echo(b"x"),
        }
        thread, raised = in_thread(asks[ask])
        wait_for("the call's connect", lambda: syn_sent(port) > waiting)
        client.close()
        thread.join(10)
        assert not thread.is_alive(), "the call went on connecting after close()"
        assert len(raised) == 1 and isinstance(raised[0], farm.ServerUnavailable), raised
        assert "closed" in str(raised[0])
        with pytest.raises(RuntimeError, match="closed"):
            client.echo(b"x")
        assert client._wire.conns == {}


@pytest.mark.timeout(30)
def test_close_from_another_thread_ends_a_call_a_silent_server_holds() -> None:
    # Connected, the call waits on its select(): close() from another thread was refused
    # (RuntimeError), and the call waited for ever on a server that never answers.
    with silent_server() as silent:
        client = farm.Client(silent)
        thread, raised = in_thread(lambda: client.call("reverse", b"x"))
        wait_for("the call connected", lambda: client._wire.conns)
        client.close()
        thread.join(10)
        assert not thread.is_alive(), "the call went on waiting after close()"
        assert len(raised) == 1 and isinstance(raised[0], farm.ServerUnavailable), raised
        assert "closed" in str(raised[0])
        wait_for("its socket closed", lambda: client._wire.selector.get_map() is None)


@pytest.mark.timeout(30)
def test_close_by_a_signal_handler_ends_the_connect_it_interrupted() -> None:
    # The handler's close() failed the call as closed, but only once its connect had
    # waited out its connect_timeout (docs/client.md said so): the handler came back into
    # a connect that nothing cut short.
    with unanswered_listener() as hung:
        port = int(hung.rsplit(":", 1)[1])
        waiting = syn_sent(port)
        client = farm.Client(hung, connect_timeout=LONG)
        connecting = threading.Event()

        def wait_syn() -> None:
            wait_for("the call's connect", lambda: syn_sent(port) > waiting, timeout=20)
            connecting.set()

        threading.Thread(target=wait_syn, daemon=True).start()
        closed = pytest.raises(farm.ServerUnavailable, match="Client was closed")
        with signal_once(connecting, lambda *_: client.close()), closed:
            client.call("reverse", b"x")
        assert client._wire.conns == {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ask", ["call", "status", "echo"])
def test_close_from_another_thread_after_one_server_refused_ends_the_call_as_closed(
    ask: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A close that came after one server's connect had failed, before the next one's:
    # the next connect raised RuntimeError "this farm.Client is closed", the error of a
    # client used after its close, not ServerUnavailable, that of the call it ended.
    with silent_server() as silent:
        client = farm.Client([f"127.0.0.1:{free_port()}", silent], timeout=LONG)
        client._wire.picker._rotation = 0  # the refusing one first
        picker = client._wire.picker
        mark_down = picker.mark_down

        def then_close(addr: str, spent: float = 0.0) -> None:
            # The refused connect is being recorded: another thread's close() lands here.
            monkeypatch.setattr(picker, "mark_down", mark_down)
            closer = threading.Thread(target=client.close)
            closer.start()
            closer.join(10)
            mark_down(addr, spent)

        monkeypatch.setattr(picker, "mark_down", then_close)
        asks: dict[str, Callable[[], object]] = {
            "call": lambda: client.call("reverse", b"x"),
            "status": lambda: client.status("H:nowhere:1"),
            "echo": lambda: client.echo(b"x"),
        }
        with pytest.raises(farm.ServerUnavailable, match="the farm.Client was closed"):
            asks[ask]()
        with pytest.raises(RuntimeError, match="closed"):  # used after its close, as before
            asks[ask]()
        assert client._wire.conns == {}


@pytest.mark.timeout(60)
def test_close_from_another_thread_between_two_steps_of_a_map_ends_it_as_closed(
    farm_server: Any,
) -> None:
    # Each step of a map's generator (a submit, a wait) entered the client on its own, and
    # one after the close took it for a use of a closed client: RuntimeError, not the
    # ServerUnavailable of a call the close ended.
    with serving(farm_server.addr, {"reverse": reverse}):
        client = farm.Client(farm_server.addr, timeout=LONG)
        results = client.map("reverse", [b"ab", b"cd", b"ef"], max_in_flight=1)
        assert next(results) == b"ba"
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(10)
        with pytest.raises(farm.ServerUnavailable, match="the farm.Client was closed"):
            next(results)
        unstarted = farm.Client(farm_server.addr, timeout=LONG)
        begun = unstarted.map("reverse", [b"ab"])  # begun here; its first step comes later
        unstarted.close()
        with pytest.raises(farm.ServerUnavailable, match="the farm.Client was closed"):
            next(begun)
        with pytest.raises(RuntimeError, match="closed"):  # one begun after close(): a misuse
            next(unstarted.map("reverse", [b"ab"]))
