"""SupCon / SuperCon: imbalance losses (closed forms), metrics vs scikit-learn, balanced sampler,
the SupCon module's loss and the classifier's class counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.evaluators.classification_metrics import ClassificationMetrics
from contraseg.lightning_modules.losses.classification import (
    class_balanced_weights,
    focal_loss,
    logit_adjusted_cross_entropy,
)
from contraseg.seeding import SeededSampler


def test_focal_reduces_to_ce_and_matches_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(20, 4, generator=g), torch.randint(0, 4, (20,), generator=g)
    torch.testing.assert_close(
        focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)
    )
    p = logits.softmax(1)[torch.arange(20), target]
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    ref = (-(w[target]) * (1 - p) ** 2 * p.log()).mean()
    torch.testing.assert_close(focal_loss(logits, target, 2.0, w), ref)


def test_class_balanced_weights_closed_form() -> None:
    counts = torch.tensor([600.0, 60.0, 6.0])
    w = class_balanced_weights(counts, beta=0.99)
    eff = (1 - 0.99 ** counts.double()) / (1 - 0.99)
    ref = (1 / eff) / (1 / eff).sum() * 3
    torch.testing.assert_close(w, ref.float())
    uniform = class_balanced_weights(counts, beta=0.0)
    torch.testing.assert_close(uniform, torch.ones(3))
    assert class_balanced_weights(torch.tensor([5.0, 0.0]), 0.9)[1] == 0


def test_logit_adjusted_cross_entropy() -> None:
    logits, target = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    prior = torch.tensor([0.7, 0.2, 0.1])
    z = logits + 0.5 * prior.log()
    ref = -(z[torch.arange(8), target] - z.logsumexp(1)).mean()
    torch.testing.assert_close(logit_adjusted_cross_entropy(logits, target, prior.log(), 0.5), ref)


def test_classification_metrics_match_sklearn() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.cat([torch.zeros(50), torch.ones(12), torch.full((5,), 2)]).long()
    logits = torch.randn(67, 3, generator=g) + 1.5 * F.one_hot(target, 3)
    metrics = ClassificationMetrics(3)
    for part in range(0, 67, 20):
        metrics.update(logits[part : part + 20], target[part : part + 20])
    out = metrics.compute()
    y, pred, prob = target.numpy(), logits.argmax(1).numpy(), logits.softmax(1).numpy()
    assert out["macro_f1"].item() == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    assert out["balanced_accuracy"].item() == pytest.approx(
        balanced_accuracy_score(y, pred), abs=1e-6
    )
    np.testing.assert_allclose(
        out["recall_per_class"].numpy(), recall_score(y, pred, average=None), atol=1e-6
    )
    auc = roc_auc_score(y, prob, multi_class="ovr", average="macro")
    assert out["macro_auroc"].item() == pytest.approx(auc, abs=1e-4)
    assert out["confusion"].sum() == 67 and out["confusion"][2].sum() == 5


def test_class_balanced_sampler_is_uniform_over_classes_and_seeded() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    weights = (1.0 / torch.bincount(labels).float())[labels]
    data = list(range(1000))
    a = [k.index for k in SeededSampler(data, seed=3, weights=weights)]
    b = [k.index for k in SeededSampler(data, seed=3, weights=weights)]
    later = SeededSampler(data, seed=3, weights=weights, epoch=1)
    assert a == b and a != [k.index for k in later] and len(a) == 1000
    share = torch.bincount(labels[a], minlength=3).float() / 1000
    assert (share - 1 / 3).abs().max() < 0.05


def test_supcon_module_loss_and_instance_fallback() -> None:
    from contraseg.lightning_modules import SupCon
    from contraseg.lightning_modules.losses import nt_xent_loss

    torch.manual_seed(0)
    model = SupCon(encoder="resnet18", probe_classes=0, projector=Projector([32], 16, False),
                   gather_distributed=False)  # fmt: skip
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    batch = {"views": views, "label": torch.tensor([0, 0, 1, -1]), "sample_index": torch.arange(4)}
    model.eval()  # BN in eval: the two forwards below see identical statistics
    out = model.training_loss(batch)
    z = model.projector(model.encoder(torch.cat(views)))
    ids = torch.tensor([0, 0, 1, -4]).repeat(2)
    # the official scale T / 0.07 (SupContrast losses.py) on the paper's eq. 2
    paper = nt_xent_loss(z, ids, temperature=0.1)
    torch.testing.assert_close(out.loss, paper * (0.1 / 0.07))
    assert out.logs["labelled"].item() == pytest.approx(0.75)
    # the official head: Linear-ReLU-Linear without BatchNorm
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.projector.modules())
    model.hparams.base_temperature = None  # the paper's form
    torch.testing.assert_close(model.training_loss(batch).loss, paper)


def test_classifier_counts_from_data_and_checkpointed(tmp_path) -> None:
    import lightning as L

    from contraseg.datamodules import TexturedScenesDataModule
    from contraseg.datamodules.datasets import SceneSpec
    from contraseg.lightning_modules import ImageClassifier

    scene = SceneSpec(image_size=32, num_classes=3, min_objects=1, max_objects=1,
                      imbalance_ratio=10.0)  # fmt: skip
    dm = TexturedScenesDataModule(num_train=32, num_val=8, scene=scene, batch_size=8,
                                  num_workers=0, n_views=1, knn_bank_size=0,
                                  class_balanced=True)  # fmt: skip
    model = ImageClassifier(encoder="resnet18", num_classes=3, loss="logit_adjusted")
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path,
                        limit_val_batches=1)  # fmt: skip
    trainer.fit(model, dm)
    torch.testing.assert_close(model.class_counts, dm.class_counts().float())
    assert "class_counts" in model.state_dict() and model.class_counts.sum() == 32
    with pytest.raises(ValueError, match="model.loss must be one of"):
        ImageClassifier(num_classes=3, loss="hinge")
