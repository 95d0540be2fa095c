"""farm.net's one address parser: every form it reads, every mistake it names."""

from __future__ import annotations

import pytest

from farm.net import (
    DEFAULT_PORT,
    Address,
    AddressError,
    connectable,
    parse_address,
    parse_port,
    parse_servers,
)


def tcp(host: str, port: int = DEFAULT_PORT) -> Address:
    return Address("tcp", host=host, port=port)


@pytest.mark.parametrize(
    ("text", "parsed", "normal"),
    [
        ("127.0.0.1:4999", tcp("127.0.0.1", 4999), "127.0.0.1:4999"),
        ("gearman.example:1", tcp("gearman.example", 1), "gearman.example:1"),
        ("localhost:65535", tcp("localhost", 65535), "localhost:65535"),
        ("localhost", tcp("localhost"), f"localhost:{DEFAULT_PORT}"),
        ("  10.0.0.5:80  ", tcp("10.0.0.5", 80), "10.0.0.5:80"),
        ("host:0080", tcp("host", 80), "host:80"),
        ("[::1]:4999", tcp("::1", 4999), "[::1]:4999"),
        ("[::1]", tcp("::1"), f"[::1]:{DEFAULT_PORT}"),
        ("::1", tcp("::1"), f"[::1]:{DEFAULT_PORT}"),
        ("::", tcp("::"), f"[::]:{DEFAULT_PORT}"),
        # Unbracketed, the last group belongs to the address: brackets say where a port starts.
        ("::1:4999", tcp("::1:4999"), f"[::1:4999]:{DEFAULT_PORT}"),
        ("[fe80::1%eth0]:5", tcp("fe80::1%eth0", 5), "[fe80::1%eth0]:5"),
        ("0.0.0.0", tcp("0.0.0.0"), f"0.0.0.0:{DEFAULT_PORT}"),
        (":4999", tcp("", 4999), ":4999"),  # every interface, for a listener
        # format characters IDNA maps away (a ZWNJ, common in Persian names; a soft hyphen):
        # once refused with every character that is not printable
        ("\u0645\u06cc\u200c\u0631.ir:5", tcp("\u0645\u06cc\u200c\u0631.ir", 5), None),
        ("ex\u00adample.com:5", tcp("ex\u00adample.com", 5), None),
        # What DNS carries: one trailing dot (a fully qualified name), "_" and "-", a label
        # of 63 characters, a name of 253 (four labels of 63, the last cut short)
        ("example.com.:5", tcp("example.com.", 5), None),
        ("_gearman._tcp.my-host:5", tcp("_gearman._tcp.my-host", 5), None),
        (f"{'a' * 63}.example:5", tcp(f"{'a' * 63}.example", 5), None),
        (f"{'.'.join(['a' * 63] * 4)[:253]}:5", tcp(".".join(["a" * 63] * 4)[:253], 5), None),
        # And past DNS's 253: IDNA, the connect's encoding, passes such a name, and glibc
        # resolves it from /etc/hosts (they were refused as read, "over DNS's 253"); 17
        # labels of nine, 169 characters as written, are 271 as IDNA spells them.
        (f"{'.'.join(['a' * 63] * 5)}:5", tcp(".".join(["a" * 63] * 5), 5), None),
        (".".join(["\u00fc" * 9] * 17) + ":5", tcp(".".join(["\u00fc" * 9] * 17), 5), None),
        ("b\u00fccher.de:5", tcp("b\u00fccher.de", 5), None),  # IDNA: xn--bcher-kva.de
        ("unix:/run/farm/gearman.sock", Address("unix", path="/run/farm/gearman.sock"), None),
        ("unix:rel.sock", Address("unix", path="rel.sock"), "unix:rel.sock"),
    ],
)
def test_each_form_parses_and_prints_its_normal_form(
    text: str, parsed: Address, normal: str | None
) -> None:
    got = parse_address(text)
    assert got == parsed
    assert str(got) == (normal or text)
    assert parse_address(str(got)) == got  # the normal form reads back the same


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("127.0.0.1:abc", "port must be a number from 1 to 65535"),
        ("127.0.0.1:", "port must be a number from 1 to 65535"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 1 to 65535"),
        ("127.0.0.1:-1", "port must be a number from 1 to 65535"),
        ("127.0.0.1:+80", "port must be a number from 1 to 65535"),
        ("127.0.0.1:٣", "port must be a number from 1 to 65535"),  # a non-ASCII digit
        ("[::1]:abc", "port must be a number from 1 to 65535"),
        ("[::1]:", "port must be a number from 1 to 65535"),
        ("[::1", "has '[' without ']'"),
        ("[::1]4730", "expected ':PORT' after ']'"),
        ("[localhost]:4730", "'localhost' in brackets is not an IPv6 address"),
        ("[]:4730", "'' in brackets is not an IPv6 address"),
        ("::1:xyz", "an IPv6 address with a port takes brackets"),
        ("a b:4730", "holds a space; separate servers with commas"),
        # two servers, a space for the comma: once "an IPv6 address ... takes brackets"
        ("127.0.0.1:47202 127.0.0.1:47201", "holds a space; separate servers with commas"),
        ("host/path:4730", "is not a host name or address"),
        # farm up's server failed to exec ("embedded null byte"), exit 1; workers retried
        ("127.0.0.1\x00:4730", "'127.0.0.1\\x00' is not a host name or address"),
        ("a\x01b", "is not a host name or address"),
        # no socket path holds one: stat, bind and connect raise ValueError (farm.Client()
        # reading such a listen from farm.toml died of an "embedded null byte" traceback)
        ("unix:/run/a\x00b", "holds a NUL character, which no socket path can"),
        ("a\x9bb", "is not a host name or address"),  # a C1 control (CSI)
        # what IDNA, the connect's encoding, refuses: these parsed, and `farm worker` then
        # died of a UnicodeError traceback in its reconnect, exit 1
        ("a\u202eb:1", "'a\\u202eb' is not a host name or address"),  # a bidi override
        ("\udcff:1", "is not a host name or address"),  # a surrogate from argv's byte \xff
        ("a\ufff9b", "is not a host name or address"),  # an interlinear annotation
        ("a\ue000b", "is not a host name or address"),  # private use
        ("a\U000e0041b", "is not a host name or address"),  # a tag
        ("\u00ad:1", "is not a host name or address"),  # nothing left once mapped
        # What no resolver is asked: IDNA, the connect's encoding, refused these at each
        # connect ("label empty or too long"), `farm status` with exit 1, a worker for ever
        ("a..b:4730", "'a..b' is not a host name or address: an empty label"),
        (".a:4730", "'.a' is not a host name or address: an empty label"),
        ("a.b..:4730", "'a.b..' is not a host name or address: an empty label"),
        (".", "'.' is not a host name or address: an empty label"),
        ("a\u3002\u3002b:1", "is not a host name or address: an empty label"),  # IDNA's dots
        (f"{'a' * 64}.example:1", "a label of 64 characters, over DNS's 63"),
        (f"x.{'a' * 64}", "a label of 64 characters, over DNS's 63"),
        ("\u00fc" * 60 + ".de:1", "is not a host name or address"),  # over 63 once encoded
        # was "an IPv6 address with a port takes brackets"
        ("gearman://127.0.0.1:4730", "is a URL; write HOST:PORT, e.g. 127.0.0.1:4730"),
        ("tcp://h", "is a URL; write HOST:PORT"),
        ("unix:", "names no socket path"),
        # No socket can have it: a worker retried its connect for ever.
        ("unix:/" + "s" * 107, "/" + "s" * 107 + " is 108 bytes, longer than a Unix socket path"),
    ],
)
def test_each_mistake_raises_address_error_naming_the_problem(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert info.value.address == text
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working
    assert str(info.value).startswith(f"server address {text!r}: ")


def test_the_default_port_is_the_callers_and_may_be_required() -> None:
    assert parse_address("10.0.0.5", default_port=5000) == tcp("10.0.0.5", 5000)
    assert parse_address("::1", default_port=5000) == tcp("::1", 5000)
    assert parse_address("10.0.0.5:6000", default_port=5000) == tcp("10.0.0.5", 6000)
    with pytest.raises(AddressError, match="has no port"):
        parse_address("10.0.0.5", default_port=None)
    with pytest.raises(AddressError, match="has no port"):
        parse_address("[::1]", default_port=None)
    assert parse_address("unix:/x", default_port=None) == Address("unix", path="/x")


def test_an_address_is_a_string_or_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a string"):
        parse_address(4730)  # type: ignore[arg-type]  # the wrong type is the point


@pytest.mark.parametrize(
    ("listened", "reached"),
    [
        ("0.0.0.0:4999", "127.0.0.1:4999"),
        (":4999", "127.0.0.1:4999"),
        ("[::]:4999", "[::1]:4999"),
        ("10.0.0.5:4999", "10.0.0.5:4999"),
        ("[::1]:4999", "[::1]:4999"),
        ("unix:/run/g.sock", "unix:/run/g.sock"),
    ],
)
def test_connectable_turns_a_wildcard_listener_into_loopback(listened: str, reached: str) -> None:
    assert str(connectable(listened)) == reached
    assert connectable(parse_address(listened)) == parse_address(reached)


@pytest.mark.parametrize("text", ["1", "4730", "65535", "08"])
def test_parse_port_accepts_1_to_65535(text: str) -> None:
    assert parse_port(text) == int(text)


@pytest.mark.parametrize("text", ["", "0", "65536", "abc", "-1", " 80", "1e3", "٣"])
def test_parse_port_refuses_the_rest(text: str) -> None:
    with pytest.raises(ValueError, match="from 1 to 65535"):
        parse_port(text)


def test_parse_servers_normalises_and_drops_duplicates() -> None:
    assert parse_servers("a, a:4730 ,[::1],unix:/s,") == [
        f"a:{DEFAULT_PORT}",
        f"[::1]:{DEFAULT_PORT}",
        "unix:/s",
    ]
    assert parse_servers(["b:1", "b:1"]) == ["b:1"]


@pytest.mark.parametrize(
    ("servers", "error", "match"),
    [
        ("", ValueError, "the server list is empty"),
        ([], ValueError, "the server list is empty"),
        ("ok:1,bad:port", AddressError, "'bad:port': port must be"),
        ([b"host:1"], TypeError, "must be a string, not bytes"),
        (b"host:1", TypeError, "a string or a list of strings, not bytes"),
        (4730, TypeError, "a string or a list of strings, not int"),
    ],
)
def test_parse_servers_refuses_bad_lists(
    servers: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_servers(servers)  # type: ignore[arg-type]  # some of these are the wrong type


def test_a_dial_that_fails_other_than_by_oserror_still_reports() -> None:
    # A host name IDNA refuses (a label over 63 characters) raised UnicodeError in the dial's
    # thread, which died: the worker's loop waited for its outcome for ever. parse_address
    # refuses it now, a ValueError in that thread all the same.
    import threading

    from farm.net import Dial

    woken = threading.Event()
    dial = Dial(f"{'a' * 64}.example:4730", 1.0, None, woken.set)
    assert woken.wait(30)
    assert isinstance(dial.outcome, OSError)


@pytest.mark.parametrize("servers", [":4730", "127.0.0.1:4731, :4730", [":4730"]])
def test_a_server_to_connect_to_names_a_host(servers: str | list[str]) -> None:
    # ":4730" is every interface to a listener (parse_address keeps it for them); as a
    # server it reached none: "Name or service not known", exit 1, or a worker's retries.
    with pytest.raises(AddressError) as info:
        parse_servers(servers)
    assert info.value.reason == "names no host; write 127.0.0.1:4730 for this one"
