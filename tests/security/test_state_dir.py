"""The state directory (the job store, the Executor's key, the spill files) where the
environment names a directory another local user controls.

`su` without `-` keeps the first user's `$XDG_STATE_HOME` (and `sudo -E` their `$HOME`):
root's `farm up` or `farm server` then kept its job store in that user's
`~/.local/state/farm`. That user, owner of the directory, put a store file of theirs
there first (a file of the owner of a directory nobody else may write passes the store's
checks: the operator may have put it there), and read every background job's payload, the
Unix socket's callers' too, out of it (SQLite, as root, gives the WAL the database's
owner). `$XDG_RUNTIME_DIR` was already passed over in that case; now the state directory
is too, as a directory others may write that is not sticky (anyone could swap it).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from farm import paths
from tests.helpers import ROOT, otheruser
from tests.helpers.unprivileged import homeless, unprivileged

# The fixture, taken by assignment: pytest finds it as if defined here, and no import
# stands unused beside the parameters that name it.
others_home = otheruser.others_home
OTHER = otheruser.OTHER


def where(env: dict[str, str], *, make: bool = False) -> list[str]:
    """state_dir() (``make``: to be used) and the default store of `farm up`, in a fresh
    process with ``env``."""
    code = (
        "from farm import config, paths\n"
        f"print(paths.state_dir(make={make}))\n"
        "print(config.load(None).server.store)\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "FARM_CONFIG")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=base | {"PYTHONPATH": str(ROOT)} | env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_a_state_home_in_a_directory_anyone_may_write_is_passed_over(tmp_path: Path) -> None:
    # Not sticky: any user could move the farm's directory aside and put theirs there.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    state, store = where(
        {"XDG_STATE_HOME": str(shared / "state"), "HOME": str(home), "XDG_RUNTIME_DIR": ""}
    )
    assert state == f"{home}/.local/state/farm"
    assert store == f"{home}/.local/state/farm/queue-4730.db"


def test_a_directory_of_ours_in_a_sticky_one_is_no_reason_to_pass_over(tmp_path: Path) -> None:
    # A directory of the farm's in a sticky one (/tmp) is its own: nobody else may move it.
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "state").mkdir(mode=0o755)
    state, _ = where({"XDG_STATE_HOME": str(sticky / "state"), "XDG_RUNTIME_DIR": ""})
    assert state == f"{sticky}/state/farm"


def test_a_name_not_made_yet_in_a_sticky_directory_is_made_private_first(tmp_path: Path) -> None:
    # HOME=/tmp (a service account's, a 1777 tmpfs home): /tmp/.local was not made yet, and
    # another user could make it first, so it was refused, and the first run had no state
    # directory (farm server without --store refused, farm up ran memory-only, the Executor
    # had no key). Made here with mode 0700, nobody else can move it aside in a sticky
    # directory; one another user made first is theirs, and passed over.
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    env = {"HOME": str(sticky), "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": ""}
    # Only where it is to be used: root's `farm server --help` (its text names the state
    # directory) made a root 0700 /tmp/.local, which no other HOME=/tmp account could use.
    state, _ = where(env)
    assert state == f"{sticky}/.local/state/farm"
    assert not (sticky / ".local").exists()
    state, _ = where(env, make=True)
    assert state == f"{sticky}/.local/state/farm"
    info = (sticky / ".local").lstat()
    assert (info.st_uid, info.st_mode & 0o777) == (os.getuid(), 0o700)
    if os.getuid() != 0:
        return  # the rest needs root to make a directory of another user (CI runs as root)
    taken = tmp_path / "taken"
    taken.mkdir()
    taken.chmod(0o1777)
    (taken / ".local").mkdir(mode=0o755)
    os.chown(taken / ".local", OTHER, OTHER)
    state, _ = where({"HOME": str(taken), "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": ""})
    assert state == str(Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm")


def test_farm_server_help_makes_nothing_in_a_sticky_home(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    base = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "FARM_CONFIG")}
    env = base | {"PYTHONPATH": str(ROOT), "HOME": str(sticky), "XDG_STATE_HOME": ""}
    argv = [sys.executable, "-m", "farm", "server", "--help"]
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--store" in out.stdout, out.stdout  # its default names the state directory
    assert not (sticky / ".local").exists()


def test_a_state_directory_variable_not_to_be_searched_is_passed_over(tmp_path: Path) -> None:
    # Under a directory this user may not search (a service's uid, $STATE_DIRECTORY under a
    # root-owned 0700 one): lexists() said "not there, to be made", so it was chosen, and
    # `farm server` failed on its store with EACCES. As root, a 0600 directory of root's
    # denies a process without the capabilities that override permissions.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    code = (
        "from farm import paths\n"
        "print(paths.state_dir())\n"
        "print(dict(paths.passed_over_state_dirs()))\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(home)}
    env["STATE_DIRECTORY"] = str(locked / "farm")
    locked.chmod(0o600)
    try:
        argv = unprivileged([sys.executable, "-c", code])
        out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    finally:
        locked.chmod(0o700)
    assert out.returncode == 0, out.stderr
    state, why = out.stdout.splitlines()
    assert state == f"{home}/.local/state/farm"
    assert "($STATE_DIRECTORY) cannot be used (Permission denied)" in why, why


def test_a_name_not_made_yet_where_others_may_write_is_passed_over(tmp_path: Path) -> None:
    # Not sticky: another user could make it first, and move ours aside after.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    state, _ = where({"HOME": str(shared), "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": ""})
    assert state == str(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".local/state/farm")
    assert not (shared / ".local").exists()


def test_roots_state_is_not_kept_in_the_state_home_of_the_user_who_ran_su(
    others_home: Path,
) -> None:
    state, store = where(
        {"XDG_STATE_HOME": str(others_home / ".local/state"), "XDG_RUNTIME_DIR": ""}
    )
    own = Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm"
    assert state == str(own)
    assert store == f"{own}/queue-4730.db"


def test_roots_state_is_not_kept_under_a_home_of_another_user(others_home: Path) -> None:
    # `sudo -E` keeps $HOME: ~/.local/state is that user's.
    state, _ = where({"HOME": str(others_home), "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": ""})
    assert state == str(Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm")


@pytest.fixture
def roots_dir(tmp_path: Path) -> Path:
    """A directory of root's, which a link of another user's points at."""
    if os.getuid() != 0:
        pytest.skip("needs root to make a link of another user (CI runs as root)")
    tmp_path.chmod(0o755)
    mine = tmp_path / "roots"
    (mine / "state").mkdir(parents=True, mode=0o755)
    return mine


def own_link(link: Path, target: Path, uid: int = OTHER) -> Path:
    link.symlink_to(target)
    os.lchown(link, uid, uid)
    return link


def test_a_state_home_through_a_link_of_another_user_is_passed_over(
    tmp_path: Path, roots_dir: Path
) -> None:
    # XDG_STATE_HOME=/home/alice/state, her link to a directory of root's: its realpath
    # passed, and she could point the link at a directory of hers, with her queue-4730.db,
    # once root's server had started (check_own_file's look at the parent follows it too).
    home = tmp_path / "alice"
    home.mkdir(mode=0o755)
    os.chown(home, OTHER, OTHER)
    link = own_link(home / "state", roots_dir / "state")
    state, store = where({"XDG_STATE_HOME": str(link), "XDG_RUNTIME_DIR": ""})
    own = Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm"
    assert (state, store) == (str(own), f"{own}/queue-4730.db")


def test_a_link_of_another_user_they_cannot_change_is_followed(
    tmp_path: Path, roots_dir: Path
) -> None:
    # `tar -p` or `rsync -a` as root leaves links of the archive's users in root's 0755
    # directories: they cannot change them there, and such a path was refused.
    link = own_link(tmp_path / "state", roots_dir / "state")
    state, _ = where({"XDG_STATE_HOME": str(link), "XDG_RUNTIME_DIR": ""})
    assert state == f"{link}/farm"


def test_a_home_whose_local_is_a_link_of_another_user_is_passed_over(
    tmp_path: Path, roots_dir: Path
) -> None:
    # `sudo -E` keeps alice's $HOME; her ~/.local is a link to a directory of root's.
    home = tmp_path / "alice"
    home.mkdir(mode=0o755)
    os.chown(home, OTHER, OTHER)
    own_link(home / ".local", roots_dir)
    state, _ = where({"HOME": str(home), "XDG_STATE_HOME": "", "XDG_RUNTIME_DIR": ""})
    assert state == str(Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm")


def test_a_link_of_roots_to_a_directory_of_roots_is_followed(
    tmp_path: Path, roots_dir: Path
) -> None:
    link = own_link(tmp_path / "state", roots_dir / "state", uid=0)
    state, _ = where({"XDG_STATE_HOME": str(link), "XDG_RUNTIME_DIR": ""})
    assert state == f"{link}/farm"


def test_a_group_writable_directory_above_is_passed_over_under_root(
    tmp_path: Path, roots_dir: Path
) -> None:
    # /srv/team, root:devs 2775, with root's checkout in it: a member of devs may move the
    # checkout aside and put theirs there, as untrusted_because already counted.
    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, 0, OTHER)
    team.chmod(0o2775)
    (team / "proj/state").mkdir(parents=True, mode=0o755)
    state, _ = where({"XDG_STATE_HOME": str(team / "proj/state"), "XDG_RUNTIME_DIR": ""})
    assert state == str(Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm")
    os.chown(team, 0, 0)  # root's own group: umask 002 makes root's directories so
    state, _ = where({"XDG_STATE_HOME": str(team / "proj/state"), "XDG_RUNTIME_DIR": ""})
    assert state == f"{team}/proj/state/farm"


def test_a_state_directory_variable_of_another_user_is_passed_over(tmp_path: Path) -> None:
    # $STATE_DIRECTORY was used unchecked, unlike $RUNTIME_DIRECTORY: a user's own service
    # (StateDirectory=farm) leaves theirs in the environment, which `su` keeps.
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory of another user (CI runs as root)")
    tmp_path.chmod(0o755)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER, OTHER)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    own = Path(pwd.getpwuid(0).pw_dir) / ".local/state/farm"
    for passed_over in (theirs, open_to_all, open_to_all / "farm"):
        state, store = where({"STATE_DIRECTORY": str(passed_over), "XDG_RUNTIME_DIR": ""})
        assert (state, store) == (str(own), f"{own}/queue-4730.db"), passed_over
    # systemd's own: a directory of this user (DynamicUser=: root's link to it), used as is
    mine = tmp_path / "private/farm"
    mine.mkdir(parents=True, mode=0o755)
    link = tmp_path / "farm"
    link.symlink_to(mine)
    for used in (mine, link, tmp_path / "to-make"):  # made by make_dirs, where none other may
        state, _ = where({"STATE_DIRECTORY": f"{used}:{tmp_path}/other", "XDG_RUNTIME_DIR": ""})
        assert state == str(used)


def test_a_state_directory_variable_open_to_its_group_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # StateDirectoryMode=0770 (a system user whose home is /nonexistent): the Executor
    # refuses a key and a spill directory in a directory others may write, so group
    # clients met KeyFileError where it was taken; passed over, saying owner and mode. And
    # a directory of root's inside another user's was used (the same path as
    # $XDG_STATE_HOME was refused): the owner of the one above could swap it.
    if os.getuid() != 0:
        pytest.skip("needs root to make directories of another user (CI runs as root)")
    tmp_path.chmod(0o755)
    team = tmp_path / "team"
    team.mkdir(mode=0o770)
    team.chmod(0o2770)
    code = "from farm import paths\nprint(dict(paths.passed_over_state_dirs()))\n"
    argv = homeless([sys.executable, "-c", code])
    uid = int(next(a for a in argv if a.startswith("--reuid=")).split("=")[1])
    os.chown(team, uid, 4242)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "STATE_DIRECTORY": str(team)}
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    said = f"($STATE_DIRECTORY) may be written by others (owner uid {uid}, mode 2770)"
    assert said in out.stdout, out.stdout + out.stderr
    # under root too
    os.chown(team, 0, 4242)
    monkeypatch.setenv("STATE_DIRECTORY", str(team))
    why = dict(paths.passed_over_state_dirs())
    assert why[team] == "($STATE_DIRECTORY) may be written by others (owner uid 0, mode 2770)"
    theirs = tmp_path / "alice"
    (theirs / "farm").mkdir(parents=True, mode=0o755)
    os.chown(theirs, OTHER, OTHER)
    monkeypatch.setenv("STATE_DIRECTORY", str(theirs / "farm"))
    why = dict(paths.passed_over_state_dirs())
    said = f"($STATE_DIRECTORY) depends on {theirs}, a directory of uid {OTHER}"
    assert why[theirs / "farm"] == said


def test_with_home_in_a_directory_anyone_may_write_the_way_out_is_named(tmp_path: Path) -> None:
    # A container's chmod 777 (a k8s emptyDir): every home and $XDG_STATE_HOME under it is
    # passed over, and the advice to set $XDG_STATE_HOME could not work there.
    shared = tmp_path / "data"
    shared.mkdir()
    shared.chmod(0o777)
    tmp_path.chmod(0o755)
    code = (
        "from farm import paths\n"
        "try:\n"
        "    print(paths.state_dir())\n"
        "except paths.NoStateDirectory as exc:\n"
        "    print(exc)\n"
    )
    argv = homeless([sys.executable, "-c", code])
    uid = int(next(a for a in argv if a.startswith("--reuid=")).split("=")[1])
    home, state = shared / "home", shared / "state"
    for path in (home, state):
        path.mkdir(mode=0o700)
        os.chown(path, uid, uid)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(home)}
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    said = out.stdout.strip()
    assert said.startswith(f"farm has no state directory: {home}/.local/state/farm depends on")
    assert "set $STATE_DIRECTORY" in said and "$XDG_STATE_HOME" not in said, said
    # the way out it names
    env["STATE_DIRECTORY"] = str(state)
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(state), out.stdout + out.stderr


def test_with_home_unset_the_user_databases_home_is_looked_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ~ is then the user database's home, which came twice, and so did its reason.
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    homes = list(paths._state_homes())
    assert homes == [os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".local/state")]


def test_a_path_is_walked_as_the_kernel_walks_it(tmp_path: Path, roots_dir: Path) -> None:
    # A relative link of this user's that leads through another user's directory, and a
    # ".." after a link (the link's target's parent, not the name before it), count as
    # theirs: realpath's answer alone, or a path normalized by hand, missed them.
    theirs = tmp_path / "theirs"
    (theirs / "sub").mkdir(parents=True, mode=0o755)
    os.chown(theirs, OTHER, OTHER)
    own_link(roots_dir / "rel", Path("../theirs/sub"), uid=0)
    for path in (roots_dir / "rel/farm", roots_dir / "rel/../farm"):
        why = paths.controlled_by_another(path)
        assert why == f"depends on {theirs}, a directory of uid {OTHER}", (path, why)
    assert paths.controlled_by_another(roots_dir / "state/../state/farm") is None
