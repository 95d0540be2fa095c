"""What a client's face and its session share about each request: ``Task`` (a submitted
job), ``Query`` (a request that is not a job) and the ``Question`` that asks it, the events
a session reports, and the rules every face follows when a server goes away
(``may_resubmit``, ``lost_error``).

``farm.protocol.client`` re-exports all of it, beside the ``ClientSession`` that fills
these in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from farm.errors import JobFailed, ServerUnavailable, Timeout
from farm.protocol.codec import PacketType, encode_req, text_bytes
from farm.protocol.kinds import SUBMIT_KINDS

__all__ = [
    "may_resubmit",
    "lost_since",
    "UNKNOWN",
    "Link",
    "lost_error",
    "closed_unanswered",
    "unwritten",
    "not_again",
    "timeout_error",
    "failed_error",
    "last_warning",
    "WARNING_KEPT",
    "Owner",
    "Reply",
    "Task",
    "Query",
    "Question",
    "JobStatus",
    "StatusResult",
    "JobCreated",
    "JobProgress",
    "JobData",
    "JobWarning",
    "JobEnded",
    "TaskEvent",
    "TaskListener",
]

#: What a face keeps with each task: its future, its waiter, its listener.
Owner = TypeVar("Owner")


#: (priority name, background) → the submit packet, derived from the one table in kinds.
_SUBMIT: dict[tuple[str, bool], PacketType] = {
    (kind.priority.label, kind.background): ptype for ptype, kind in SUBMIT_KINDS.items()
}


class JobStatus(NamedTuple):
    """What the server knows of a job (STATUS_RES / STATUS_RES_UNIQUE)."""

    known: bool
    running: bool
    numerator: int
    denominator: int


class Link(Protocol):
    """What a task knows of the connection that created it: whether its server ended it
    since (not this process: a fork's child, an event loop's end, close())."""

    lost: bool


def lost_since(task: Task[Any]) -> bool:
    """Whether the server of the connection that created ``task`` has ended it since (it
    may have restarted): its handle then may name no job of ours to the server answering
    there now (``status`` answers unknown). One this process closed (a fork's child, an
    event loop's end, close()) left the server and its handles as they were."""
    return task.created_on is not None and task.created_on.lost


#: What ``status`` answers for a task whose connection was lost since (``lost_since``).
UNKNOWN = JobStatus(False, False, 0, 0)


class Task(Generic[Owner]):
    """One submitted job as the client sees it: filled in by the session as replies arrive.

    ``handle`` is set by JOB_CREATED; a background task is ``done`` then, a
    foreground one when WORK_COMPLETE (``result``), WORK_FAIL or
    WORK_EXCEPTION (``error``) arrives. ``server`` names the server holding it.
    """

    __slots__ = (
        "function",
        "data",
        "unique",
        "priority",
        "background",
        "when",
        "handle",
        "server",
        "done",
        "result",
        "error",
        "abandoned",
        "attempts",
        "owner",
        "warned",
        "streamed",
        "created_on",
        "unwritten",
        "cut_by",
        "size",
    )

    def __init__(
        self,
        function: str,
        data: bytes,
        *,
        unique: str = "",
        priority: str = "normal",
        background: bool = False,
        when: int | None = None,
    ) -> None:
        self.function = function
        self.data = data
        self.unique = unique
        self.priority = priority
        self.background = background
        self.when = when
        self.handle: str | None = None
        self.server: str | None = None
        self.done = False
        self.result: bytes | None = None
        self.error: Exception | None = None
        self.abandoned = False  # the caller gave up (timeout): drop its WORK_* packets
        self.attempts = 0
        self.owner: Owner | None = None  # the face's record of this task
        # The start of the job's last WORK_WARNING: a WORK_FAIL's JobFailed quotes it.
        self.warned: bytes | None = None
        # A WORK_DATA of it reached its owner: a second run's could not be told from it, so
        # it is not sent to another server when its server goes away (may_resubmit).
        self.streamed = False
        # The connection (its session) whose server sent JOB_CREATED: once it is lost, the
        # handle means nothing to whatever answers there next (gearmand's count from
        # H:host:1 again in each process: another job's), and ``status`` says unknown.
        self.created_on: Link | None = None
        # Its submit was not written whole when its connection was lost: no server has it
        # (may_resubmit). And its packet's size as queued, to tell (``unwritten``).
        self.unwritten = False
        self.size = 0
        # The servers whose connection was lost with its submit not written whole: it goes
        # to each at most once (``not_again``), so servers that each cut a large submit
        # short (read a little and close) fail it after one pass, not bounce it for ever.
        self.cut_by: tuple[str, ...] = ()

    def packet(self) -> bytes:
        """Its submit packet (SUBMIT_JOB_EPOCH for one with ``when``)."""
        func, unique = text_bytes(self.function), text_bytes(self.unique)
        if self.when is not None:
            return encode_req(
                PacketType.SUBMIT_JOB_EPOCH, func, unique, b"%d" % self.when, self.data
            )
        return encode_req(_SUBMIT[self.priority, self.background], func, unique, self.data)

    def __repr__(self) -> str:
        state = "done" if self.done else ("created" if self.handle else "pending")
        return f"<Task {self.function} {self.handle or '-'} {state}>"


#: What a query's reply is: StatusResult, bytes (echo), str (option).
Reply = TypeVar("Reply")


class Query(Generic[Reply]):
    """A request that is not a job (GET_STATUS, ECHO_REQ, OPTION_REQ): its reply lands here."""

    __slots__ = ("expect", "done", "result", "error", "size")

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.size = 0  # its packet's, as queued (``unwritten``)
        self.done = False
        self.result: Reply | None = None
        self.error: Exception | None = None

    def __repr__(self) -> str:  # in a ProtocolError's text, which reaches users
        return f"<Query awaiting {PacketType(self.expect).name}>"


@dataclass(frozen=True, slots=True)
class Question(Generic[Reply]):
    """A query's packet, built before it is queued (``ClientSession.ask``), and the reply it
    expects. Building fails on what the caller gave (a body past 4 GiB - 1, a key that is
    no text) with nothing queued; so a face that closes a connection where an exception
    cut its queueing short (farm.Client: a signal handler's) guards the queueing alone."""

    expect: int
    packet: bytes

    @staticmethod
    def echo(data: bytes) -> Question[bytes]:
        return Question(PacketType.ECHO_RES, encode_req(PacketType.ECHO_REQ, data))

    @staticmethod
    def status(handle: str) -> Question[StatusResult]:
        packet = encode_req(PacketType.GET_STATUS, text_bytes(handle))
        return Question(PacketType.STATUS_RES, packet)

    @staticmethod
    def status_unique(key: str) -> Question[StatusResult]:
        packet = encode_req(PacketType.GET_STATUS_UNIQUE, text_bytes(key))
        return Question(PacketType.STATUS_RES_UNIQUE, packet)

    @staticmethod
    def option(name: str) -> Question[str]:
        return Question(PacketType.OPTION_RES, encode_req(PacketType.OPTION_REQ, name.encode()))


class StatusResult(NamedTuple):
    handle_or_unique: str
    status: JobStatus


# -- client events: small frozen records for the face's callbacks and futures --


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCreated:
    task: Task[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobProgress:
    task: Task[Any]
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobData:
    task: Task[Any]
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class JobWarning:
    task: Task[Any]
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEnded:
    """The task is done: ``task.result`` or ``task.error`` says how."""

    task: Task[Any]


#: Everything a session reports about a task.
TaskEvent = JobCreated | JobProgress | JobData | JobWarning | JobEnded


class TaskListener(Protocol):
    """An owner that wants a task's events as they arrive (the blocking client's callbacks
    and task sets)."""

    def task_event(self, event: TaskEvent) -> None: ...


def may_resubmit(task: Task[Any]) -> bool:
    """A foreground job lost with its server goes to another server once, only with a unique
    key, and only before any of its data (WORK_DATA) reached the caller. The lost server
    coalesces nothing: it is gone, and the next one runs the job again from the start (a
    caller keys the work it is content to have run twice). One whose data had begun to arrive
    fails instead (``lost_error`` says so), as libgearman's and PHP's calls do: a second
    run's data would follow the first's to the same caller, who could not tell them apart.
    Status alone is no bar: the second run's supersedes the first's. A submit not written
    whole when its connection was lost (``unwritten``) created nothing: it goes to the next
    server, keyed or not, as one never sent would, but to none that cut it short before
    (``not_again``). Every face follows this one rule."""
    if task.unwritten:  # never written whole: no server can have created it
        return True
    return bool(task.unique) and not task.background and task.attempts < 2 and not task.streamed


#: A job whose JOB_CREATED has not come: the server may have created it (and may run it),
#: so a caller must not read it as "not created" and submit it again without thought.
UNCONFIRMED = "(not confirmed: it may have been created)"
#: A job whose submit was not written whole: the server cannot have created it.
NOT_SENT = "(not sent whole: not created)"


def closed_unanswered(tls: bool) -> str:
    """How a server that closed a connection before a word on it went away: as farm's clients
    ask their options first, which any Gearman server answers, most often TLS in doubt."""
    if tls:
        return (
            "closed the TLS connection before answering (a server that requires client"
            " certificates does so when ours is missing or not trusted: $FARM_TLS_CERT)"
        )
    return (
        "closed the connection before answering (a TLS server? give the client a tls"
        " context; the commands read $FARM_TLS_CA)"
    )


def unwritten(requests: Iterable[Task[Any] | Query[Any]], tail: int, server: str) -> None:
    """Mark the tasks among ``requests`` (unanswered, in the order sent to ``server``) whose
    submit lies, whole or in part, in the last ``tail`` bytes of what was sent, which never
    left: no server read them whole, so none created the job. Their try does not count
    (``attempts``): the job goes to the next server as if never sent; but not back to
    ``server`` (``cut_by``, ``not_again``)."""
    for request in reversed(list(requests)):
        if tail <= 0:
            return
        tail -= request.size
        if isinstance(request, Task):
            request.unwritten = True
            request.attempts -= 1
            if server not in request.cut_by:
                request.cut_by += (server,)


def not_again(task: Task[Any], lost: str) -> tuple[str, ...]:
    """The servers a task lost with ``lost`` is not resubmitted to: that one, and for a submit
    cut short, every server that cut it short (one pass over the servers, each face: when
    none is left it fails with ``lost_error``, "not sent whole")."""
    return task.cut_by if task.unwritten and lost in task.cut_by else (lost,)


def timeout_error(task: Task[Any], timeout: float | None) -> Timeout:
    """A task not done within ``timeout``: named with its server, and said when the server
    had not confirmed the job (the blocking and async faces word it alike)."""
    return Timeout(
        f"job {task.function} {task.handle or UNCONFIRMED} on"
        f" {task.server or 'no server yet'} not done within {timeout}s"
    )


def lost_error(server: str, task: Task[Any], why: str = "went away") -> ServerUnavailable:
    """The error of a job that is not resubmitted when its server went away (``why``: how,
    e.g. that it refused our TLS certificate)."""
    named = task.handle or (NOT_SENT if task.unwritten else UNCONFIRMED)
    held = f"job server {server} {why} while holding job {task.function} {named}"
    if task.streamed and task.unique and not task.background and task.attempts < 2:
        held += (  # why the rule of may_resubmit did not send it on
            "; not sent to another server: its data had begun to arrive, and another run's"
            " could not be told from it"
        )
    return ServerUnavailable(held)


#: How much of a job's last WORK_WARNING its JobFailed keeps: the reason a farm worker gives
#: (a line, kill_rss_mb's), not all of a stream a worker sent as warnings.
WARNING_KEPT = 500


def last_warning(warning: str) -> str:
    """How a job's failure quotes its last WORK_WARNING: JobFailed's, and an Executor's
    WorkerLost, which quotes its ``warning`` (one rule for both). Hedged: the server's
    retries are unseen by the client, and a warning one try sent before its worker died was
    quoted as the reason a job failed when the server failed it after job_retries deaths
    (its log's "poison job ..." alone said so). The server logs a job it fails (that, or
    one timed out), not one its worker failed (a farm worker past kill_rss_mb, which says
    why in that warning): hence "if"."""
    return (
        f"its last warning: {warning} (it may be from an earlier try: the server retries"
        " unseen, and its log says if it failed the job)"
    )


def failed_error(task: Task[Any], handle: str, reason: str = "") -> JobFailed:
    """The error of a job its server sent WORK_FAIL for, which carries no reason: the job's
    last warning where one came (last_warning), else where WORK_FAIL can come from. Every
    face raises it. ``reason``: why the server failed it, where it said (farm's server,
    to a client that asked: OPTION_REQ fail-reason)."""
    # A farm worker ends a warning with a newline, for the gearman CLI (which prints one as
    # it comes, on a line of its own): not the message's, whose text may go on.
    warning = task.warned.decode("utf-8", "replace").rstrip("\r\n") if task.warned else None
    if reason:  # a warning then is news of some try, quoted as such, after the reason
        said = f"; its last warning: {warning} (it may be from an earlier try)" if warning else ""
        return JobFailed(
            f"job {handle} ({task.function}) failed: the server failed it: {reason}{said}",
            warning=warning,
            reason=reason,
        )
    if warning is not None:
        return JobFailed(
            f"job {handle} ({task.function}) failed; {last_warning(warning)}", warning=warning
        )
    return JobFailed(
        f"job {handle} ({task.function}) failed: its worker sent WORK_FAIL (a farm"
        " worker does when its function raised and the server is not farm's: the"
        " worker's log has the traceback), or the server failed it (farm's: past its"
        " timeout, or its workers died job_retries times, its log says which; gearmand"
        " only under -j N, after N tries each lost or past its timeout: else it requeues)"
    )
