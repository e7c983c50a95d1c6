"""Training samples from a YOLO-layout dataset (our ``npy-hu`` CT stacks or ordinary images).

Layout (Ultralytics' convention, plus our extras in ``dataset.yaml``)::

    dataset.yaml        path, train/val/test (image folders), names, [channels, format, context_mm]
    images/<split>/x.npy (C, H, W) HU stacks (float16/float32)   or  x.png / x.jpg / x.tif
    labels/<split>/x.txt "class cx cy w h" normalised to the image size, one box per line

Training uses fixed-size crops at the native pixel scale (the detector is fully convolutional,
so it predicts on whole slices later): positives are cropped around a random lesion, negatives
at random, so small lesions are never shrunk by resizing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from lesionlens.data.augment import Augmenter
from lesionlens.data.formats.yolo import label_path_for, read_label_file
from lesionlens.data.mix import LesionBank, mosaic, paste_lesions
from lesionlens.engine.preprocess import InputSpec, normalize, pad_to_multiple
from lesionlens.errors import ConfigError, DataFormatError

IMAGE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.yaml`` says. ``splits`` maps split name → image folder."""

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, Path]
    channels: int
    format: str
    context_mm: tuple[float, ...] | None


def read_dataset_yaml(path: str | Path) -> DatasetInfo:
    """Parse a YOLO ``dataset.yaml`` (names as a list or a {id: name} dict)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataFormatError("dataset.yaml not found", path=path) from None
    except yaml.YAMLError as exc:
        raise DataFormatError(f"not valid YAML: {exc}", path=path) from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise DataFormatError("missing field 'names'", path=path)
    names_raw = doc["names"]
    if isinstance(names_raw, dict):
        names = [str(names_raw[k]) for k in sorted(names_raw, key=int)]
    elif isinstance(names_raw, list):
        names = [str(n) for n in names_raw]
    else:
        raise DataFormatError("field 'names' must be a list or a mapping", path=path)
    root = Path(doc.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    splits = {s: root / str(doc[s]) for s in ("train", "val", "test") if doc.get(s)}
    if not splits:
        raise DataFormatError("no split folders (train/val/test) given", path=path)
    ctx = doc.get("context_mm")
    return DatasetInfo(
        yaml_path=path,
        root=root,
        names=names,
        splits=splits,
        channels=int(doc.get("channels", 1)),
        format=str(doc.get("format", "image")),
        context_mm=tuple(float(v) for v in ctx) if ctx else None,
    )


def load_image(path: Path) -> np.ndarray:
    """Read one image as (C, H, W) float32 physical values."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False).astype(np.float32)
            return arr[None] if arr.ndim == 2 else arr
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot read image: {exc}", path=path) from None
    arr = arr.astype(np.float32)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr[..., :3], -1, 0)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataFormatError("image folder does not exist", path=folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class DetectionSamples(Dataset):  # type: ignore[type-arg]
    """One split of a dataset as training samples.

    Returns ``(image, target)`` with image ``(C, S, S) float32`` normalised by ``spec`` and
    target ``{"boxes": (n,4) float32 xyxy px in the crop, "labels": (n,) int64}``.
    ``crop=None`` returns the whole image (padded to a multiple of 32) — used for validation.
    """

    def __init__(
        self,
        info: DatasetInfo,
        split: str,
        spec: InputSpec,
        *,
        crop: int | None = 256,
        augmenter: Augmenter | None = None,
        seed: int = 0,
        mosaic: float = 0.0,
        copy_paste: float = 0.0,
    ):
        if split not in info.splits:
            raise DataFormatError(f"dataset has no split {split!r}", path=info.yaml_path)
        self.info, self.spec, self.crop, self.augmenter = info, spec, crop, augmenter
        self.images = list_images(info.splits[split])
        self.rng = np.random.default_rng(seed)
        self._fill = -1000.0 if spec.kind == "ct-hu" else 0.0
        if not (0.0 <= mosaic <= 1.0 and 0.0 <= copy_paste <= 1.0):
            raise ConfigError(f"mosaic and copy_paste are probabilities in [0, 1], got {mosaic}, {copy_paste}")
        self.mosaic, self.copy_paste = (mosaic, copy_paste) if crop else (0.0, 0.0)
        self.bank = LesionBank(seed=seed) if self.copy_paste > 0 else None

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image i as (C,H,W) physical values with boxes (N,4) xyxy px and labels (N,)."""
        img = load_image(self.images[i])
        if img.shape[0] != self.spec.channels:
            raise DataFormatError(
                f"image has {img.shape[0]} channels, the model expects {self.spec.channels}", path=self.images[i]
            )
        boxes, labels = read_label_file(label_path_for(self.images[i]), len(self.info.names), img.shape[2], img.shape[1])
        return img, boxes, labels

    def image_size(self, i: int) -> tuple[int, int]:
        """(width, height) of image i, read from its header only."""
        path = self.images[i]
        try:
            if path.suffix == ".npy":
                shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
                return int(shape[-1]), int(shape[-2])
            from PIL import Image

            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"cannot read image: {exc}", path=path) from None

    def sample_weights(self, small_px: float, boost: float) -> np.ndarray:
        """Per-image sampling weights: ``1 + boost`` for an image holding a box whose longer side
        is under ``small_px`` pixels, else 1 — so small lesions (few slices, few pixels) are
        drawn more often than their share of the split."""
        w = np.ones(len(self.images), np.float64)
        if boost <= 0:
            return w
        for i, path in enumerate(self.images):
            label = label_path_for(path)
            if not label.is_file():
                continue
            width, height = self.image_size(i)
            boxes, _ = read_label_file(label, len(self.info.names), width, height)
            if len(boxes) and float(np.min(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))) < small_px:
                w[i] += boost
        return w

    def _crop(self, img: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
              size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = int(size or self.crop or 0)
        _, h, w = img.shape
        if h < s or w < s:
            img = np.pad(img, ((0, 0), (0, max(0, s - h)), (0, max(0, s - w))), constant_values=self._fill)
            _, h, w = img.shape
        if len(boxes):
            b = boxes[self.rng.integers(len(boxes))]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            x0 = int(np.clip(cx - self.rng.uniform(0.15, 0.85) * s, 0, w - s))
            y0 = int(np.clip(cy - self.rng.uniform(0.15, 0.85) * s, 0, h - s))
        else:
            x0, y0 = int(self.rng.integers(0, w - s + 1)), int(self.rng.integers(0, h - s + 1))
        img = img[:, y0 : y0 + s, x0 : x0 + s]
        if len(boxes):
            boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
            keep_full = boxes.copy()
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, s)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, s)
            area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
            full = (keep_full[:, 2] - keep_full[:, 0]) * (keep_full[:, 3] - keep_full[:, 1])
            keep = area >= 0.4 * np.maximum(full, 1e-6)  # lesions cut mostly away are dropped
            boxes, labels = boxes[keep], labels[keep]
        return np.ascontiguousarray(img), boxes, labels

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, boxes, labels = self.raw(i)
        if self.bank is not None and len(boxes):
            self.bank.offer(img, boxes, labels)
        return img, boxes, labels

    def _sample(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image i (cropped; a mosaic of it and three others with probability ``mosaic``; with
        lesions pasted in with probability ``copy_paste``), in physical units."""
        if not self.crop:
            return self.raw(i)
        s = int(self.crop)
        if self.mosaic and s >= 16 and self.rng.random() < self.mosaic:
            others = self.rng.integers(len(self.images), size=3).tolist()
            img, boxes, labels = mosaic([self._crop(*self._read(j), size=s // 2) for j in [i, *others]], s)
        else:
            img, boxes, labels = self._crop(*self._read(i))
        if self.bank is not None and len(self.bank) and self.rng.random() < self.copy_paste:
            img, boxes, labels = paste_lesions(img, boxes, labels, self.bank, self.rng,
                                               n=int(self.rng.integers(1, 3)),
                                               lung_hu=-600.0 if self.spec.kind == "ct-hu" else None)
        return img, boxes, labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img, boxes, labels = self._sample(i)
        if self.augmenter is not None:
            img, boxes, labels = self.augmenter(img, boxes, labels)
        x = normalize(img, self.spec)
        if not self.crop:
            x = pad_to_multiple(x, 32)
        return torch.from_numpy(np.ascontiguousarray(x)), {
            "boxes": torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(np.asarray(labels, np.int64).reshape(-1)),
        }


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images (B, C, S, S); keep per-image targets in a list."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
