"""Domain-specific batch norm and multi-domain segmentation (Boutillon et al. 2021)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from contraseg.lightning_modules.components.domain_bn import (
    DomainBatchNorm,
    convert_domain_bn,
    domain_context,
    set_domain,
)


def test_domain_bn_keeps_separate_statistics() -> None:
    layer = DomainBatchNorm(nn.BatchNorm2d(3), num_domains=2).train()
    before = [bn.running_mean.clone() for bn in layer.bns]
    layer.domain = 0
    layer(torch.randn(8, 3, 4, 4) + 5.0)
    assert not torch.equal(layer.bns[0].running_mean, before[0])
    torch.testing.assert_close(layer.bns[1].running_mean, before[1])  # domain B untouched
    assert layer.bns[1].num_batches_tracked == 0


def test_mixed_batch_equals_separate_forwards() -> None:
    torch.manual_seed(0)
    layer = DomainBatchNorm(nn.BatchNorm2d(4), 3).train()
    ref = DomainBatchNorm(nn.BatchNorm2d(4), 3).train()
    ref.load_state_dict(layer.state_dict())
    x, d = torch.randn(9, 4, 5, 5), torch.tensor([0, 2, 2, 0, 1, 1, 2, 0, 1])
    layer.domain = d
    out = layer(x)
    for k in range(3):
        ref.domain = k
        torch.testing.assert_close(out[d == k], ref(x[d == k]))
        torch.testing.assert_close(layer.bns[k].running_var, ref.bns[k].running_var)


def test_convert_any_timm_network() -> None:
    net = timm.create_model("resnet18", num_classes=0).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    convert_domain_bn(net, 2)
    assert sum(isinstance(m, DomainBatchNorm) for m in net.modules()) == n_bn
    wrapped = {id(bn) for m in net.modules() if isinstance(m, DomainBatchNorm) for bn in m.bns}
    assert all(id(m) in wrapped for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad(), domain_context(net, 1):
        torch.testing.assert_close(net(x), ref)  # copies of the original statistics
    set_domain(net, None)
    with pytest.raises(RuntimeError, match="no domain set"):
        net(x)


def _module(**kwargs):
    from contraseg.lightning_modules import MultiDomainSegmentation

    return MultiDomainSegmentation(architecture="unet", encoder="resnet18", num_classes=3,
                                   in_channels=1, num_domains=2, **kwargs)  # fmt: skip


def test_multidomain_heads_bn_and_contrast() -> None:
    torch.manual_seed(0)
    model = _module()
    assert sum(isinstance(m, DomainBatchNorm) for m in model.modules()) > 10
    batch = {"image": torch.randn(4, 1, 32, 32), "mask": torch.randint(0, 3, (4, 32, 32)),
             "domain": torch.tensor([0, 1, 0, 1])}  # fmt: skip
    out = model.training_loss(batch)
    assert torch.isfinite(out.loss) and out.logs["domain_contrast"] > 0
    out.loss.backward()
    assert (
        model.heads[1][0].weight.grad is not None and model.projector.net[0].weight.grad is not None
    )
    model.eval()
    with torch.no_grad():
        model._domain = batch["domain"]
        logits = model(batch["image"])
        model._domain = 1
        only1 = model(batch["image"][1:2])
    torch.testing.assert_close(logits[1:2], only1, atol=1e-5, rtol=1e-5)
    shared = _module(shared_bn=True, contrastive_weight=0.0, domain_heads=False)
    assert not any(isinstance(m, DomainBatchNorm) for m in shared.modules())
    assert len(shared.heads) == 1 and "domain_contrast" not in shared.training_loss(batch).logs


def test_multidomain_datamodule_balances_domains(tmp_path) -> None:
    from contraseg.datamodules import (
        MultiDomainDataModule,
        SyntheticMedicalDataModule,
        TexturedSegmentationDataModule,
    )

    small = SyntheticMedicalDataModule(num_subjects=4, shape=(6, 16, 16), labelled_subjects=1,
                                       batch_size=2, num_workers=0,
                                       split_dir=str(tmp_path))  # fmt: skip
    large = SyntheticMedicalDataModule(num_subjects=6, shape=(12, 16, 16), domain=1,
                                       volume_seed=1, labelled_subjects=3, batch_size=2,
                                       num_workers=0, split_dir=str(tmp_path))  # fmt: skip
    dm = MultiDomainDataModule([small, large], batch_size=4, num_workers=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    domains = torch.cat([b["domain"] for b in loader])
    assert len(domains) == 6 + 36 - (6 + 36) % 4
    assert abs(float((domains == 0).float().mean()) - 0.5) < 0.2  # 6 vs 36 items, balanced
    val = next(iter(dm.val_dataloader()))
    assert val["image"].ndim == 5 and "domain" in val
    other = TexturedSegmentationDataModule(num_train=8, num_val=2, scene={"image_size": 32},
                                           batch_size=2)  # fmt: skip
    with pytest.raises(ValueError, match="domains must agree"):
        MultiDomainDataModule([small, other])
    with pytest.raises(ValueError, match="train_domains"):
        MultiDomainDataModule([small, large], train_domains=[2])
