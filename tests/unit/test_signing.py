"""farm.executor.signing: the key file (made once, 0600, refused if others read it), the HMAC."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from farm.executor.signing import (
    CALL,
    KEY_ENV,
    MAGIC,
    RESULT,
    KeyFileError,
    SignatureError,
    Signer,
    ensure_key,
    key_path,
    load_key,
)


def test_key_file_is_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "farm" / "executor.key"
    assert ensure_key(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = load_key(path)
    assert len(key) == 32
    ensure_key(path)
    assert load_key(path) == key  # a second start keeps the key
    assert [p.name for p in path.parent.iterdir()] == ["executor.key"]  # no temp file left


def test_key_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "env.key"))
    assert key_path(tmp_path / "arg.key") == tmp_path / "arg.key"
    assert key_path() == tmp_path / "env.key"
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert key_path() == tmp_path / "xdg" / "farm" / "executor.key"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o670, 0o601])
def test_key_open_to_others_or_writable_by_its_group_is_refused(tmp_path: Path, mode: int) -> None:
    path = ensure_key(tmp_path / "k")
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)


def test_key_with_an_access_acl_is_refused(tmp_path: Path) -> None:
    # Mode 640 then shows the ACL's mask: `user:mallory:r` passed the mode check.
    path = ensure_key(tmp_path / "k")
    entries = [(0x01, 6, ~0), (0x02, 4, 65534), (0x04, 0, ~0), (0x10, 4, ~0), (0x20, 0, ~0)]
    blob = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident & 0xFFFFFFFF) for tag, perm, ident in entries
    )
    try:
        os.setxattr(path, "system.posix_acl_access", blob)
    except OSError as exc:
        pytest.skip(f"this file system takes no POSIX ACL ({exc.strerror})")
    with pytest.raises(KeyFileError, match="has an access ACL.*setfacl -b"):
        load_key(path)
    # A mask without read (what a key made in a directory with a default ACL gets, mode 600)
    # lets nobody beyond the owner read it: farm must not refuse the key it just made.
    masked = [(tag, 0 if tag == 0x10 else perm, ident) for tag, perm, ident in entries]
    os.setxattr(
        path,
        "system.posix_acl_access",
        struct.pack("<I", 2)
        + b"".join(struct.pack("<HHI", t, p, i & 0xFFFFFFFF) for t, p, i in masked),
    )
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(load_key(path)) >= 16


def test_key_shared_with_its_group_for_reading_is_accepted(tmp_path: Path) -> None:
    path = ensure_key(tmp_path / "k")
    key = load_key(path)
    os.chmod(path, 0o640)  # callers of other accounts in the farm's group may sign
    assert load_key(path) == key


def test_root_refuses_a_key_another_user_made(tmp_path: Path) -> None:
    # That user knows the key, and could sign calls that a root farm would run.
    if os.getuid() != 0:
        pytest.skip("needs root to give the key to another user (CI runs as root)")
    path = ensure_key(tmp_path / "k")
    os.chown(path, 65534, 65534)
    with pytest.raises(KeyFileError, match="belongs to uid 65534"):
        load_key(path)
    os.chown(path, 0, 0)
    assert len(load_key(path)) == 32


def test_missing_key_without_create_and_garbage_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key(tmp_path / "none", create=False)
    bad = tmp_path / "bad"
    bad.write_text("not hex\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="hex digits"):
        load_key(bad)
    # A file that is no key at all ($FARM_KEY_FILE=/etc/passwd) is told so, not to chmod 600.
    os.chmod(bad, 0o644)
    with pytest.raises(KeyFileError, match="hex digits"):
        load_key(bad)


def test_seal_open_round_trip_and_tampering() -> None:
    signer = Signer(b"k" * 32)
    message = signer.seal(CALL, b"body")
    assert message.startswith(MAGIC)
    assert bytes(signer.open(CALL, message)) == b"body"
    tampered = message[:-1] + b"x"
    with pytest.raises(SignatureError, match="not signed with this farm's key"):
        signer.open(CALL, tampered)
    with pytest.raises(SignatureError, match="not signed with this farm's key"):
        Signer(b"other key 123456").open(CALL, message)
    with pytest.raises(SignatureError, match="no farm header"):
        signer.open(CALL, b"\x80\x05plain pickle")


def test_a_result_cannot_pass_for_a_call() -> None:
    signer = Signer(b"k" * 32)
    with pytest.raises(SignatureError):
        signer.open(CALL, signer.seal(RESULT, b"body"))
    assert bytes(signer.open(RESULT, signer.seal(RESULT, b"body"))) == b"body"


@pytest.mark.parametrize("openssl", [True, False])
def test_the_mac_is_hmac_sha256_of_purpose_and_body(
    monkeypatch: pytest.MonkeyPatch, openssl: bool
) -> None:
    """The wire format (module docstring), with OpenSSL's HMAC object or hmac's own."""
    import hashlib
    import hmac

    if not openssl:  # as where hmac has no OpenSSL: HMAC's Python code, no _hmac object
        monkeypatch.setattr(hmac, "_hashopenssl", None)
    key, body = b"k" * 32, b"x" * 100
    message = Signer(key).seal(CALL, body)
    assert message == MAGIC + hmac.new(key, CALL + body, hashlib.sha256).digest() + body
    assert bytes(Signer(key).open(CALL, message)) == body
