from __future__ import annotations

import pytest
import torch

from lesionlens.errors import ConfigError
from lesionlens.models.detector import DetectorConfig, build_detector
from lesionlens.models.loss import DetectionLoss, LossConfig, varifocal_loss


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _batch() -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32)
    targets = [
        (torch.tensor([[4.0, 4.0, 12.0, 14.0], [20.0, 18.0, 27.0, 26.0]]), torch.tensor([0, 1])),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),  # negative image
        (torch.tensor([[9.0, 9.0, 13.0, 13.0]]), torch.tensor([1])),
    ]
    return x, targets


@pytest.mark.parametrize("cls_loss", ["bce", "varifocal"])
def test_loss_finite_and_backward(cls_loss: str) -> None:
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=2)
    model = build_detector(cfg).train()
    x, targets = _batch()
    out = DetectionLoss(cfg, LossConfig(cls_loss=cls_loss))(model(x), targets)
    assert set(out) == {"loss", "box", "cls", "dfl"}
    assert all(torch.isfinite(v) for v in out.values())
    assert out["box"] > 0 and out["dfl"] > 0 and out["cls"] > 0
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_all_negative_batch() -> None:
    cfg = DetectorConfig(size="n", in_channels=1)
    model = build_detector(cfg).train()
    x = torch.randn(2, 1, 32, 32)
    empty = [(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))] * 2
    out = DetectionLoss(cfg)(model(x), empty)
    assert out["box"] == 0 and out["dfl"] == 0 and out["cls"] > 0
    out["loss"].backward()  # still differentiable: pushes scores down
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_dict_targets_equal_tuple_targets() -> None:
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=2)
    model = build_detector(cfg).train()
    x, targets = _batch()
    outs = model(x)
    crit = DetectionLoss(cfg)
    a = crit(outs, targets)
    b = crit(outs, [{"boxes": bx, "labels": lb} for bx, lb in targets])
    assert torch.allclose(a["loss"], b["loss"])


def test_loss_decreases() -> None:
    """Soft targets scale with IoU^beta, so from a random start the loss first *rises* (as boxes
    start to overlap their targets, positives get weight) and then falls: compare with the peak."""
    torch.manual_seed(0)
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=2)
    model = build_detector(cfg).train()
    crit = DetectionLoss(cfg)
    x, targets = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = crit(model(x), targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    peak = max(range(len(losses)), key=losses.__getitem__)
    assert peak < 30 and sum(losses[-5:]) / 5 < 0.6 * losses[peak], losses


def test_bad_targets() -> None:
    cfg = DetectorConfig(size="n", in_channels=1, num_classes=1)
    model = build_detector(cfg).train()
    x = torch.randn(1, 1, 32, 32)
    crit = DetectionLoss(cfg)
    with pytest.raises(ConfigError, match="labels"):
        crit(model(x), [(torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([3]))])
    with pytest.raises(ConfigError, match="targets"):
        crit(model(x), [])
    with pytest.raises(ConfigError, match="cls_loss"):
        LossConfig(cls_loss="focal")


def test_varifocal_weights() -> None:
    logits = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[0.8, 0.0]])
    v = varifocal_loss(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.allclose(v[0, 0], 0.8 * bce[0, 0]) and torch.allclose(v[0, 1], 0.75 * 0.25 * bce[0, 1])
