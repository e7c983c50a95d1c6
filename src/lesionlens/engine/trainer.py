"""The training loop: AdamW + warm-up + cosine decay, EMA weights, AMP on CUDA, gradient
clipping, seeded runs, validation every epoch, ``last``/``best`` model packages, early stopping,
CSV/JSON logs and PNG plots. Hooks (``on_epoch_end``) let callers observe without copying it.

Run folder::

    runs/NAME/config.yaml         the resolved TrainConfig
    runs/NAME/results.csv|json    one row per epoch (losses, lr, val metrics, time)
    runs/NAME/weights/last/       model package + state.pt (for --resume)
    runs/NAME/weights/best/       model package with the best validation fitness
    runs/NAME/losses.png, pr_curve.png
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from lesionlens import __version__
from lesionlens.data.augment import AugmentConfig, Augmenter
from lesionlens.engine.checkpoint import CONFIG, WEIGHTS, ModelMeta, read_meta, write_meta
from lesionlens.engine.config import TrainConfig
from lesionlens.engine.dataset import DatasetInfo, DetectionSamples, collate, read_dataset_yaml
from lesionlens.engine.preprocess import InputSpec
from lesionlens.errors import ConfigError, ModelError
from lesionlens.models.detector import (
    Detector,
    DetectorConfig,
    build_detector,
    load_detector,
    save_detector,
)
from lesionlens.models.loss import DetectionLoss, LossConfig
from lesionlens.models.postprocess import Postprocessor


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ModelEMA:
    """Exponential moving average of weights, with the usual ramp: d = decay·(1 − e^(−n/2000))."""

    def __init__(self, model: nn.Module, decay: float = 0.999, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 2000.0))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def input_spec_for(info: DatasetInfo) -> InputSpec:
    """The model input spec a dataset implies (CT HU stacks vs ordinary images)."""
    if info.format.startswith("npy-hu"):
        ctx = info.context_mm or tuple(float(i) for i in range(-(info.channels // 2), info.channels // 2 + 1))
        return InputSpec(kind="ct-hu", channels=info.channels, context_mm=tuple(ctx))
    return InputSpec(kind="gray", channels=info.channels, context_mm=(0.0,) * info.channels)


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    best_fitness: float
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    images_per_s: float = 0.0


# the last conv of each level's class branch: re-initialised when the class list changes
_CLASS_OUTPUT = re.compile(r"head\.cls\.\d+\.2\.")

EpochHook = Callable[[int, dict[str, Any]], None]


class Trainer:
    """``Trainer(config).fit()`` trains, validates and writes the run folder."""

    def __init__(self, config: TrainConfig, *, on_epoch_end: list[EpochHook] | None = None):
        self.cfg = config
        self.hooks = list(on_epoch_end or [])
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.info = read_dataset_yaml(config.data)
        self.names = list(config.names or self.info.names)
        self.spec = input_spec_for(self.info)
        self.run_dir = Path(config.out)
        self.model = self._build_model().to(self.device)
        self.criterion = DetectionLoss(self.model.config, LossConfig(score_floor=config.score_floor))
        self.start_epoch = 0
        self.best_fitness = -1.0
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------- model
    def _build_model(self) -> Detector:
        cfg = self.cfg
        if cfg.model in ("n", "s", "m"):
            dc = DetectorConfig(
                size=cfg.model, in_channels=self.spec.channels, num_classes=len(self.names),
                attention=cfg.attention, class_names=self.names,
            )
            return build_detector(dc)
        src = Path(cfg.model)
        weights = src / WEIGHTS if src.is_dir() else src
        model, dc = load_detector(weights)
        if dc.in_channels != self.spec.channels:
            raise ModelError(f"checkpoint takes {dc.in_channels} channels, the data has {self.spec.channels}", path=src)
        if list(dc.class_names or []) != self.names:
            # fine-tuning onto a new class list: keep everything but the class branch's last conv
            new_dc = DetectorConfig(**{**dc.to_dict(), "num_classes": len(self.names), "class_names": self.names})
            fresh = build_detector(new_dc)
            own = fresh.state_dict()
            for k, v in model.state_dict().items():
                if k in own and own[k].shape == v.shape and not _CLASS_OUTPUT.match(k):
                    own[k] = v
            fresh.load_state_dict(own)
            model = fresh
        return model.train()

    # ------------------------------------------------------------------------------ data
    def _loaders(self) -> tuple[DataLoader, DetectionSamples | None]:  # type: ignore[type-arg]
        cfg = self.cfg
        aug = Augmenter(AugmentConfig(enabled=cfg.augment), fill=-1000.0 if self.spec.kind == "ct-hu" else 0.0,
                        seed=cfg.seed)
        train = DetectionSamples(self.info, "train", self.spec, crop=cfg.imgsz, augmenter=aug, seed=cfg.seed,
                                 mosaic=cfg.mosaic if cfg.augment else 0.0,
                                 copy_paste=cfg.copy_paste if cfg.augment else 0.0)
        if len(train) == 0:
            raise ConfigError("the training split holds no images", path=self.info.splits["train"])
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = None
        if cfg.small_boost > 0:
            from torch.utils.data import WeightedRandomSampler

            weights = train.sample_weights(cfg.small_px, cfg.small_boost)
            sampler = WeightedRandomSampler(weights.tolist(), num_samples=len(train), replacement=True,
                                            generator=gen)
        loader = DataLoader(train, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                            num_workers=cfg.workers, collate_fn=collate, drop_last=len(train) > cfg.batch,
                            generator=gen, persistent_workers=cfg.workers > 0)
        val = DetectionSamples(self.info, "val", self.spec, crop=None) if "val" in self.info.splits else None
        return loader, (val if val is not None and len(val) > 0 else None)

    # ------------------------------------------------------------------------- checkpoints
    def _save(self, which: str, ema: ModelEMA, opt: torch.optim.Optimizer, epoch: int, metrics: dict[str, Any]) -> Path:
        d = self.run_dir / "weights" / which
        d.mkdir(parents=True, exist_ok=True)
        save_detector(ema.ema, d / WEIGHTS)  # type: ignore[arg-type]  # the EMA copy of a Detector
        meta = ModelMeta(
            name=f"lesionlens-{self.model.config.size}", version=__version__, input=self.spec, names=self.names,
            train_config=self.cfg.model_dump(), data_fingerprint=self._fingerprint(), metrics=metrics,
        )
        write_meta(d, meta)
        if which == "last":
            torch.save({"model": self.model.state_dict(), "ema": ema.ema.state_dict(), "ema_updates": ema.updates,
                        "optimizer": opt.state_dict(), "epoch": epoch, "best_fitness": self.best_fitness,
                        "history": self.history}, d / "state.pt")
        return d

    def _fingerprint(self) -> str:
        m = self.info.root / "manifest.json"
        if m.is_file():
            try:
                return str(json.loads(m.read_text()).get("fingerprint", ""))
            except ValueError:
                return ""
        return ""

    # ------------------------------------------------------------------------------- loop
    def fit(self) -> TrainResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        loader, val = self._loaders()
        steps = cfg.steps_per_epoch or len(loader)
        total = steps * cfg.epochs
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))
        ema = ModelEMA(self.model, cfg.ema_decay)
        if cfg.resume:
            self._resume(opt, ema)
        use_amp = cfg.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        warmup = int(cfg.warmup_epochs * steps)
        stale, seen, t_train = 0, 0, 0.0
        last_dir = best_dir = self.run_dir / "weights" / "last"
        epoch = self.start_epoch
        from lesionlens.cli._common import progress

        for epoch in range(self.start_epoch, cfg.epochs):
            self.model.train()
            sums: dict[str, float] = {}
            t0 = time.perf_counter()
            it = iter(loader)
            with progress(transient=True) as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps)
                for i in range(steps):
                    try:
                        x, targets = next(it)
                    except StopIteration:
                        it = iter(loader)
                        x, targets = next(it)
                    g = epoch * steps + i
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr * lr_factor(g, total, warmup, cfg.min_lr_ratio)
                    x = x.to(self.device, non_blocking=True)
                    tg = [(t["boxes"].to(self.device), t["labels"].to(self.device)) for t in targets]
                    with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
                        out = self.model(x)
                    losses = self.criterion([o.float() for o in out], tg)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(losses["loss"]).backward()
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    ema.update(self.model)
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    seen += x.shape[0]
                    bar.advance(task)
            t_train += time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                                   **{f"train_{k}": v / steps for k, v in sums.items()},
                                   "epoch_s": round(time.perf_counter() - t0, 3)}
            if val is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                row.update(self.validate(ema.ema, val))
            ap = row.get("val_ap50")
            fitness = float(ap) if ap is not None else -float(row.get("train_loss", 0.0))
            self.history.append(row)
            improved = fitness > self.best_fitness
            if improved:
                self.best_fitness, stale = fitness, 0
                best_dir = self._save("best", ema, opt, epoch + 1, row)
            else:
                stale += 1
            last_dir = self._save("last", ema, opt, epoch + 1, row)
            self._write_logs()
            for hook in self.hooks:
                hook(epoch + 1, row)
            if stale >= cfg.patience:
                break
        self._plots(val, ema.ema)
        return TrainResult(self.run_dir, best_dir, last_dir, self.best_fitness, epoch + 1 - self.start_epoch,
                           self.history, images_per_s=seen / t_train if t_train > 0 else 0.0)

    def _resume(self, opt: torch.optim.Optimizer, ema: ModelEMA) -> None:
        state_path = self.run_dir / "weights" / "last" / "state.pt"
        if not state_path.is_file():
            raise ConfigError("--resume: no previous run to resume", path=state_path)
        st = torch.load(state_path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(st["model"])
        ema.ema.load_state_dict(st["ema"])
        ema.updates = int(st["ema_updates"])
        opt.load_state_dict(st["optimizer"])
        self.start_epoch = int(st["epoch"])
        self.best_fitness = float(st["best_fitness"])
        self.history = list(st["history"])

    @torch.no_grad()
    def validate(self, model: nn.Module, val: DetectionSamples) -> dict[str, Any]:
        from lesionlens.metrics.detection import DetectionSample, evaluate_detections

        model.eval()
        post = Postprocessor(conf=0.001, iou=0.5, max_det=100)
        samples = []
        for i in range(len(val)):
            x, t = val[i]
            pred = model(x[None].to(self.device))
            det = post(pred, image_size=(int(x.shape[-2]), int(x.shape[-1])))[0]
            samples.append(DetectionSample(pred_boxes=det.boxes, pred_scores=det.scores, pred_labels=det.labels,
                                           gt_boxes=t["boxes"].numpy(), gt_labels=t["labels"].numpy()))
        rep = evaluate_detections(samples, score_threshold=self.cfg.conf_val)
        self._val_samples = samples
        d = rep.to_dict()
        return {"val_ap50": _num(d.get("ap50")), "val_map50_95": _num(d.get("map50_95")),
                "val_precision": _num(d.get("precision")), "val_recall": _num(d.get("recall")),
                "val_f1": _num(d.get("f1"))}

    def _write_logs(self) -> None:
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        with open(self.run_dir / "results.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        (self.run_dir / "results.json").write_text(json.dumps(self.history, indent=2))

    def _plots(self, val: DetectionSamples | None, model: nn.Module) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        epochs = [r["epoch"] for r in self.history]
        for k in ("train_loss", "train_box", "train_cls", "train_dfl"):
            if all(k in r for r in self.history):
                ax.plot(epochs, [r[k] for r in self.history], label=k)
        ax.set_xlabel("epoch")
        ax.legend()
        fig.savefig(self.run_dir / "losses.png", dpi=100)
        samples = getattr(self, "_val_samples", None)
        if samples:
            from lesionlens.metrics.detection import pr_curve
            from lesionlens.metrics.plots import plot_pr

            plot_pr(pr_curve(samples, 0.5), self.run_dir / "pr_curve.png", title="validation PR @ IoU 0.5")


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def load_package_model(package: str | Path, device: str = "cpu") -> tuple[Detector, ModelMeta]:
    """Load a model package (folder with model.safetensors/json + meta.json)."""
    p = Path(package)
    if not (p / CONFIG).is_file():
        raise ModelError("not a model package (model.json missing)", path=p)
    model, _ = load_detector(p / WEIGHTS, device=device)
    return model, read_meta(p)
