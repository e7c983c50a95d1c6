"""Training run configuration: typed, validated, layered (defaults < file < flags).

The resolved configuration is saved with every run and every checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lesionlens.errors import ConfigError


class TrainConfig(BaseModel):
    """Everything a training run needs. Unknown keys are refused (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data: str = Field(description="dataset.yaml (YOLO layout; our npy-hu CT stacks or images)")
    model: str = Field("n", description="n | s | m, or a checkpoint path to fine-tune / resume")
    attention: bool = False
    epochs: int = Field(30, ge=1)
    batch: int = Field(16, ge=1)
    imgsz: int = Field(256, ge=32, description="training crop size in pixels (native scale)")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    out: str = "runs/train"
    resume: bool = False
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    amp: bool = True  # used on CUDA only (bf16 where supported, else fp16)
    grad_clip: float = Field(10.0, gt=0)
    seed: int = 0
    patience: int = Field(10, ge=1, description="early stop after this many epochs without improvement")
    workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch default)")
    steps_per_epoch: int = Field(0, ge=0, description="0 = one pass over the training split")
    val_every: int = Field(1, ge=1)
    conf_val: float = Field(0.25, ge=0, le=1)
    names: list[str] | None = Field(None, description="class names; a new list re-initialises the head")
    augment: bool = True
    mosaic: float = Field(0.0, ge=0, le=1, description="probability of a 4-image mosaic sample (native scale)")
    copy_paste: float = Field(0.0, ge=0, le=1, description="probability of pasting 1-2 banked lesions into a sample")
    small_boost: float = Field(0.0, ge=0, description="images holding a box under small_px are drawn (1 + boost)x as often")
    score_floor: float = Field(0.0, ge=0, le=1, description="least class target of a box's best anchor "
                               "(0 = its IoU as in TOOD; raise it so tiny lesions, whose IoU is low, still score high)")
    small_px: float = Field(12.0, gt=0, description="longer box side (px) under which a box counts as small")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v not in ("n", "s", "m") and not Path(v).exists():
            raise ValueError(f"model must be n, s, m or an existing checkpoint path, got {v!r}")
        return v


def load_config(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < YAML ``file`` < ``overrides`` (flags). ``None`` overrides are ignored."""
    values: dict[str, Any] = {}
    if file is not None:
        p = Path(file)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("config file not found", path=p) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", path=p) from None
        if not isinstance(loaded, dict):
            raise ConfigError("config file must hold a mapping", path=p)
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "config"
        raise ConfigError(f"{field}: {first['msg']}") from None
