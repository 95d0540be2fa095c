"""Which listeners a loopback or wildcard address is in the way of (farm.loopback._reaches):
what names another user's farm in farm check, the server's refusal and a client's fallback."""

from __future__ import annotations

import ipaddress

import pytest

from farm.loopback import _reaches

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("listener", "target", "reaches"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.2", "127.0.0.1", False),  # any user may bind another loopback address
        ("0.0.0.0", "127.0.0.1", True),  # a wildcard of its family
        ("::", "127.0.0.1", True),  # dual-stack
        ("::ffff:127.0.0.1", "127.0.0.1", True),  # IPv4-mapped
        ("::ffff:127.0.0.2", "127.0.0.1", False),
        ("::1", "127.0.0.1", False),
        ("::1", "::1", True),
        ("0.0.0.0", "::1", False),
        ("10.1.2.3", "0.0.0.0", True),  # a wildcard target: any listener of its family
        ("::1", "0.0.0.0", False),
        ("::", "0.0.0.0", True),
    ],
)
def test_a_listener_reaches_its_own_address_its_mapped_form_and_wildcards(
    listener: str, target: str, reaches: bool
) -> None:
    assert _reaches(ip(listener), ip(target)) is reaches
