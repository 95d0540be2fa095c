"""farm's exceptions survive pickle and copy: an Executor's call raises in a worker process
and its exception comes back pickled, and concurrent.futures, multiprocessing and logging
handlers copy or pickle what they are handed. One whose ``__init__`` takes other arguments
than its message (pickle calls it with ``args``, the message alone) raised TypeError there."""

from __future__ import annotations

import copy
import importlib
import inspect
import pickle
import pkgutil

import pytest

import farm
from farm.client.admin import ReplyTooLarge
from farm.errors import JobException, JobFailed, ServerError
from farm.executor.flight import InitializerFailed
from farm.executor.payload import RemoteTraceback
from farm.net import AddressError, SocketPathTooLong, TLSRefused
from farm.protocol.codec import ProtocolError
from farm.server.refusals import ListenError

#: One of each farm exception whose __init__ is its own, with the attributes it carries.
SAMPLES: list[tuple[BaseException, tuple[str, ...]]] = [
    (ServerError("QUEUE_ERROR", "Job queue is full", "f"), ("code", "text", "function")),
    (ServerError("QUEUE_ERROR", ""), ("code", "text", "function")),
    (AddressError("h:x", "the port is not a number"), ("address", "reason")),
    (SocketPathTooLong("unix:/" + "a" * 200, "too long"), ("address", "reason")),
    (ReplyTooLarge("jobs", 1024), ("what", "limit")),
    (JobException("ValueError: no"), ("text",)),
    (JobFailed("job H:1 (f) failed; its last warning: RSS", warning="RSS"), ("warning",)),
    (JobFailed("job H:1 (f) failed"), ("warning",)),
    (RemoteTraceback("Traceback ..."), ("tb",)),
    (InitializerFailed(ValueError("init")), ()),
    (ProtocolError("bad", code="ARGUMENT_TOO_LARGE", fatal=False), ("code", "fatal")),
    (ListenError("127.0.0.1:4730", OSError(98, "in use"), "use -p"), ("where", "errno", "hint")),
    (ListenError("unix:/x", OSError(None, "no such"), None), ("where", "errno", "reason")),
    (TLSRefused("it does not speak TLS there", "WRONG_VERSION_NUMBER", "SSL"), ("reason",)),
]


@pytest.mark.parametrize(
    ("exc", "attributes"), SAMPLES, ids=[type(exc).__name__ for exc, _ in SAMPLES]
)
@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_an_exception_comes_back_whole(
    exc: BaseException, attributes: tuple[str, ...], how: str
) -> None:
    # pickle.loads(pickle.dumps(ServerError("QUEUE_ERROR", "Job queue is full", "f"))) raised
    # TypeError: __init__() missing 1 required positional argument: 'text'.
    if how == "pickle":
        back = pickle.loads(pickle.dumps(exc))
    else:
        back = (copy.copy if how == "copy" else copy.deepcopy)(exc)
    assert type(back) is type(exc) and str(back) == str(exc) and back.args == exc.args
    for name in attributes:
        assert getattr(back, name) == getattr(exc, name), name


def test_notes_come_back_too() -> None:
    # The Executor names what would not pickle in a note (farm.executor.unpicklable).
    exc = ServerError("QUEUE_ERROR", "Job queue is full", "f")
    exc.add_note("a note")
    assert pickle.loads(pickle.dumps(exc)).__notes__ == ["a note"]


def test_every_farm_exception_with_its_own_init_is_sampled() -> None:
    # A new one whose __init__ takes other arguments than its message is looked at here.
    sampled = {type(exc) for exc, _ in SAMPLES}
    own_init = set()
    for info in pkgutil.walk_packages(farm.__path__, "farm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and "__init__" in vars(obj)
            ):
                own_init.add(obj)
    assert own_init - sampled == set()
