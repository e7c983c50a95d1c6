"""Prediction: preprocess → infer → postprocess, streaming batches, each stage timed.

``Predictor.load("default").predict(path)`` reads a study (or an image), runs the detector over
every slice of each selected series and returns findings. On a CT series the per-slice boxes are
merged into 3D candidates (:mod:`lesionlens.pipeline.aggregate`); on large 2D images the detector
runs on overlapping tiles whose boxes are merged with NMS.

Backends: ``torch`` (CPU/CUDA) and ``onnx`` (ONNX Runtime; CUDA/TensorRT providers when present).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lesionlens.dicom.stack import neighbour_stacks_at
from lesionlens.dicom.types import Problem, Volume
from lesionlens.engine.checkpoint import ONNX, WEIGHTS, ModelMeta, identity, read_meta
from lesionlens.engine.preprocess import normalize, normalize_inplace, pad_to_multiple
from lesionlens.errors import ConfigError, ModelError
from lesionlens.models.postprocess import Detections, Postprocessor, batched_nms
from lesionlens.pipeline.aggregate import AggregateConfig, Candidate3D, SliceDetections, aggregate
from lesionlens.pipeline.patchnet import PATCH_FILE, PatchClassifier
from lesionlens.pipeline.rescore import RESCORER_FILE, Rescorer

Backend = Literal["onnx", "torch"]
PACKAGED_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


def resolve_model(name_or_path: str | Path) -> Path:
    """A model name (``default`` or a folder under the packaged models) or a package path."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    packaged = PACKAGED_MODELS / str(name_or_path)
    if packaged.is_dir():
        return packaged
    raise ModelError(f"no model package named {str(name_or_path)!r} (packaged: "
                     f"{', '.join(sorted(d.name for d in PACKAGED_MODELS.glob('*') if d.is_dir())) or 'none'})")


@dataclass
class SeriesPrediction:
    """Detections for one volume. ``candidates`` for CT series (3D); ``images`` for 2D images."""

    volume: Volume
    candidates: list[Candidate3D] = field(default_factory=list)
    images: list[Detections] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictConfig:
    """batch: CT slices per detector run; 0 = automatic: 1 on a CPU (ONNX Runtime measured fastest
    per slice there: 15.0 ms at batch 1 against 16.9 ms at 8, 512 × 512, 2 threads; the outputs
    are the same bit for bit), 16 on a GPU."""

    conf: float = 0.05
    iou: float = 0.5
    max_det: int = 100
    batch: int = 0
    tile: int = 1024
    tile_overlap: int = 128
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    rescore: bool = True  # apply the package's candidate rescorer (rescorer.json) when it has one

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0 or not 0.0 < self.iou <= 1.0:
            raise ConfigError(f"conf must be in [0, 1] and iou in (0, 1], got {self.conf}, {self.iou}")
        if self.max_det < 1 or self.batch < 0:
            raise ConfigError(f"max_det must be >= 1 and batch >= 0 (0: automatic), got {self.max_det}, {self.batch}")
        if self.tile < 64 or not 0 <= self.tile_overlap <= self.tile // 2:
            raise ConfigError(f"tile must be >= 64 px and tile_overlap within 0..tile/2, got tile {self.tile}, "
                              f"overlap {self.tile_overlap}")


def froc_config(package: str | Path, *, rescore: bool = True) -> PredictConfig:
    """The configuration for FROC evaluation: every candidate down the low-confidence tail.

    Boxes are kept from 0.01 (below that the tracks are noise and linking grows quadratic); with
    a rescorer or a patch classifier the boxes are at its own threshold and every rescored
    candidate is kept."""
    pkg = resolve_model(package)
    has = rescore and ((pkg / RESCORER_FILE).is_file() or (pkg / PATCH_FILE).is_file())
    return PredictConfig(conf=0.0 if has else 0.01, max_det=300, rescore=rescore)


class Predictor:
    """Runs a model package on volumes. Load once, call :meth:`predict_volume` many times."""

    def __init__(self, package: str | Path, *, backend: Backend = "onnx", device: str = "cpu",
                 threads: int | None = None, config: PredictConfig | None = None):
        self.package = resolve_model(package)
        self.meta: ModelMeta = read_meta(self.package)
        self.identity = identity(self.package)
        self.config = config or PredictConfig()
        self.post = Postprocessor(conf=self.config.conf, iou=self.config.iou, max_det=self.config.max_det,
                                  pre_nms_topk=max(3000, self.config.max_det))
        # CT: with a rescorer, candidates are built from boxes at the threshold it was fitted
        # with (the tracks it learnt from), then filtered on the rescored confidence
        self.rescorer = Rescorer.load(self.package) if self.config.rescore else None
        # the 3D patch classifier (false-positive reduction, pipeline/patchnet.py) runs after it
        self.patch = PatchClassifier.load(self.package, threads) if self.config.rescore else None
        fitted = [r.box_conf for r in (self.rescorer, self.patch) if r is not None]
        box_conf = min(fitted) if fitted else self.config.conf
        self.post_ct = Postprocessor(conf=box_conf, iou=self.config.iou, max_det=self.config.max_det,
                                     pre_nms_topk=max(3000, self.config.max_det))
        self.backend, self._device = backend, device
        self._run, self.multiple = self._make_runner(backend, device, threads)
        self.batch = self.config.batch or (16 if self.on_gpu else 1)

    @classmethod
    def load(cls, name: str | Path = "default", **kwargs: Any) -> Predictor:
        return cls(name, **kwargs)

    @property
    def on_gpu(self) -> bool:
        """Whether the detector runs on a GPU (a CUDA/TensorRT provider, or torch on cuda)."""
        providers = getattr(self._run, "providers", None)
        if providers is not None:
            return any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in providers)
        return self._device.startswith("cuda")

    def _make_runner(self, backend: str, device: str, threads: int | None) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        if backend == "onnx":
            from lesionlens.engine.export import OnnxDetector, available_providers

            path = self.package / ONNX
            if not path.is_file():
                raise ModelError("the package has no model.onnx; run `lesionlens export` or use --backend torch",
                                 path=self.package)
            providers = available_providers(prefer_gpu=device == "cuda")
            onnx = OnnxDetector(path, intra_op_threads=threads, providers=providers)
            strides = onnx.metadata.get("strides", "[16]")
            import json

            cfg = json.loads(onnx.metadata.get("config", "{}"))
            mult = max(json.loads(strides)) * (int(cfg.get("area", 1)) if cfg.get("attention") else 1)
            return onnx, mult
        if backend == "torch":
            import torch

            from lesionlens.models.detector import load_detector

            if threads:
                torch.set_num_threads(threads)
            dev = torch.device(device)
            model, _ = load_detector(self.package / WEIGHTS, device=dev)
            model.fuse()

            def run(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(x).to(dev)).float().cpu().numpy()  # type: ignore[union-attr]

            return run, model.size_multiple
        raise ConfigError(f"backend must be 'onnx' or 'torch', got {backend!r}")

    # ------------------------------------------------------------------------------ CT
    def _batches(self, volume: Volume, timings: dict[str, float]) -> Iterator[tuple[list[int], np.ndarray]]:
        spec, b = self.meta.input, self.batch
        k_all = list(range(volume.pixels.shape[0]))
        for i in range(0, len(k_all), b):
            t0 = time.perf_counter()
            ks = k_all[i : i + b]
            if spec.kind == "ct-hu":
                stack = neighbour_stacks_at(volume, ks, spec.context_mm)
            else:
                stack = np.repeat(volume.pixels[ks][:, None], spec.channels, axis=1).astype(np.float32)
            x = pad_to_multiple(normalize_inplace(stack, spec), self.multiple)
            timings["preprocess"] += time.perf_counter() - t0
            yield ks, np.ascontiguousarray(x, dtype=np.float32)

    def predict_slices(self, volume: Volume) -> tuple[list[SliceDetections], dict[str, float]]:
        """Per-slice detections of a (K, R, C) volume, with stage timings in seconds."""
        timings: dict[str, float] = defaultdict(float)
        h, w = volume.pixels.shape[1:3]
        out: list[SliceDetections] = []
        for ks, x in self._batches(volume, timings):
            t0 = time.perf_counter()
            raw = self._run(x)
            t1 = time.perf_counter()
            for k, det in zip(ks, self.post_ct(raw, image_size=(h, w))):
                out.append(SliceDetections(k, det.boxes, det.scores, det.labels))
            timings["inference"] += t1 - t0
            timings["postprocess"] += time.perf_counter() - t1
        return out, dict(timings)

    def predict_volume(self, volume: Volume) -> SeriesPrediction:
        """A CT series → 3D candidates; a 2D image (K == 1 without volumetric geometry) → boxes."""
        if volume.pixels.ndim != 3:
            raise ConfigError(f"{volume.series_instance_uid}: colour images are not supported by this model")
        if not volume.is_volumetric and volume.pixels.shape[0] == 1:
            return self.predict_image(volume)
        slices, timings = self.predict_slices(volume)
        cands = self.candidates(volume, slices, timings)
        return SeriesPrediction(volume, candidates=cands, timings=timings)

    def candidates(self, volume: Volume, slices: list[SliceDetections],
                   timings: dict[str, float] | None = None) -> list[Candidate3D]:
        """Per-slice detections → 3D candidates: linked, rescored when the package has a rescorer,
        filtered at ``config.conf`` and sorted by descending confidence. Adds stage times to ``timings``."""
        timings = timings if timings is not None else {}
        t0 = time.perf_counter()
        cands = aggregate(slices, volume.affine, self.config.aggregate)
        timings["aggregate"] = time.perf_counter() - t0
        if self.rescorer is not None:
            t0 = time.perf_counter()
            cands = self.rescorer(cands, volume.pixels, float(volume.spacing_mm[0]))
            timings["rescore"] = time.perf_counter() - t0
        if self.patch is not None:
            t0 = time.perf_counter()
            cands = self.patch(cands, volume.pixels, np.asarray(volume.affine), min_confidence=self.config.conf)
            timings["patch_classifier"] = time.perf_counter() - t0
        if self.rescorer is not None or self.patch is not None:
            cands = [c for c in cands if c.confidence >= self.config.conf]
        return cands

    # ------------------------------------------------------------------------------ 2D
    def predict_image(self, volume: Volume) -> SeriesPrediction:
        """2D image(s) of a volume (each frame separately); large frames are tiled.

        For image (non-CT) models a MONOCHROME1 image is negated first, so the model sees it as it
        is displayed (dense = bright), as it saw its MONOCHROME2 training images."""
        timings: dict[str, float] = defaultdict(float)
        spec = self.meta.input
        sign = -1.0 if spec.kind != "ct-hu" and volume.display.invert else 1.0
        images: list[Detections] = []
        for k in range(volume.pixels.shape[0]):
            t0 = time.perf_counter()
            img = np.repeat(sign * volume.pixels[k][None].astype(np.float32), spec.channels, 0)
            x = normalize(img, spec)
            timings["preprocess"] += time.perf_counter() - t0
            images.append(self._tiled(x, timings))
        return SeriesPrediction(volume, images=images, timings=dict(timings))

    def detect_image(self, image: np.ndarray) -> Detections:
        """One model input as stored, ``(C, H, W)`` physical values (e.g. a saved 2.5D HU stack)
        → detections in its pixels (normalised as in training, tiled when large)."""
        return self._tiled(normalize(np.asarray(image, np.float32), self.meta.input), defaultdict(float))

    def _tiled(self, x: np.ndarray, timings: dict[str, float]) -> Detections:
        """x (C, H, W) in [0, 1] → detections in full-image pixels (tiles merged by NMS)."""
        cfg = self.config
        _, h, w = x.shape
        t = cfg.tile
        if h <= t and w <= t:
            t0 = time.perf_counter()
            raw = self._run(pad_to_multiple(x, self.multiple)[None])
            t1 = time.perf_counter()
            det = self.post(raw, image_size=(h, w))[0]
            timings["inference"] += t1 - t0
            timings["postprocess"] += time.perf_counter() - t1
            return det
        step = t - cfg.tile_overlap
        ys = sorted({min(y, max(0, h - t)) for y in range(0, max(1, h - cfg.tile_overlap), step)})
        xs = sorted({min(v, max(0, w - t)) for v in range(0, max(1, w - cfg.tile_overlap), step)})
        boxes, scores, labels = [], [], []
        for y0 in ys:
            for x0 in xs:
                tile = pad_to_multiple(x[:, y0 : y0 + t, x0 : x0 + t], self.multiple)
                t0 = time.perf_counter()
                raw = self._run(np.ascontiguousarray(tile[None]))
                t1 = time.perf_counter()
                d = self.post(raw, image_size=(min(t, h - y0), min(t, w - x0)))[0]
                boxes.append(d.boxes + np.array([x0, y0, x0, y0], np.float32))
                scores.append(d.scores)
                labels.append(d.labels)
                timings["inference"] += t1 - t0
                timings["postprocess"] += time.perf_counter() - t1
        b, s, lab = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
        keep = batched_nms(b, s, lab, cfg.iou)[: cfg.max_det]
        return Detections(b[keep].astype(np.float32), s[keep].astype(np.float32), lab[keep].astype(np.int64))

    # --------------------------------------------------------------------------- studies
    def predict(self, inputs: str | Path | list[str | Path], *, workers: int = 1) -> tuple[list[SeriesPrediction], list[Problem]]:
        """Read a study (DICOM file/folder/zip, or an image file) and predict every selected series."""
        from lesionlens.dicom.formats import read_image
        from lesionlens.dicom.study import read_study

        paths = inputs if isinstance(inputs, list) else [inputs]
        image_suffixes = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".gz", ".mhd", ".mha"}
        volumes: list[Volume] = []
        problems: list[Problem] = []
        dicom_inputs = []
        for p in paths:
            if Path(p).is_file() and Path(p).suffix.lower() in image_suffixes:
                volumes.append(read_image(p))
            else:
                dicom_inputs.append(p)
        if dicom_inputs:
            res = read_study(dicom_inputs if len(dicom_inputs) > 1 else dicom_inputs[0], workers=workers)
            volumes += res.volumes
            problems += res.problems
        return [self.predict_volume(v) for v in volumes], problems


def class_name(meta: ModelMeta, label: int) -> str:
    return meta.names[label] if 0 <= label < len(meta.names) else str(label)
