"""Model packages: what a training run writes and what prediction loads.

A package is a folder::

    model.safetensors   weights (EMA weights for trained models)
    model.json          DetectorConfig
    meta.json           name, version, input spec, class names, resolved training config,
                        training-data fingerprint, metrics, creation time
    model.onnx          (optional) the exported graph, preferred by the ONNX backend
    state.pt            (last checkpoint only) optimizer / EMA / epoch, for --resume

The model's identity (name, version, sha256 over its prediction files: weights, ONNX graph,
second stages) goes into every output.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionlens.engine.preprocess import InputSpec
from lesionlens.errors import ModelError

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
META = "meta.json"
ONNX = "model.onnx"
#: the package files that decide its predictions (the second stages' files by name, so that this
#: module need not import them); a model's ``sha256`` covers those present
PREDICTION_FILES = (WEIGHTS, ONNX, "rescorer.json", "fpr.onnx", "fpr_detail.onnx")


@dataclass
class ModelMeta:
    """Everything about a model package except its weights."""

    name: str
    version: str
    input: InputSpec
    names: list[str]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    train_config: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    notice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "input": self.input.to_dict(),
            "names": list(self.names),
            "created": self.created,
            "train_config": self.train_config,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "notice": self.notice,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            input=InputSpec.from_dict(d["input"]),
            names=[str(n) for n in d["names"]],
            created=str(d.get("created", "")),
            train_config=dict(d.get("train_config", {})),
            data_fingerprint=str(d.get("data_fingerprint", "")),
            metrics=dict(d.get("metrics", {})),
            notice=str(d.get("notice", "")),
        )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_meta(package: str | Path) -> ModelMeta:
    p = Path(package) / META
    try:
        return ModelMeta.from_dict(json.loads(p.read_text()))
    except FileNotFoundError:
        raise ModelError("not a model package (meta.json missing)", path=Path(package)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"bad meta.json: {exc}", path=p) from None


def write_meta(package: str | Path, meta: ModelMeta) -> Path:
    p = Path(package) / META
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    return p


def package_sha256(file_hashes: dict[str, str]) -> str:
    """The model's SHA-256 from its files' own: one hash over ``"NAME SHA256\n"`` of each of
    :data:`PREDICTION_FILES` present in ``file_hashes`` (name → hex digest), in that order. Two
    packages with the same detector but another second stage (``fpr.onnx``) differ; a new model
    card or metrics in ``meta.json`` do not change it."""
    h = hashlib.sha256()
    for name in PREDICTION_FILES:
        if name in file_hashes:
            h.update(f"{name} {file_hashes[name]}\n".encode())
    return h.hexdigest()


def identity(package: str | Path) -> dict[str, str]:
    """{name, version, sha256} of a package (:func:`package_sha256` of its prediction files)."""
    meta = read_meta(package)
    pkg = Path(package)
    if not (pkg / WEIGHTS).is_file():
        raise ModelError("model weights missing", path=pkg / WEIGHTS)
    hashes = {n: sha256_file(pkg / n) for n in PREDICTION_FILES if (pkg / n).is_file()}
    return {"name": meta.name, "version": meta.version, "sha256": package_sha256(hashes)}
