"""`farm up` whose local server cannot listen: what cannot heal stops it with exit 2, which
the shipped unit does not restart; what may heal (an address that comes up after farm at
boot, a port freed) with exit 1, which systemd's Restart=on-failure tries again."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from farm.config import ServerConfig
from farm.errors import ConfigError
from farm.pools.localserver import check_listen_name
from tests.helpers import ROOT
from tests.helpers.farmproc import FarmUp

pytestmark = pytest.mark.timeout(30)

FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""
#: A name no resolver can find: a label longer than DNS allows (63 bytes), refused as the
#: file is read (farm.hostnames), so the answer does not depend on this host's network or DNS.
TOO_LONG = "no-such-host-" + "x" * 60 + ".invalid"
#: A name that DNS says does not exist (.invalid is reserved for that, RFC 6761).
NXDOMAIN = "no-such-host.invalid"


def resolver_says_no_such_name(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 4730)
    except socket.gaierror as exc:
        return exc.errno == socket.EAI_NONAME
    return False


def unit_prevents_restart_on(status: int) -> bool:
    lines = (ROOT / "systemd" / "farm.service").read_text().splitlines()
    return f"RestartPreventExitStatus={status}" in lines


def farm_listening_on(tmp_path: Path, address: str) -> tuple[FarmUp, str]:
    """`farm up` whose [server] listen has ``address`` (HOST, given a free port) for its TCP
    entry; it and that entry, once it has exited."""
    up = FarmUp(tmp_path, FUNCTIONS, start=False)
    where = f"{address}:{up.port}"
    up.config.write_text(up.config.read_text().replace(f'"127.0.0.1:{up.port}"', f'"{where}"'))
    up.start()
    try:
        up.proc.wait(20)
    finally:
        up.stop()
    return up, where


@pytest.mark.parametrize("host", [TOO_LONG, NXDOMAIN])
def test_a_listen_name_that_names_no_address_is_a_config_error_not_restarted(
    tmp_path: Path, host: str
) -> None:
    # Exit 1 had systemd start it again every few seconds, for ever: no restart finds it.
    if host == NXDOMAIN and not resolver_says_no_such_name(host):
        pytest.skip("this host's resolver does not answer (no DNS): it may later, exit 1")
    up, where = farm_listening_on(tmp_path, host)
    assert up.proc.returncode == 2 and unit_prevents_restart_on(2)
    log = up.log_path.read_text()
    error = f"farm: {up.config}: server.listen: {where}: "
    fix = "restarting cannot fix it"  # the resolver's answer, which no restart changes
    if host == TOO_LONG:  # the config reader's line, as for any address that does not parse
        error, fix = f"farm: {up.config}: server.listen: '{where}': ", "over DNS's 63"
    (line,) = [line for line in log.splitlines() if line.startswith("farm: ")]
    assert line.startswith(error) and fix in line, log
    assert "Traceback" not in log and "job server starting" not in log, log


def test_an_address_not_on_this_host_is_left_to_systemd_to_retry(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no host. At boot an address of this host may come up
    # after farm, which a restart finds: exit 1, and the unit restarts it.
    up, where = farm_listening_on(tmp_path, "192.0.2.1")
    assert up.proc.returncode == 1 and not unit_prevents_restart_on(1)
    log = up.log_path.read_text()
    assert (
        f"cannot listen on {where}: no such address on this host (check [server] listen" in log
    ), log
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    ("code", "refused"), [(socket.EAI_NONAME, True), (socket.EAI_AGAIN, False)]
)
def test_a_resolver_not_reachable_yet_is_no_config_error(
    monkeypatch: pytest.MonkeyPatch, code: int, refused: bool
) -> None:
    # No resolver answers "try again" on demand (DNS not reachable yet, as at boot): its
    # answer is stood in for. That may heal: the server's own try fails, exit 1, restarted.
    def answer(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(code, "the resolver's words")

    monkeypatch.setattr(socket, "getaddrinfo", answer)
    server = ServerConfig(listen=("db.example:4730",), store="none", job_retries=3)
    if refused:
        with pytest.raises(ConfigError, match="server.listen: db.example:4730: the resolver's"):
            check_listen_name(server, "farm.toml")
    else:
        check_listen_name(server, "farm.toml")
