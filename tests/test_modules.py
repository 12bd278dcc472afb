"""SimCLR / DirectCLR modules and the backbone: losses wired as the pure functions say."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from lightning_modules import DirectCLR, SimCLR
from lightning_modules.components import Backbone
from lightning_modules.losses import directclr_loss, nt_xent_loss


def views(b: int = 4, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


def test_simclr_loss_is_nt_xent_of_projections() -> None:
    torch.manual_seed(0)
    m = SimCLR(temperature=0.3, projector_hidden_dims=[64], projector_out_dim=16, num_classes=3)
    m.eval()
    v = views()
    loss, feats, _ = m.training_loss(v)
    z = m.projector(m.backbone(torch.cat(v)))
    assert torch.allclose(loss, nt_xent_loss(z, temperature=0.3), atol=1e-6)
    assert torch.allclose(feats, m.backbone(v[0]), atol=1e-5)


def test_directclr_uses_first_d0_dims() -> None:
    torch.manual_seed(0)
    m = DirectCLR(d0=32, temperature=0.1)
    m.eval()
    v = views()
    loss, feats, _ = m.training_loss(v)
    r1, r2 = m.backbone(v[0]), m.backbone(v[1])
    assert torch.allclose(loss, directclr_loss(r1, r2, 32, 0.1), atol=1e-5)
    with pytest.raises(ValueError, match="d0"):
        DirectCLR(d0=10_000)


def test_frozen_backbone_gets_no_gradient() -> None:
    m = SimCLR(projector_hidden_dims=[32], projector_out_dim=8, num_classes=3,
               freeze_backbone=True)  # fmt: skip
    m.log = lambda *a, **k: None  # no trainer attached
    batch = {"views": views(), "label": torch.tensor([0, 1, 2, 1])}
    m.training_step(batch, 0).backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert m.probe.linear.weight.grad is not None


def test_backbone_cifar_stem_and_dense_features() -> None:
    bb = Backbone("resnet18", cifar_stem=True)
    assert bb.model.conv1.kernel_size == (3, 3) and bb.model.conv1.stride == (1, 1)
    assert bb(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    maps = bb.forward_dense(torch.randn(2, 3, 32, 32))
    assert maps[-1].shape[1] == 512 and maps[-1].shape[-1] == 4  # CIFAR stem keeps resolution
    with pytest.raises(ValueError, match="cifar_stem"):
        Backbone("vit_tiny_patch16_224", cifar_stem=True)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        Backbone("resnet_does_not_exist")


def test_backbone_loads_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    ref = timm.create_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    bb = Backbone("resnet18", checkpoint_path=str(path))
    ref_sd = ref.state_dict()
    for name, value in bb.model.state_dict().items():
        assert torch.equal(value, ref_sd[name]), name
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        Backbone("resnet18", checkpoint_path=str(tmp_path / "missing.pth"))


def test_four_channel_backbone() -> None:
    assert Backbone("resnet18", in_chans=4)(torch.randn(2, 4, 64, 64)).shape == (2, 512)
