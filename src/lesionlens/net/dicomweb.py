"""A small DICOMweb client (httpx): STOW-RS, QIDO-RS (studies) and WADO-RS (whole study).

``url`` is the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``. Uploads stream the files
(multipart/related; type="application/dicom") without holding them all in memory; WADO-RS
responses are parsed as they arrive and each instance is stored durably through
:class:`~lesionlens.net.storage.InstanceStore`. HTTP and protocol failures raise
:class:`~lesionlens.net.errors.DicomWebError`.

>>> report = stow("http://127.0.0.1:8042/dicom-web", paths)  # doctest: +SKIP
>>> studies = qido_studies("http://127.0.0.1:8042/dicom-web", PatientID="P1")  # doctest: +SKIP
>>> stored = wado_study("http://127.0.0.1:8042/dicom-web", study_uid, "incoming/")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from lesionlens.dicom.io import read_header
from lesionlens.errors import ConfigError, LesionLensError
from lesionlens.net.errors import DicomWebError
from lesionlens.net.storage import InstanceStore, StoredInstance, validate_uid

_CHUNK = 1 << 20
#: QIDO-RS query parameters that are not attribute keywords.
_QIDO_PARAMS = {"limit", "offset", "fuzzymatching", "includefield"}
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")


@dataclass(frozen=True)
class WebOptions:
    """HTTP settings: ``timeout_s`` per network operation, extra ``headers`` (e.g. an
    ``Authorization`` header), ``verify`` TLS certificates (or a CA bundle path)."""

    timeout_s: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    verify: bool | str = True


DEFAULT_WEB_OPTIONS = WebOptions()


def _client(options: WebOptions) -> httpx.Client:
    return httpx.Client(timeout=options.timeout_s, headers=options.headers, verify=options.verify)


def _root(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"DICOMweb url must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _raise_for(r: httpx.Response, what: str) -> None:
    if r.status_code >= 400:
        try:
            body = r.read()[:300].decode("utf-8", "replace")
        except httpx.HTTPError:
            body = ""
        raise DicomWebError(f"{what}: HTTP {r.status_code} {r.reason_phrase}" + (f": {body}" if body else ""),
                            status_code=r.status_code)


# --------------------------------------------------------------------------------------------
# STOW-RS


@dataclass
class StowResult:
    """One uploaded file: ``ok`` when the server lists it as stored; ``reason`` otherwise."""

    path: Path
    sop_instance_uid: str | None
    ok: bool = False
    reason: str | None = None


@dataclass
class StowReport:
    """Outcome of :func:`stow`: HTTP status (200 all stored, 202 some failed, 409 none) and per-file results."""

    status_code: int
    results: list[StowResult]

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[StowResult]:
        return [r for r in self.results if not r.ok]


def _sequence_uids(body: dict[str, Any], tag: str) -> dict[str, str | None]:
    """SOPInstanceUID → failure reason (hex) from a Referenced/Failed SOP Sequence of a STOW response."""
    out: dict[str, str | None] = {}
    for item in body.get(tag, {}).get("Value", []) or []:
        uid = (item.get("00081155", {}).get("Value") or [None])[0]
        reason = (item.get("00081197", {}).get("Value") or [None])[0]
        if uid:
            out[str(uid)] = f"failure reason 0x{int(reason):04X}" if reason is not None else None
    return out


def stow(url: str, files: Iterable[str | Path], *, study_uid: str | None = None,
         options: WebOptions = DEFAULT_WEB_OPTIONS) -> StowReport:
    """Upload DICOM files with STOW-RS (``POST {url}/studies[/{study_uid}]``) in one request.

    The body is streamed from the files (multipart/related; type="application/dicom").
    Files that cannot be read locally are reported (not sent). Raises :class:`DicomWebError`
    when the request itself fails (connection, HTTP 4xx/5xx other than 409).
    """
    root = _root(url)
    results: list[StowResult] = []
    sendable: list[tuple[StowResult, int]] = []
    for f in files:
        res = StowResult(Path(f), None)
        results.append(res)
        try:
            hr = read_header(res.path, specific_tags=[0x00080018])
            res.sop_instance_uid = str(hr.dataset.get("SOPInstanceUID") or
                                       hr.dataset.file_meta.get("MediaStorageSOPInstanceUID") or "") or None
            sendable.append((res, os.path.getsize(res.path)))
        except (LesionLensError, OSError) as exc:
            res.reason = getattr(exc, "reason", str(exc))
    if not sendable:
        return StowReport(0, results)
    boundary = f"lesionlens-{secrets.token_hex(16)}"
    part_head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(part_head) + size + 2 for _, size in sendable) + len(tail)

    def body() -> Iterator[bytes]:
        for res, _size in sendable:
            yield part_head
            with open(res.path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield tail

    target = f"{root}/studies" + (f"/{validate_uid(study_uid, field='study_uid')}" if study_uid else "")
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
    }
    try:
        with _client(options) as client:
            r = client.post(target, content=body(), headers=headers)
    except httpx.HTTPError as exc:
        raise DicomWebError(f"STOW-RS to {target} failed: {exc}") from exc
    if r.status_code >= 400 and r.status_code != 409:
        _raise_for(r, f"STOW-RS to {target}")
    try:
        doc = r.json() if r.content else {}
    except ValueError as exc:
        raise DicomWebError(f"STOW-RS to {target}: response is not JSON: {r.text[:200]}") from exc
    if isinstance(doc, list):  # some servers wrap the response dataset in a list
        doc = doc[0] if doc else {}
    stored = _sequence_uids(doc, "00081199")
    failed = _sequence_uids(doc, "00081198")
    for res, _size in sendable:
        uid = res.sop_instance_uid or ""
        if uid in stored:
            res.ok = True
        else:
            res.reason = failed.get(uid) or ("refused by server" if uid in failed else "not acknowledged by the server")
    return StowReport(r.status_code, results)


# --------------------------------------------------------------------------------------------
# QIDO-RS


def _json_value(attr: dict[str, Any]) -> str:
    vals = attr.get("Value")
    if not vals:
        return ""
    out: list[str] = []
    for v in vals:
        if isinstance(v, dict):  # PN
            out.append(str(v.get("Alphabetic", "")))
        else:
            out.append(str(v))
    return "\\".join(out)


def _query_params(query: dict[str, Any]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in query.items():
        if key.lower() in _QIDO_PARAMS:
            params[key.lower()] = str(value)
        elif tag_for_keyword(key) is not None or _TAG_RE.match(key):
            params[key] = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        else:
            raise ConfigError(f"QIDO query key {key!r} is not a DICOM keyword or tag (nor limit/offset/includefield)")
    return params


def qido_studies(url: str, *, options: WebOptions = DEFAULT_WEB_OPTIONS, **query: Any) -> list[dict[str, str]]:
    """QIDO-RS ``GET {url}/studies`` with matching ``query`` (DICOM keywords such as
    ``PatientID="P1"``, ``StudyDate="20240101-20241231"``, plus ``limit``, ``offset``,
    ``includefield``).

    Returns one dict per study: keyword → text (multi-values joined with ``\\``, person names
    as their Alphabetic form), like :func:`lesionlens.net.scu.find_studies`.
    """
    target = f"{_root(url)}/studies"
    params = _query_params(query)
    try:
        with _client(options) as client:
            r = client.get(target, params=params, headers={"Accept": "application/dicom+json"})
    except httpx.HTTPError as exc:
        raise DicomWebError(f"QIDO-RS {target} failed: {exc}") from exc
    _raise_for(r, f"QIDO-RS {target}")
    if r.status_code == 204 or not r.content:
        return []
    try:
        doc = r.json()
    except ValueError as exc:
        raise DicomWebError(f"QIDO-RS {target}: response is not JSON: {r.text[:200]}") from exc
    out: list[dict[str, str]] = []
    for item in doc:
        row: dict[str, str] = {}
        for tag, attr in item.items():
            kw = keyword_for_tag(int(tag, 16)) if _TAG_RE.match(tag) else ""
            row[kw or tag] = _json_value(attr)
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# WADO-RS


def _boundary(content_type: str, what: str = "WADO-RS response") -> str:
    m = re.search(r'boundary="?([^";,]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/related") or not m:
        raise DicomWebError(f"{what} is not multipart/related with a boundary: {content_type!r}")
    return m.group(1)


def multipart_boundary(content_type: str, what: str = "request body") -> str:
    """The boundary of a ``multipart/related`` Content-Type; :class:`DicomWebError` otherwise."""
    return _boundary(content_type, what)


def iter_multipart(chunks: Iterable[bytes], boundary: str) -> Iterator[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body, as ``(headers, body)``, parsed incrementally from ``chunks``.

    Each part is held in memory once (one DICOM instance); the whole response never is.
    Raises :class:`DicomWebError` if the body ends mid-part.
    """
    delim = b"--" + boundary.encode()
    sep = b"\r\n" + delim
    buf = bytearray()
    it = iter(chunks)
    state = "preamble"
    scan_from = 0
    headers: dict[str, str] = {}

    def more() -> bool:
        for chunk in it:
            if chunk:
                buf.extend(chunk)
                return True
        return False

    while True:
        if state == "preamble":
            i = buf.find(delim)
            if i < 0:
                if not more():
                    raise DicomWebError("multipart body has no opening boundary")
                continue
            del buf[: i + len(delim)]
            state = "after-delim"
        if state == "after-delim":
            while len(buf) < 2:
                if not more():
                    raise DicomWebError("multipart body ends after a boundary")
            if buf[:2] == b"--":
                return
            if buf[:2] != b"\r\n":
                raise DicomWebError("malformed multipart boundary line")
            del buf[:2]
            state = "headers"
        if state == "headers":
            while len(buf) < 2:
                if not more():
                    raise DicomWebError("multipart body ends inside part headers")
            if buf[:2] == b"\r\n":  # a part without headers
                i = -2
            else:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if not more():
                        raise DicomWebError("multipart body ends inside part headers")
                    continue
            raw = bytes(buf[: max(i, 0)]).decode("latin-1")
            del buf[: i + 4]
            headers = {}
            for line in raw.split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            state = "body"
            scan_from = 0
        if state == "body":
            i = buf.find(sep, scan_from)
            if i < 0:
                scan_from = max(0, len(buf) - len(sep) + 1)
                if not more():
                    raise DicomWebError("multipart body ends inside a part (truncated response)")
                continue
            part = bytes(buf[:i])
            del buf[: i + len(sep)]
            yield headers, part
            state = "after-delim"


def wado_study(url: str, study_uid: str, dest_dir: str | Path | InstanceStore, *,
               options: WebOptions = DEFAULT_WEB_OPTIONS,
               on_stored: Callable[[StoredInstance], None] | None = None) -> list[StoredInstance]:
    """Retrieve a whole study with WADO-RS (``GET {url}/studies/{study_uid}``) into ``dest_dir``.

    The multipart/related response is parsed as it streams in; each instance is stored durably
    (``InstanceStore.put``) as soon as its part is complete. Returns what was stored. Raises
    :class:`DicomWebError` (HTTP error, malformed or truncated response) and
    :class:`~lesionlens.net.errors.InvalidInstanceError` for an instance that cannot be stored.
    """
    uid = validate_uid(study_uid, field="study_uid")
    store = dest_dir if isinstance(dest_dir, InstanceStore) else InstanceStore(dest_dir)
    target = f"{_root(url)}/studies/{uid}"
    accepts = ('multipart/related; type="application/dicom"; transfer-syntax=*',  # as stored
               'multipart/related; type="application/dicom"')  # the server's default syntax
    try:
        with _client(options) as client:
            for n, accept in enumerate(accepts):
                with client.stream("GET", target, headers={"Accept": accept}) as r:
                    if r.status_code in (400, 406) and n + 1 < len(accepts):
                        continue  # the server cannot send the original syntax
                    _raise_for(r, f"WADO-RS {target}")
                    return _store_parts(r, store, on_stored)
    except httpx.HTTPError as exc:
        raise DicomWebError(f"WADO-RS {target} failed: {exc}") from exc
    raise AssertionError("unreachable")


def _store_parts(r: httpx.Response, store: InstanceStore,
                 on_stored: Callable[[StoredInstance], None] | None) -> list[StoredInstance]:
    boundary = _boundary(r.headers.get("content-type", ""))
    out: list[StoredInstance] = []
    for part_headers, body in iter_multipart(r.iter_bytes(_CHUNK), boundary):
        ctype = part_headers.get("content-type", "application/dicom").lower()
        if not ctype.startswith("application/dicom"):
            raise DicomWebError(f"WADO-RS part has Content-Type {ctype!r}, expected application/dicom")
        inst = store.put(body, source="wado-rs")
        out.append(inst)
        if on_stored is not None:
            on_stored(inst)
    return out


__all__ = [
    "DEFAULT_WEB_OPTIONS",
    "StowReport",
    "StowResult",
    "WebOptions",
    "iter_multipart",
    "multipart_boundary",
    "qido_studies",
    "stow",
    "wado_study",
]
