"""farm.toml's [server] keys: the tuning keys that become the server's flags, the ones it
would refuse, and the addresses clients read from the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import config, discovery
from farm.errors import ConfigError
from tests.helpers.configs import GOOD, error_of, write


def test_server_tuning_keys_become_the_servers_flags(tmp_path: Path) -> None:
    tuned = GOOD.replace(
        "job_retries = 5",
        'job_retries = 5\nmax_queue = 100\nstore_sync = "full"\nexceptions = true\n'
        'wake_deadline = 2\nunix_mode = "600"\nmax_packet = 1048576\nkeepalive_idle = 30',
    )
    cfg = config.load(write(tmp_path, tuned))
    assert cfg.server.flags == (
        "--store-sync=full",
        "--max-queue=100",
        "--max-packet=1048576",
        "--wake-deadline=2.0",
        "--keepalive-idle=30",
        "--exceptions",
        "--unix-mode=600",
    )
    # Left out, no flag: the server keeps its own defaults.
    assert config.load(write(tmp_path, GOOD)).server.flags == ()
    assert config.load(write(tmp_path, GOOD.replace("job_retries = 5", "exceptions = false")))


@pytest.mark.parametrize(
    ("line", "key", "hint"),
    [
        ("max_queue = -1", "server.max_queue", "max_queue must be >= 0"),
        ("max_queued_bytes = -1", "server.max_queued_bytes", "max_queued_bytes must be >= 0"),
        ("max_queue = true", "server.max_queue", "must be a whole number, got True"),
        ("max_connections = 0", "server.max_connections", "at least 1"),
        ('store_sync = "always"', "server.store_sync", 'must be "normal" or "full"'),
        ("wake_deadline = 0", "server.wake_deadline", "between 0.01 and 60"),
        ("keepalive_idle = 0", "server.keepalive_idle", "from 1 to 32767"),
        ("keepalive_interval = 40000", "server.keepalive_interval", "from 1 to 32767"),
        ("keepalive_count = 128", "server.keepalive_count", "from 1 to 127"),
        ("wake_deadline = nan", "server.wake_deadline", "between 0.01 and 60"),
        ("wake_deadline = inf", "server.wake_deadline", "between 0.01 and 60"),
        ('wake_deadline = "1"', "server.wake_deadline", "a number of seconds"),
        # a TOML integer past float's range: OverflowError, a traceback from farm check/up
        ("stall_timeout = 1" + "0" * 400, "server.stall_timeout", "between 0.1 and 86400"),
        ("wake_deadline = -1" + "0" * 400, "server.wake_deadline", "between 0.01 and 60"),
        ("exceptions = 1", "server.exceptions", "true or false"),
        ('unix_mode = "999"', "server.unix_mode", "not an octal mode"),
        ('unix_mode = "1777"', "server.unix_mode", "from 000 to 777"),
        ("unix_mode = 660", "server.unix_mode", 'in quotes, such as "660"'),
        # a connect needs write: the farm's own workers (its user, not root) never connected
        ('unix_mode = "0"', "server.unix_mode", "'0' gives its owner no write"),
        ('unix_mode = "460"', "server.unix_mode", "no write, which a connect needs; e.g. 600"),
        ("max_packet = 100", "server.max_packet", "at least 1024"),
        ("max_packet = 1073741824", "server.max_packet", "at most 67108864"),
        (
            "max_packet = 1048576\nmax_partial_bytes = 4096",
            "server.max_partial_bytes",
            "max_partial_bytes must be at least max_packet",
        ),
        ("backlog = 0", "server.backlog", "at least 1"),
        # Each under its own key: the server's one check of both named the first of them.
        ("max_abilities = 0", "server.max_abilities", "max_abilities must be at least 1"),
        ("max_tcp_abilities = -1", "server.max_tcp_abilities", "max_tcp_abilities must be at"),
        # past a C int: the server's listen() failed in a traceback, under systemd for ever
        ("backlog = 99999999999", "server.backlog", "at most 2147483647"),
        ("max_queu = 3", "server.max_queu", "did you mean 'max_queue'"),
    ],
)
def test_a_tuning_key_the_server_would_refuse_is_one_line(
    tmp_path: Path, line: str, key: str, hint: str
) -> None:
    message = error_of(tmp_path, GOOD.replace("job_retries = 5", line, 1))
    assert f": {key}: " in message, message
    assert hint in message, message
    assert "--" not in message, message  # the config's words, not the server's flags


NO_HOST = "':4730' names no host; write 127.0.0.1:4730 for this one"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[server]\nlisten = [3]", 'server.listen: must be a list of addresses like ["'),
        ('[server]\nlisten = ["h:0"]', "server.listen: server address 'h:0': port must be"),
        ("[supervisor]\nservers = [1]", "supervisor.servers: must be a list of addresses"),
        ('[supervisor]\nservers = "h:1"', "supervisor.servers: must be a list of addresses"),
        # farm check's words: this was "server address ':4730': names no host", naming
        # neither file nor key, and the CLI said it came from --server
        ('[supervisor]\nservers = [":4730"]', f"supervisor.servers: {NO_HOST}"),
        (
            '[supervisor]\nlocal_server = true\nservers = [":4730"]',
            f"supervisor.servers: {NO_HOST}",
        ),
    ],
)
def test_the_address_only_reading_names_the_key(tmp_path: Path, text: str, said: str) -> None:
    # What `farm status -c`, `farm submit -c` and farm.Client read: `listen = [3]` sent the
    # calls to "3:4730", and a bad address was refused without the key that held it.
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        discovery.client_servers(path)
    assert str(info.value).startswith(f"{path}: {said}"), info.value


def test_a_client_given_no_servers_names_the_file_that_gave_one_with_no_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # farm.Client() raised AddressError "server address ':4730': names no host", naming
    # neither the ./farm.toml it had read nor its key.
    import farm

    write(tmp_path, '[supervisor]\nservers = [":4730"]\n')
    monkeypatch.chdir(tmp_path)
    for name in ("FARM_CONFIG", "FARM_SERVERS", "GEARMAN_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as info:
        farm.Client()
    assert str(info.value) == f"farm.toml: supervisor.servers: {NO_HOST}"


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("server.listen", '[server]\nlisten = ["unix:{name}"]'),
        ("supervisor.servers", '[supervisor]\nservers = ["unix:{name}"]'),
        ("supervisor.control", '[supervisor]\ncontrol = "{name}"'),
    ],
)
def test_a_relative_socket_path_too_long_under_the_files_folder_names_the_key(
    tmp_path: Path, key: str, text: str
) -> None:
    # Short enough alone, too long for a socket once read against the file's folder: farm
    # submit -c said "--server: server address ...", farm status "the default server: ...",
    # farm ps "AF_UNIX path too long" (exit 1); only farm check named the file and key.
    name = "s" * max(1, 108 - len(str(tmp_path)))
    path = write(tmp_path, text.format(name=name) + "\n")
    read = discovery.control_path if key == "supervisor.control" else discovery.client_servers
    with pytest.raises(ConfigError) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: {key}: {tmp_path}/{name} is "), info.value
    assert "longer than a Unix socket path may be" in str(info.value)
