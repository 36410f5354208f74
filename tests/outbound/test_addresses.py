"""Where an endpoint may point: every text either refused in words or a URL that is safe."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.outbound import addresses

HOSTS = st.one_of(
    st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
    st.sampled_from(["localhost", "example.com", "hooks.example.co.uk", "LOCALHOST", "xn--n3h.io"]),
    st.text(min_size=0, max_size=20),
)
URLS = st.one_of(
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["https", "http", "HTTPS", "ftp", "javascript", ""]),
        HOSTS,
        st.one_of(st.just(""), st.integers(-1, 70000).map(lambda p: f":{p}")),
        st.text(max_size=30),
    ),
    st.text(max_size=60),
)


@settings(max_examples=600, deadline=None)
@given(URLS)
def test_a_url_is_refused_in_words_or_is_https_to_a_public_host(url: str) -> None:
    try:
        checked = addresses.check_url(url, allow_http=False, allow_private=False)
    except addresses.NotAllowed as refused:
        assert str(refused)  # a reason, never another exception
        return
    parts = urlsplit(checked)
    assert parts.scheme.lower() == "https" and parts.hostname
    assert not parts.fragment
    assert parts.hostname != "localhost"
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a name: resolved and checked at each delivery
    assert ip.is_global


@pytest.mark.parametrize(
    "url",
    ["https://localhost/", "https://127.0.0.1:8443/x", "https://[fe80::1]/", "https://10.1.2.3/"],
)
def test_a_private_address_is_refused_at_delivery_too(url: str) -> None:
    with pytest.raises(addresses.NotAllowed, match="not a public address"):
        addresses.resolve(url, allow_private=False)
    target = addresses.resolve(url, allow_private=True)
    assert target.address and target.path.startswith("/")


def test_a_host_header_keeps_a_port_that_is_not_the_default() -> None:
    assert addresses.resolve("http://localhost:8080/a?b=1", allow_private=True).host_header == (
        "localhost:8080"
    )
    target = addresses.resolve("https://localhost/a?b=1", allow_private=True)
    assert (target.host_header, target.path) == ("localhost", "/a?b=1")
