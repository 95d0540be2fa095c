"""Fixtures: real servers (farm's and gearmand) on free ports, and raw-protocol peers.

What they are built from lives in tests/helpers/; test modules import it from there.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import PORT_CLAIMS, Server, start_farm_server, start_gearmand

# Where the environment says PYTHONDONTWRITEBYTECODE (some images do), every one of the
# suite's thousands of Python processes (each `farm up`, its server and workers, each
# server and CLI run) compiled farm from source again, ~0.1 s of CPU each on a 2-core VM,
# and pytest rewrote every test module's asserts again at each collection (~10 s). Bytecode
# is still read where it is not written: the two hooks below write it.
CHILDREN_IMPORT = ("farm", "workers", "tests/helpers")


def _xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is one of pytest-xdist's workers (``pytest -n N``): what is done
    once a run (compiling, sweeping /dev/shm) is done by the process that started them."""
    return hasattr(config, "workerinput")


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands the tests out to xdist's workers (it runs none itself)."""
    return not _xdist_worker(config) and getattr(config.option, "dist", "no") != "no"


def pytest_configure(config: pytest.Config) -> None:
    if _xdist_controller(config):
        # Made before the workers start, which inherit the environment (servers.py)
        claims = tempfile.mkdtemp(prefix=f"farm-test-ports-{os.getuid()}-")
        os.environ[PORT_CLAIMS] = claims
        config.add_cleanup(lambda: shutil.rmtree(claims, ignore_errors=True))
    if not _xdist_worker(config):  # the controller compiled before it started the workers
        _compile()


def _compile() -> None:
    """Compile what the suite's processes import, as hash-checked bytecode: each import
    compares the source's hash, so a module changed on disk (within the same second, at
    the same size, as some tests do to theirs) is never run from stale bytecode. A file
    whose bytecode matches its source is left as it is."""
    if not sys.flags.dont_write_bytecode:
        return  # Python writes its own, as it imports
    checked = py_compile.PycInvalidationMode.CHECKED_HASH
    for folder in CHILDREN_IMPORT:
        for source in (ROOT / folder).rglob("*.py"):
            if _bytecode_matches(source):
                continue
            try:
                py_compile.compile(str(source), doraise=True, invalidation_mode=checked)
            except py_compile.PyCompileError:
                continue  # its own test fails, saying why; the others still get theirs
            except OSError:
                return  # a checkout we may not write: the processes compile, as before


def _bytecode_matches(source: Path) -> bool:
    try:
        header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
        text = source.read_bytes()
    except OSError:
        return False
    flags = int.from_bytes(header[4:8], "little")  # 0b11: hash-based, checked at import
    return (
        header[:4] == importlib.util.MAGIC_NUMBER
        and flags == 0b11
        and header[8:16] == importlib.util.source_hash(text)
    )


@pytest.hookimpl(wrapper=True)
def pytest_collection() -> Generator[None, object, object]:
    """Let pytest keep the test modules it rewrote (it reads them back even where writing
    is off, and checks each against its source's mtime and size), during collection only:
    the modules tests write and import as they run keep Python's setting."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = before


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Captured output and logs with lone surrogates (a job's text decoded with
    surrogateescape, as os.fsdecode does) are kept with backslashes: xdist sends a report
    to its controller as strict UTF-8, and one such character ended the whole run with an
    INTERNALERROR."""
    report = yield
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, text in report.sections
    ]
    return report


def _claims_dirs() -> set[Path]:
    """The Executor's replay records of this user in shared memory (farm.executor.replay)."""
    shm = Path("/dev/shm")
    return set(shm.glob(f"farm-{os.getuid()}-claims-*")) if shm.is_dir() else set()


#: The replay records in /dev/shm when the session began (see pytest_sessionfinish).
_BEFORE = pytest.StashKey[set[Path]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not _xdist_worker(session.config):
        session.config.stash[_BEFORE] = _claims_dirs()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the replay records this session's farms left in /dev/shm.

    Each test's farm has a key of its own, so a record of its own (some 15 KB of memory
    each, hundreds a run), which outlives the farm as it must for users (a restarted farm
    still refuses a replayed call); a test's key is gone with its temporary directory, so
    nothing would ever sweep its record. Those that were there before the session are kept.
    Under xdist, the controller sweeps once every worker is done: a worker that finished
    first would sweep from under the others' farms.
    """
    if _xdist_worker(session.config) or _BEFORE not in session.config.stash:
        return
    left = _claims_dirs() - session.config.stash[_BEFORE]
    # Not those still held open: another session's on this host (a second terminal, a CI
    # run beside a developer's), made after this one began. Removed under its farms, every
    # later call there failed with FileNotFoundError on its claims file.
    # Nor those touched in the last RECENT seconds: another session's test between two of
    # its farms holds its record open in neither. Removed then, the second farm ran a
    # captured call again (test_a_captured_call_does_not_run_again_on_a_restarted_server
    # failed beside other sessions). A session leaves its last few records behind.
    for gone in left - _held_open(left):
        if not _touched_since(gone, time.time() - RECENT):
            shutil.rmtree(gone, ignore_errors=True)


#: Seconds within which a replay record may still be in use by a farm not running just now.
RECENT = 60.0


def _touched_since(directory: Path, since: float) -> bool:
    try:
        return any(p.stat().st_mtime >= since for p in (directory, *directory.iterdir()))
    except OSError:  # gone meanwhile
        return False


def _held_open(dirs: set[Path]) -> set[Path]:
    """The directories in which some live process holds a file open (a worker keeps its
    claims files open while it lives)."""
    prefixes = {f"{d}/": d for d in dirs}
    held: set[Path] = set()
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            targets = [os.readlink(fd) for fd in fds.iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        held.update(d for t in targets for p, d in prefixes.items() if t.startswith(p))
    return held


@pytest.fixture
def farm_server() -> Iterator[Server]:
    srv = start_farm_server()
    yield srv
    srv.stop()


@pytest.fixture
def gearmand() -> Iterator[Server]:
    srv = start_gearmand()
    yield srv
    srv.stop()


@pytest.fixture(params=["farm", "gearmand"])
def any_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The same test against farm's server and against gearmand."""
    srv = start_farm_server() if request.param == "farm" else start_gearmand()
    yield srv
    srv.stop()


@pytest.fixture
def peer_factory() -> Iterator[Callable[[str], Peer]]:
    """Make Peers to an address; every one is closed at teardown."""
    peers: list[Peer] = []

    def make(addr: str) -> Peer:
        peer = Peer(addr)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture
def unix_sock() -> Iterator[str]:
    """A server's Unix socket path in a directory of its own, short (a socket's path may be
    at most 107 bytes, which a test's tmp_path can pass), removed at teardown."""
    top = Path(tempfile.mkdtemp(prefix="farm-sock-"))
    yield str(top / "gearman.sock")
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def no_local_farm(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """farm's default addresses, where discovery looks given nothing else, moved to a fresh
    directory of the test's own: a farm someone runs on this machine answered there, and a
    test of the defaults passed or failed by whether one was up. What the code reads:
    $XDG_RUNTIME_DIR (its farm/ sockets), $TMPDIR (the /tmp/farm-$UID fallback, for a test
    that unsets the first), and no $RUNTIME_DIRECTORY, $FARM_SERVERS, $GEARMAN_SERVERS,
    $FARM_CONFIG nor ./farm.toml (the working directory is the new one), and
    discovery.SYSTEM_CONFIG moved into it too, so that an /etc/farm/farm.toml of a farm
    installed on the host is not read. Yields it."""
    tmp_path_factory.getbasetemp()  # made before $TMPDIR moves: other tests' tmp_path stay
    top = Path(tempfile.mkdtemp(prefix="farm-rt-"))  # 0700, ours; short, for socket paths
    for name in ("RUNTIME_DIRECTORY", "FARM_SERVERS", "GEARMAN_SERVERS", "FARM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(top))
    monkeypatch.setenv("TMPDIR", str(top))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    monkeypatch.chdir(top)
    from farm import discovery  # here: conftest itself imports no farm module

    monkeypatch.setattr(discovery, "SYSTEM_CONFIG", top / "etc" / "farm.toml")
    yield top
    shutil.rmtree(top, ignore_errors=True)
