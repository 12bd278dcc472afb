"""Tests for split-level segmentation metrics and sliding-window inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassCohenKappa, MulticlassJaccardIndex

from contraseg.lightning_modules.evaluators.segmentation_metrics import (
    SegmentationMetrics,
    confusion_matrix,
    metrics_from_confusion,
)
from contraseg.lightning_modules.segmentation_finetune import window_logits

IGNORE = 255


def _random_batch(seed: int, c: int = 5, shape: tuple[int, ...] = (3, 17, 23), p_ignore=0.15):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, shape, generator=g)
    preds = torch.randint(0, c, shape, generator=g)
    # correlate preds with target so kappa is non-trivial
    agree = torch.rand(shape, generator=g) < 0.5
    preds = torch.where(agree, target, preds)
    target[torch.rand(shape, generator=g) < p_ignore] = IGNORE
    return preds, target


def _naive_cm(preds, target, c, ignore=IGNORE):
    cm = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(preds.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t == ignore:
            continue
        cm[t, p] += 1
    return cm


def _naive_metrics(cm):
    c = cm.shape[0]
    n = cm.sum()
    ious, f1s = [], []
    for k in range(c):
        tp = cm[k, k]
        fp = sum(cm[r, k] for r in range(c)) - tp
        fn = sum(cm[k, r] for r in range(c)) - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan)
    p_o = sum(cm[k, k] for k in range(c)) / n
    p_e = sum(cm[k, :].sum() * cm[:, k].sum() for k in range(c)) / n**2
    defined = [v for v in ious if not math.isnan(v)]
    return {
        "iou_per_class": ious,
        "f1_per_class": f1s,
        "miou": sum(defined) / len(defined),
        "mean_f1": sum(v for v in f1s if not math.isnan(v)) / len(defined),
        "overall_accuracy": p_o,
        "kappa": (p_o - p_e) / (1 - p_e),
    }


def _assert_metrics_close(ours, ref):
    for key in ("miou", "mean_f1", "overall_accuracy", "kappa"):
        assert ours[key].item() == pytest.approx(ref[key], abs=1e-6), key
    for key in ("iou_per_class", "f1_per_class"):
        np.testing.assert_allclose(ours[key].numpy(), np.array(ref[key]), atol=1e-6, err_msg=key)


# ----------------------------------------------------------------------------- confusion matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_naive_loop(seed):
    preds, target = _random_batch(seed)
    cm = confusion_matrix(preds, target, num_classes=5, ignore_index=IGNORE)
    assert cm.dtype == torch.int64 and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm.numpy(), _naive_cm(preds, target, 5))
    assert cm.sum().item() == (target != IGNORE).sum().item()


def test_confusion_matrix_accepts_logits():
    preds, target = _random_batch(3)
    logits = torch.nn.functional.one_hot(preds, 5).permute(0, 3, 1, 2).float()
    logits = logits + 0.01 * torch.rand_like(logits)
    np.testing.assert_array_equal(
        confusion_matrix(logits, target, 5).numpy(), confusion_matrix(preds, target, 5).numpy()
    )


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([[0, 1]]), torch.tensor([[0, 3]]), num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([[0, 1]]), torch.tensor([[0, 1, 1]]), num_classes=3)


# ------------------------------------------------------------------------------- closed forms


def test_hand_made_three_class_example():
    # 10 pixels + 2 ignored, class 2 never predicted correctly.
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 0, IGNORE, IGNORE]])
    preds = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 2, 2]])
    cm = confusion_matrix(preds, target, 3)
    # rows = target: class0: 4x0, 1x1 ; class1: 2x1, 1x0 ; class2: 1x1, 1x0
    assert cm.tolist() == [[4, 1, 0], [1, 2, 0], [1, 1, 0]]
    m = metrics_from_confusion(cm)
    iou = [4 / (4 + 2 + 1), 2 / (2 + 2 + 1), 0.0]
    f1 = [8 / (8 + 2 + 1), 4 / (4 + 2 + 1), 0.0]
    p_o = 6 / 10
    p_e = (5 * 6 + 3 * 4 + 2 * 0) / 100
    assert m["iou_per_class"].tolist() == pytest.approx(iou)
    assert m["miou"].item() == pytest.approx(sum(iou) / 3)
    assert m["f1_per_class"].tolist() == pytest.approx(f1)
    assert m["mean_f1"].item() == pytest.approx(sum(f1) / 3)
    assert m["overall_accuracy"].item() == pytest.approx(p_o)
    assert m["kappa"].item() == pytest.approx((p_o - p_e) / (1 - p_e))


def test_absent_class_is_nan_and_excluded_from_miou():
    target = torch.tensor([[0, 0, 1, 1]])
    preds = torch.tensor([[0, 1, 1, 1]])
    m = metrics_from_confusion(confusion_matrix(preds, target, 4))
    assert math.isnan(m["iou_per_class"][2]) and math.isnan(m["iou_per_class"][3])
    assert math.isnan(m["f1_per_class"][3])
    assert m["miou"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.parametrize("seed", [0, 7])
def test_random_matches_naive_formulas(seed):
    preds, target = _random_batch(seed, c=6, shape=(2, 31, 29))
    metric = SegmentationMetrics(num_classes=6)
    metric.update(preds, target)
    _assert_metrics_close(metric.compute(), _naive_metrics(_naive_cm(preds, target, 6)))


def test_torchmetrics_cross_check():
    preds, target = _random_batch(11, c=5, shape=(4, 20, 20))
    preds[preds == 4] = 0  # class 4 only in target for some pixels
    ours = SegmentationMetrics(num_classes=5)
    jac = MulticlassJaccardIndex(num_classes=5, ignore_index=IGNORE, average=None)
    kap = MulticlassCohenKappa(num_classes=5, ignore_index=IGNORE)
    for metric in (ours, jac, kap):
        metric.update(preds, target)
    res = ours.compute()
    defined = ~torch.isnan(res["iou_per_class"])
    torch.testing.assert_close(res["iou_per_class"][defined], jac.compute()[defined])
    torch.testing.assert_close(res["kappa"], kap.compute(), atol=1e-6, rtol=1e-5)


def test_accumulation_equals_single_update():
    batches = [_random_batch(s, shape=(2, 9, 13)) for s in range(4)]
    acc = SegmentationMetrics(num_classes=5)
    for p, t in batches:
        acc.update(p, t)
    one = SegmentationMetrics(num_classes=5)
    one.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    assert torch.equal(acc.confmat, one.confmat)
    a, o = acc.compute(), one.compute()
    for key in a:
        torch.testing.assert_close(a[key], o[key], equal_nan=True)
    acc.reset()
    assert acc.confmat.sum().item() == 0


def test_perfect_prediction():
    _, target = _random_batch(5)
    preds = target.clone()
    preds[preds == IGNORE] = 0
    metric = SegmentationMetrics(num_classes=5)
    metric.update(preds, target)
    res = metric.compute()
    assert res["miou"].item() == 1.0
    assert res["kappa"].item() == pytest.approx(1.0)
    assert res["overall_accuracy"].item() == 1.0
    assert res["mean_f1"].item() == 1.0


# ----------------------------------------------------------------------------- sliding window


def _pointwise_model(c_in=3, c_out=4):
    torch.manual_seed(0)
    return nn.Conv2d(c_in, c_out, kernel_size=1).eval()


@pytest.mark.parametrize("weighting", ["constant", "gaussian"])
@pytest.mark.parametrize(
    ("size", "window", "stride"),
    [
        ((32, 32), 16, 16),  # divides, no overlap
        ((32, 48), 16, 8),  # divides, overlap
        ((37, 29), 16, 10),  # does not divide: last window flush with border
        ((30, 41), (12, 20), (5, 7)),  # rectangular windows
        ((10, 7), 16, 8),  # image smaller than the window: padded and cropped
        ((10, 40), 16, 12),  # smaller along one axis only
    ],
)
def test_sliding_window_pointwise_equals_full_forward(size, window, stride, weighting):
    model = _pointwise_model()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = window_logits(model, images, window, stride, batch_size=3, mode=weighting)
    assert out.shape == (2, 4, *size)
    with torch.no_grad():
        ref = model(images)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["constant", "gaussian"])
@pytest.mark.parametrize(("size", "window", "stride"), [((37, 29), 16, 10), ((5, 50), 8, 3)])
def test_sliding_window_covers_every_pixel(size, window, stride, weighting):
    calls = []

    def ones(x):
        calls.append(x.shape[0])
        return torch.ones(x.shape[0], 2, *x.shape[-2:])

    out = window_logits(ones, torch.randn(1, 3, *size), window, stride, batch_size=4,
                        mode=weighting)  # fmt: skip
    torch.testing.assert_close(out, torch.ones(1, 2, *size))
    assert max(calls) <= 4


@pytest.mark.parametrize(("size", "window", "stride", "starts"),
                         [(37, 16, 10, [0, 10, 20, 21]), (32, 16, 16, [0, 16]), (16, 16, 4, [0]),
                          (50, 12, 5, [0, 5, 10, 15, 20, 25, 30, 35, 38])])  # fmt: skip
def test_windows_step_by_the_stride_and_end_flush_with_the_border(size, window, stride, starts):
    seen = []

    def record(x):
        seen.append(x.shape[0])
        return torch.zeros(x.shape[0], 1, *x.shape[-2:])

    window_logits(record, torch.zeros(1, 1, window, size), window, stride, batch_size=1)
    assert len(seen) == len(starts)  # one window per start along the long axis


def test_sliding_window_rejects_bad_args():
    model = _pointwise_model()
    with pytest.raises(ValueError, match="sliding_stride 20"):
        window_logits(model, torch.randn(1, 3, 32, 32), 16, 20)
    with pytest.raises(ValueError, match="sliding_stride 0"):
        window_logits(model, torch.randn(1, 3, 32, 32), 16, 0)
