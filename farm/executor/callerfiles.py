"""The caller's spill files: large arguments, and large functions and initializers.

An argument pickle over ``spill.SPILL_THRESHOLD`` goes to a file of its own, removed
when its call is done. A function (a closure over big data, a script's function whose
globals it carries) or an initializer over the threshold goes to a file too, and the
job carries a ``spill.ByFile`` in its place: one file for equal bytes while any call
uses them, so the calls of one ``map`` (or many ``submit``s of one function) share it,
and a worker, which keeps functions by their pickle, loads it once. Without this each
job would carry the whole pickle, and one over the server's packet limit (64 MiB) would
cost the connection and every call on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

from farm.executor import spill
from farm.executor.arguments import spill_limit, spill_settings
from farm.executor.futures import Prompt
from farm.executor.payload import NO_SETUP, encode_setup

__all__ = ["CallerFiles"]

log = logging.getLogger("farm.executor")

#: A directory modified this close to when its time was read may change again within the
#: same tick of a filesystem that keeps whole seconds (FAT, some SMB shares).
_COARSE_TICK = 2.0


class _Looked(NamedTuple):
    """The spill directory as last seen with no result file of this executor's in it."""

    directory: Path
    mtime: int | None  # st_mtime_ns; None: not there
    too_recent: bool  # within _COARSE_TICK of when it was read: a later change may not show

    def unchanged(self, directory: Path, mtime: int | None) -> bool:
        """Whether ``directory`` at ``mtime`` is this one, surely not changed since."""
        return self.directory == directory and self.mtime == mtime and not self.too_recent


class CallerFiles:
    """One executor's spill files (see the module docstring)."""

    def __init__(
        self, key_file: str | None, spill_dir: str | os.PathLike[str] | None, mb: int | None
    ) -> None:
        self._options = (key_file, spill_dir, mb)
        # A bad limit (the keyword's, $FARM_MAX_SPILL_MB's) fails in the constructor, naming
        # its setting, not at the first large call; the config's is its reader's to refuse.
        spill_limit(mb)
        # Resolved as it begins (_spill_mtime), or, where the config could not be read then,
        # by the first call that needs them, which says why.
        self._settings: spill.SpillSettings | None = None
        self._lock = threading.Lock()  # done-callbacks run in other threads
        # A spill directory whose own mtime is still this one holds no result file of this
        # executor's calls (remove_results, on the executor's thread, need not list it).
        # Its mtime against its own, not our clock: a file server's clock may be behind.
        self._began = self._spill_mtime()
        self._no_settings = False  # reading them for remove_results failed: said once
        self._files: set[bytes] = set()  # references not removed yet
        # sha256 of a shared pickle -> [its ByFile pickle, its reference, calls using it]
        self._shared: dict[bytes, list[Any]] = {}

    def fresh(self) -> CallerFiles:
        """Files of their own, with the same settings (a forked child's executor)."""
        return CallerFiles(*self._options)

    def write(self, data: bytes, kind: str = "a") -> bytes:
        """A file of ``data``, its reference; FarmError (spill.SpillError for a failed write)
        when it cannot be.
        ``kind`` "k": kept while this process lives (the sweep leaves it, whatever its age)."""
        if self._settings is None:
            self._settings = spill_settings(*self._options)
        # Recorded inside spill.write's guard: an interrupt between its return and our
        # record would leave a file that remove_all() (shutdown) does not know of.
        try:
            return spill.write(self._settings, data, kind, record=self._record)
        except OSError as exc:  # a full disk, `ulimit -f`, a denied directory: which one's
            what = "argument" if kind == "a" else "function or initializer"
            raise spill.SpillError(
                f"cannot write the call's {what} to a spill file in {self._settings.directory}:"
                f" {exc.strerror or exc} (room there, or another directory: the Executor's"
                " spill_dir=, $FARM_SPILL_DIR or [executor] spill_dir)"
            ) from exc

    def _record(self, reference: bytes) -> None:
        with self._lock:
            self._files.add(reference)

    def stand_in(self, data: bytes) -> bytes:
        """The pickle of a ByFile for ``data``, in a file kept until ``remove_all`` (an
        executor's initializer, which every call carries). FarmError."""
        return pickle.dumps(spill.ByFile(self.write(data, "k")), protocol=pickle.HIGHEST_PROTOCOL)

    def setup(
        self, init: bytes | None, executor_id: bytes, max_tasks: int | None
    ) -> tuple[int, bytes]:
        """The setup sections of every call of an executor (payload.encode_setup): its
        initializer's pickle (over the threshold, a kept file of this process's: a dataset
        for each worker, say) and max_tasks_per_child's. FarmError."""
        if init is None and max_tasks is None:
            return NO_SETUP
        if init is not None and len(init) > spill.SPILL_THRESHOLD:
            init = self.stand_in(init)
        return encode_setup(init, executor_id, max_tasks)

    def remove(self, reference: bytes) -> None:
        # Forgotten after it is gone: interrupted between the two, remove_all() still
        # knows of it (forgotten first, it stayed for the sweep).
        spill.remove(reference)
        with self._lock:
            self._files.discard(reference)

    def remove_when_done(self, future: Future[Any], reference: bytes) -> None:
        # Whatever ended the call, a lost job server (ServerUnavailable) included: a worker
        # of that server may still be reading the file then, and its job fails; that is
        # fine, as nobody waits for its result (the server that would bring it is gone).
        # Prompt: removed as soon as the call is settled, in whichever thread settles it.
        future.add_done_callback(Prompt(lambda _: self.remove(reference)))

    def remove_results(self, call_ids: list[bytes]) -> None:
        """The result files of calls lost with their job server (spill.remove_results):
        read by no one now. The orphaned worker of one still running writes its file
        later; it removes that itself, as its answer cannot leave (outcomes.remove_if_unsent).
        The directory is listed only if something was made or removed in it since this
        executor began (one stat otherwise: most lost calls had no large result)."""
        if self._settings is None:  # a worker may spill a result of a call this did not
            if self._no_settings:
                return
            try:
                self._settings = spill_settings(*self._options)
            except Exception as exc:  # a bad config: its result files wait for the sweep
                self._no_settings = True
                log.warning("farm executor: cannot remove the result files of lost calls: %s", exc)
                return
        directory = self._settings.directory
        changed, coarse = _mtime(directory)
        if changed is None:  # no spill directory (yet): no large result was written
            return
        began = self._began
        if began is None or not began.unchanged(directory, changed):
            removed, seen = spill.remove_results(directory, call_ids)
            if removed == seen:
                # No result file left in it as of the mtime read before the listing: the
                # next loss lists it only if it changed since, or if that mtime was too
                # recent to tell (one changed just before the executor began was listed
                # at every loss for its life). Not while a result file of another call
                # is there: that call's loss, later, must find it.
                self._began = _Looked(directory, changed, coarse)

    def _spill_mtime(self) -> _Looked | None:
        """The spill directory as the executor begins; None where the settings cannot be
        read (yet)."""
        try:
            self._settings = spill_settings(*self._options)  # kept: read once, not twice
        except Exception:  # a bad config: said by the first call that needs it
            return None
        directory = self._settings.directory
        return _Looked(directory, *_mtime(directory))

    def shared(self, data: bytes) -> tuple[bytes, bytes]:
        """The pickle of a ByFile standing for ``data`` (the same for equal data while
        calls use it), and the key that ``use`` takes. FarmError."""
        key = hashlib.sha256(data).digest()
        with self._lock:
            entry = self._shared.get(key)
            if entry is not None:
                entry[2] += 1  # held until use() hands it to the calls
                return entry[0], key
        reference = self.write(data, "k")
        stand_in = pickle.dumps(spill.ByFile(reference), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            entry = self._shared.setdefault(key, [stand_in, reference, 0])
            entry[2] += 1
        if entry[1] != reference:  # another thread wrote the same bytes first
            self.remove(reference)
        return entry[0], key

    def use(self, key: bytes, futures: Iterable[Future[Any]], *, keep: bool = False) -> None:
        """The calls that carry a ``shared`` stand-in; its file goes when they are done.
        ``keep``: ``shared``'s hold stays (a map with buffersize makes more calls later, and
        ``release``s it when it ends)."""
        for future in futures:
            with self._lock:
                entry = self._shared.get(key)
                if entry is None:  # remove_all() came between (shutdown): the file is gone
                    return
                entry[2] += 1
            future.add_done_callback(Prompt(lambda _: self.release(key)))
        if not keep:
            self.release(key)  # shared()'s own hold

    def release(self, key: bytes) -> None:
        with self._lock:
            entry = self._shared.get(key)
            if entry is None:  # removed by remove_all() already
                return
            entry[2] -= 1
            if entry[2]:
                return
            del self._shared[key]
        self.remove(entry[1])

    def remove_all(self) -> None:
        """Shutdown: what no call removed (an initializer's file, calls never sent)."""
        with self._lock:
            left = list(self._files)
            self._shared.clear()
        for reference in left:
            self.remove(reference)


def _mtime(directory: Path) -> tuple[int | None, bool]:
    """The directory's st_mtime_ns (None: not there), and whether that was too recent to
    tell a later change by (a filesystem of whole seconds)."""
    recorded = time.time_ns()
    try:
        mtime = os.stat(directory).st_mtime_ns
    except OSError:
        return None, False
    return mtime, mtime >= recorded - int(_COARSE_TICK * 1e9)
