"""Patient-level train/val/test splits.

Every image of a patient lands in the same split, so no patient is seen in training and judged
in validation or test. Assignment is deterministic: the same patient ids, ratios and seed give
the same split regardless of the order the ids arrive in. An optional *stratum* per patient
(e.g. ``"pos"``/``"neg"`` for "has at least one lesion") is split separately, so each split gets
its share of positive patients instead of all of them landing in ``train`` by chance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from lesionlens.errors import ConfigError, DataFormatError, OutputError

__all__ = ["SPLIT_NAMES", "allocate_counts", "normalize_ratios", "parse_ratios", "resplit_dataset", "split_patients"]

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def parse_ratios(text: str, field: str = "ratios") -> tuple[float, ...]:
    """``"0.7,0.15,0.15"`` → ``(0.7, 0.15, 0.15)`` (normalised to sum to 1).

    Raises :class:`ConfigError` naming ``field`` for anything that is not 1–3 non-negative
    numbers with a positive sum.
    """
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise ConfigError(f"{field}: expected comma-separated numbers like 0.7,0.15,0.15, got {text!r}") from None
    return normalize_ratios(values, field)


def normalize_ratios(ratios: Sequence[float], field: str = "ratios") -> tuple[float, ...]:
    """Check 1–3 non-negative ratios (train, val, test) and scale them to sum to 1."""
    r = [float(v) for v in ratios]
    if not 1 <= len(r) <= len(SPLIT_NAMES):
        raise ConfigError(f"{field}: expected 1 to 3 ratios (train, val, test), got {len(r)}")
    if any(not np.isfinite(v) or v < 0 for v in r):
        raise ConfigError(f"{field}: ratios must be finite and >= 0, got {list(ratios)}")
    total = sum(r)
    if total <= 0:
        raise ConfigError(f"{field}: ratios must not all be 0")
    return tuple(v / total for v in r)


def allocate_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items into ``len(ratios)`` integer counts summing to ``n`` (largest remainder).

    Ties in the remainders go to the earlier split (train before val before test).
    """
    r = np.asarray(ratios, dtype=np.float64)
    exact = r / r.sum() * n
    counts = np.floor(exact).astype(int)
    rest = n - int(counts.sum())
    order = sorted(range(len(r)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:rest]:
        counts[i] += 1
    return [int(c) for c in counts]


def _stable_key(patient_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()


def split_patients(
    patient_ids: Iterable[str],
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    *,
    strata: Mapping[str, str] | None = None,
    names: Sequence[str] = SPLIT_NAMES,
) -> dict[str, str]:
    """Assign each distinct patient id to one split name.

    patient_ids: any iterable (duplicates are fine; each patient is assigned once).
    ratios: one weight per split in ``names`` order; normalised, need not sum to 1.
    seed: the order within each stratum is a seeded hash of ``(seed, patient_id)``, so the
      result does not depend on input order and adding a patient moves few others.
    strata: optional patient → group label; each group is divided by ``ratios`` on its own.
    Returns ``{patient_id: split_name}``. Splits whose ratio is 0 get no patients.
    """
    ratios_n = normalize_ratios(ratios)
    if len(ratios_n) > len(names):
        raise ConfigError(f"ratios: {len(ratios_n)} ratios but only {len(names)} split names")
    unique = sorted(set(patient_ids))
    groups: dict[str, list[str]] = {}
    for pid in unique:
        groups.setdefault(strata.get(pid, "") if strata else "", []).append(pid)
    out: dict[str, str] = {}
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda p: _stable_key(p, seed))
        counts = allocate_counts(len(members), ratios_n)
        start = 0
        for name, count in zip(names, counts):
            for pid in members[start : start + count]:
                out[pid] = name
            start += count
    return out


def resplit_dataset(root: str | Path, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """Re-split a YOLO-layout dataset on disk by patient; returns ``{patient_id: split}``.

    Images and their label files move between ``images/<split>/`` and ``labels/<split>/``;
    ``manifest.json`` (when present: patients come from it, and its fingerprint is renewed)
    and ``dataset.yaml`` are rewritten. Patients with at least one box are split apart from
    those without (stratified). Without a manifest the patient is the file-name part before
    ``__`` (see :func:`lesionlens.data.stats.read_training_set`).
    """
    import yaml

    from lesionlens.data.stats import read_manifest, read_training_set
    from lesionlens.data.trainset import manifest_fingerprint

    root = Path(root)
    ds = read_training_set(root)
    items = [(old, im) for old, ims in ds.splits.items() for im in ims]
    strata: dict[str, str] = {}
    for _, im in items:
        if len(im.boxes) or strata.get(im.patient_id) == "pos":
            strata[im.patient_id] = "pos"
        else:
            strata.setdefault(im.patient_id, "neg")
    assignment = split_patients(strata, ratios, seed, strata=strata)
    moves: dict[str, str] = {}
    for split in SPLIT_NAMES:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for old, im in items:
        new = assignment[im.patient_id]
        src_img = root / im.image
        parts = Path(im.image).parts
        if "images" not in parts:
            raise DataFormatError("image is not under an images/<split>/ folder", path=src_img)
        rel_in_split = Path(*parts[parts.index("images") + 2 :])
        dst_rel = (Path("images") / new / rel_in_split).as_posix()
        moves[im.image] = dst_rel
        if dst_rel == Path(im.image).as_posix():
            continue
        src_lbl = root / Path("labels", *parts[parts.index("images") + 1 :]).with_suffix(".txt")
        dst_img, dst_lbl = root / dst_rel, (root / "labels" / new / rel_in_split).with_suffix(".txt")
        if dst_img.exists():
            raise OutputError(f"cannot move {im.image}: {dst_rel} exists already", path=root)
        dst_img.parent.mkdir(parents=True, exist_ok=True)
        dst_lbl.parent.mkdir(parents=True, exist_ok=True)
        try:
            src_img.replace(dst_img)
            if src_lbl.exists():
                src_lbl.replace(dst_lbl)
        except OSError as exc:
            raise OutputError(f"cannot move {im.image}: {exc}", path=root) from None
    yaml_path = root / "dataset.yaml"
    doc = yaml.safe_load(yaml_path.read_text())
    doc.update({"path": ".", **{s: f"images/{s}" for s in SPLIT_NAMES}})
    manifest = read_manifest(root)
    if manifest is not None:
        for e in manifest["images"]:
            new_rel = moves.get(str(e["image"]), str(e["image"]))
            e["split"] = Path(new_rel).parts[1]
            e["image"] = new_rel
            e["label"] = "labels/" + Path(new_rel).with_suffix(".txt").as_posix().split("/", 1)[1]
        manifest["images"] = sorted(manifest["images"], key=lambda e: str(e["image"]))
        fp = manifest_fingerprint(manifest["images"], manifest.get("header"))
        manifest["fingerprint"] = fp
        cfg = manifest.get("config")
        if isinstance(cfg, dict):
            cfg.update({"ratios": list(normalize_ratios(ratios)), "seed": seed})
        doc["fingerprint"] = fp
    try:
        yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if manifest is not None:
            (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except OSError as exc:
        raise OutputError(f"cannot write dataset files: {exc}", path=root) from None
    return assignment
