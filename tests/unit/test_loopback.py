"""farm.loopback.twin_needed: which listeners hold their port on [::1] too."""

from __future__ import annotations

from farm.loopback import twin_needed


def test_localhosts_ipv4_address_and_every_address_get_a_twin() -> None:
    assert twin_needed("127.0.0.1", 4730, [])
    assert twin_needed("0.0.0.0", 9730, [("0.0.0.0", 9730)])


def test_other_hosts_get_none() -> None:
    # Not `localhost`: another 127.x, a name (bound on each of its addresses), IPv6 itself.
    for host in ("127.0.0.2", "localhost", "::1", "::", "192.0.2.1", None, ""):
        assert not twin_needed(host, 4730, []), host


def test_only_ipv6_loopback_at_the_same_port_stands_for_the_twin() -> None:
    # [::1]:Q beside 127.0.0.1:P left [::1]:P to any user.
    assert twin_needed("127.0.0.1", 4730, [("127.0.0.1", 4730), ("::1", 4731), ("::", 4732)])
    assert not twin_needed("127.0.0.1", 4730, [("::1", 4730)])
    assert not twin_needed("0.0.0.0", 4730, [("::", 4730)])
