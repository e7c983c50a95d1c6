from __future__ import annotations

import pytest

from lesionlens.errors import ConfigError
from lesionlens.net.address import Peer, parse_peer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ORTHANC@127.0.0.1:4242", Peer("ORTHANC", "127.0.0.1", 4242)),
        ("PACS@pacs.example.org:104", Peer("PACS", "pacs.example.org", 104)),
        ("MY AE@host:11112", Peer("MY AE", "host", 11112)),
        ("A@[::1]:104", Peer("A", "::1", 104)),
        ("ABCDEFGHIJKLMNOP@h:65535", Peer("ABCDEFGHIJKLMNOP", "h", 65535)),
    ],
)
def test_parse_valid(text, expected):
    peer = Peer.parse(text)
    assert peer == expected
    assert Peer.parse(str(peer)) == peer
    assert parse_peer(peer) is peer


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("ORTHANC127.0.0.1:4242", "no '@'"),
        ("@host:104", "empty"),
        ("ABCDEFGHIJKLMNOPQ@host:104", "16-character"),
        ("BAD\\AE@host:104", "forbidden character"),
        ("BAD\nAE@host:104", "forbidden character"),
        ("AE@host", "no port"),
        ("AE@host:0", "out of range"),
        ("AE@host:65536", "out of range"),
        ("AE@host:http", "not a number"),
        ("AE@:104", "no host"),
        ("AE@bad_host!:104", "not a valid hostname"),
        ("AE@::1:104", "brackets"),
    ],
)
def test_parse_invalid_names_the_part(text, names):
    with pytest.raises(ConfigError, match=names):
        Peer.parse(text)


def test_peer_is_frozen_and_validated():
    peer = Peer("AE", "h", 1)
    with pytest.raises(AttributeError):
        peer.port = 2  # type: ignore[misc]
    with pytest.raises(ConfigError):
        Peer("AE", "h", 70000)
