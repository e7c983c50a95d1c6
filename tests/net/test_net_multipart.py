"""The streaming multipart/related parser used for WADO-RS responses (no server needed)."""

from __future__ import annotations

import pytest

from lesionlens.net.dicomweb import iter_multipart
from lesionlens.net.errors import DicomWebError

BOUNDARY = "b0undary-42"


def _body(parts: list[bytes], *, preamble: bytes = b"", headers: bool = True) -> bytes:
    out = preamble
    for p in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if headers:
            out += b"Content-Type: application/dicom\r\nContent-Length: " + str(len(p)).encode() + b"\r\n"
        out += b"\r\n" + p + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


PARTS = [b"DICM" + bytes(range(256)) * 40, b"", b"\r\n--not-the-boundary\r\n" * 3, b"x" * 5000]


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 10**6])
def test_parts_survive_any_chunking(chunk):
    got = list(iter_multipart(_chunks(_body(PARTS, preamble=b"ignored preamble\r\n"), chunk), BOUNDARY))
    assert [body for _, body in got] == PARTS
    assert all(h["content-type"] == "application/dicom" for h, _ in got)


def test_parts_without_headers():
    got = list(iter_multipart([_body(PARTS[:2], headers=False)], BOUNDARY))
    assert [body for _, body in got] == PARTS[:2] and got[0][0] == {}


@pytest.mark.parametrize("cut", [10, 200, -len(f"--{BOUNDARY}--\r\n") - 3])
def test_truncated_body_is_an_error(cut):
    data = _body(PARTS)[:cut]
    with pytest.raises(DicomWebError):
        list(iter_multipart(_chunks(data, 50), BOUNDARY))


def test_no_boundary_is_an_error():
    with pytest.raises(DicomWebError, match="no opening boundary"):
        list(iter_multipart([b"just some bytes"], BOUNDARY))
