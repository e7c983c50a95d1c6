"""A real Orthanc PACS on free loopback ports, for integration tests and benchmarks.

:class:`OrthancServer` writes its own configuration JSON and keeps storage and index in a
folder of its own (a pytest ``tmp_path``), enables the DICOMweb plugin at ``/dicom-web/``,
disables authentication and remote HTTP access, and waits until the REST API answers.
``stop()`` then ``start()`` again reuses the same storage, like a PACS that goes down and comes
back. No pytest import here, so ``bench/`` scripts can use it too.

>>> with OrthancServer(tmp_path / "orthanc", modalities={"LL": ("LESIONLENS", "127.0.0.1", 11112)}) as pacs:
...     pacs.rest_get("/instances")      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BINARY_NAMES = ("Orthanc", "orthanc")
#: Where Debian's orthanc-dicomweb installs the plugin (first existing one wins).
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


def find_orthanc() -> str | None:
    """Path of the Orthanc executable (PATH, then /usr/sbin), or None."""
    for name in ORTHANC_BINARY_NAMES:
        found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def find_dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin library, or None when orthanc-dicomweb is not installed."""
    for cand in DICOMWEB_PLUGIN_CANDIDATES:
        if os.path.exists(cand):
            return cand
    lib = Path("/usr/lib/orthanc")
    if lib.is_dir():
        for p in sorted(lib.glob("libOrthancDicomWeb.so*")):
            return str(p)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OrthancError(RuntimeError):
    """Orthanc could not be started, or a REST call failed."""


class OrthancServer:
    """One Orthanc process with its own config, storage and free ports.

    workdir: folder for config, storage, index and log (created). modalities: name →
    ``(ae_title, host, port)`` Orthanc can C-MOVE / C-STORE to (more can be added later with
    :meth:`add_modality`, also while running). ae_title: Orthanc's own AE title.
    The DICOM and HTTP ports are picked once and kept across stop()/start().
    tcp_nodelay: start Orthanc with ``TCP_NODELAY=1`` in its environment, which makes its DCMTK
    network layer disable Nagle's algorithm; without it, Debian's Orthanc answers each C-STORE
    ~40 ms late (Nagle + delayed ACK) and ingests ~20 instances/s instead of ~190.
    """

    def __init__(self, workdir: str | Path, *, ae_title: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None,
                 dicomweb: bool = True, startup_timeout_s: float = 30.0, binary: str | None = None,
                 tcp_nodelay: bool = True, count_stores: bool = False):
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.startup_timeout_s = startup_timeout_s
        binary = binary or find_orthanc()
        if binary is None:
            raise OrthancError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        self.binary = binary
        self.tcp_nodelay = tcp_nodelay
        self.count_stores = count_stores
        self.stores_path = self.workdir / "stored-sop-uids.txt"
        self.plugin = find_dicomweb_plugin() if dicomweb else None
        if dicomweb and self.plugin is None:
            raise OrthancError("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
        self.host = "127.0.0.1"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @staticmethod
    def version(binary: str | None = None) -> str:
        """Orthanc's version string (``"1.10.1"``), or ``"?"``."""
        binary = binary or find_orthanc()
        if binary is None:
            return "?"
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
        first = out.splitlines()[0] if out else ""
        return first.split()[-1] if first else "?"

    # ----------------------------------------------------------------------------- addresses

    @property
    def url(self) -> str:
        """REST API root, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root (``.../dicom-web``), for QIDO/WADO/STOW."""
        return f"{self.url}/dicom-web"

    @property
    def peer(self) -> str:
        """``AET@HOST:PORT`` of Orthanc's DICOM server."""
        return f"{self.ae_title}@{self.host}:{self.dicom_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------------------- config

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "Name": f"lesionlens-test-{self.dicom_port}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "Plugins": [self.plugin] if self.plugin else [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {name: list(m) for name, m in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "UnknownSopClassAccepted": True,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 10,
            "StableAge": 1,
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 30,
        }
        if self.count_stores:  # a Lua hook appends every stored instance, re-stores included
            lua = self.workdir / "count-stores.lua"
            lua.write_text('function OnStoredInstance(instanceId, tags, metadata, origin)\n'
                           f'  local f = io.open("{self.stores_path}", "a")\n'
                           '  f:write(tags["SOPInstanceUID"] .. "\\n")\n  f:close()\nend\n')
            cfg["LuaScripts"] = [str(lua)]
        if self.plugin:
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                               "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        return cfg

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> OrthancServer:
        """Write the config, start Orthanc and wait until ``/system`` answers (same storage each time)."""
        if self.running:
            return self
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [self.binary, str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir, start_new_session=True, env=self._env(),
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._cleanup()
                raise OrthancError(f"Orthanc exited at start-up (code {code}):\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/system", timeout=1.0)
                if r.status_code == 200 and self._dicom_port_open():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {self.startup_timeout_s:.0f} s:\n{tail}")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        if self.tcp_nodelay:
            env["TCP_NODELAY"] = "1"
        return env

    def _dicom_port_open(self) -> bool:
        try:
            with socket.create_connection((self.host, self.dicom_port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 15.0, *, graceful: bool = True) -> None:
        """Stop Orthanc; storage is kept.

        graceful: SIGTERM and wait (Orthanc takes ~3 s to shut down), SIGKILL after
        ``timeout_s``; False: SIGKILL at once (for throw-away servers at test teardown).
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    # ----------------------------------------------------------------------------- REST

    def rest_get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params or None, timeout=30.0)
        if r.status_code != 200:
            raise OrthancError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def rest_post(self, path: str, body: Any) -> Any:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=60.0)
        if r.status_code != 200:
            raise OrthancError(f"POST {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else None

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Register a DICOM modality (a C-MOVE / C-STORE target); kept in the config for restarts."""
        self.modalities[name] = (ae_title, host, port)
        if self.running:
            r = httpx.put(f"{self.url}/modalities/{name}",
                          json={"AET": ae_title, "Host": host, "Port": port}, timeout=10.0)
            if r.status_code != 200:
                raise OrthancError(f"PUT /modalities/{name}: HTTP {r.status_code}: {r.text[:300]}")

    def stores(self) -> list[str]:
        """With ``count_stores``: the SOP Instance UID of every store Orthanc executed, in order
        (an instance stored twice is listed twice, although Orthanc keeps one copy)."""
        if not self.stores_path.exists():
            return []
        return [line for line in self.stores_path.read_text().splitlines() if line]

    def find_instances(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Stored instances of a study (optionally of one modality), with their main tags."""
        query = {"StudyInstanceUID": study_uid} | ({"Modality": modality} if modality else {})
        found = self.rest_post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})
        return list(found)

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags`` (keyword → value; sequences as lists of dicts)."""
        return dict(self.rest_get(f"/instances/{orthanc_id}/simplified-tags"))

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return list(self.rest_get("/instances"))

    def sop_instance_uids(self) -> set[str]:
        """SOPInstanceUIDs of every stored instance."""
        found = self.rest_get("/instances", expand="")
        return {inst["MainDicomTags"]["SOPInstanceUID"] for inst in found}

    def upload(self, path: str | Path) -> dict[str, Any]:
        """Store one file through the REST API (``POST /instances``)."""
        r = httpx.post(f"{self.url}/instances", content=Path(path).read_bytes(), timeout=60.0)
        if r.status_code != 200:
            raise OrthancError(f"POST /instances {path}: HTTP {r.status_code}: {r.text[:300]}")
        return dict(r.json())


__all__ = ["OrthancError", "OrthancServer", "find_dicomweb_plugin", "find_orthanc", "free_port"]
