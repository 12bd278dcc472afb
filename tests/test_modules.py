"""SimCLR / DirectCLR modules and the timm encoder: losses wired as the pure functions say."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from contraseg.lightning_modules import DirectCLR, SimCLR
from contraseg.lightning_modules.components import TimmEncoder
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.losses import directclr_loss, nt_xent_loss


def views(b: int = 4, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


def test_simclr_loss_is_nt_xent_of_projections() -> None:
    torch.manual_seed(0)
    m = SimCLR(temperature=0.3, projector=Projector([64], 16), probe_classes=3)
    m.eval()
    v = views()
    loss, logs, feats = m.training_loss({"views": v})
    z = m.projector(m.encoder(torch.cat(v)))
    assert torch.allclose(loss, nt_xent_loss(z, temperature=0.3), atol=1e-6)
    assert torch.allclose(feats, m.encoder(v[0]), atol=1e-5)
    assert not logs


def test_hparams_hold_every_argument_of_the_chain() -> None:
    m = SimCLR(projector=Projector([2048], 16), probe_classes=3, lr=0.5)
    for key in ("projector", "probe_classes", "lr", "encoder", "in_channels",
                "freeze_encoder", "warmup_epochs"):
        assert key in m.hparams, key
    assert m.hparams.lr == 0.5 and type(m.hparams.temperature) is float


def test_directclr_uses_first_d0_dims() -> None:
    torch.manual_seed(0)
    m = DirectCLR(d0=32, temperature=0.1)
    m.eval()
    v = views()
    loss, _, feats = m.training_loss({"views": v})
    r1, r2 = m.encoder(v[0]), m.encoder(v[1])
    assert torch.allclose(loss, directclr_loss(r1, r2, 32, 0.1), atol=1e-5)
    assert torch.allclose(feats, r1, atol=1e-5)
    with pytest.raises(ValueError, match="d0"):
        DirectCLR(d0=10_000)


def test_frozen_encoder_gets_no_gradient() -> None:
    m = SimCLR(projector=Projector([32], 8), probe_classes=3,
               freeze_encoder=True)  # fmt: skip
    m.log = lambda *a, **k: None  # no trainer attached
    batch = {"views": views(), "label": torch.tensor([0, 1, 2, 1])}
    m.training_step(batch, 0).backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    assert m.probe.linear.weight.grad is not None


def test_encoder_cifar_stem() -> None:
    enc = TimmEncoder("resnet18", cifar_stem=True)
    assert enc.model.conv1.kernel_size == (3, 3) and enc.model.conv1.stride == (1, 1)
    assert enc.model.forward_features(torch.randn(2, 3, 32, 32)).shape[-1] == 4  # stride 8
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(ValueError, match="cifar_stem"):
        TimmEncoder("vit_tiny_patch16_224", cifar_stem=True)
    with pytest.raises(ValueError, match="unknown timm encoder"):
        TimmEncoder("resnet_does_not_exist")


def test_encoder_loads_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    ref = timm.create_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    enc = TimmEncoder("resnet18", checkpoint_path=str(path))
    ref_sd = ref.state_dict()
    for name, value in enc.model.state_dict().items():
        assert torch.equal(value, ref_sd[name]), name
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        TimmEncoder("resnet18", checkpoint_path=str(tmp_path / "missing.pth"))


def test_in_channels_reach_the_encoder() -> None:
    assert TimmEncoder("resnet18", in_chans=4)(torch.randn(2, 4, 64, 64)).shape == (2, 512)
    m = SimCLR(in_channels=4, projector=Projector([8], 4))
    assert m.encoder.model.conv1.in_channels == 4


def test_projector_is_one_argument_with_the_method_defaults() -> None:
    from contraseg.lightning_modules import SupCon

    assert SupCon().hparams.projector == {"hidden_dims": [2048], "out_dim": 128,
                                          "batch_norm": False,
                                          "activation": "relu"}  # the official head: no BN
    # a checkpoint from before the activation field (issue 28) still names a whole projector
    old = {"hidden_dims": [16], "out_dim": 8, "batch_norm": True}
    assert Projector.of(old) == Projector([16], 8, True, "relu")
    elu = Projector([16], 8, False, "elu").mlp(4)
    assert any(isinstance(x, torch.nn.ELU) for x in elu.modules())
    with pytest.raises(ValueError, match=r"model\.projector\.activation must be one of"):
        Projector([16], 8, activation="gelu")
    m = SimCLR(projector=Projector([16], 8, batch_norm=False))
    linears = [layer for layer in m.projector.modules() if isinstance(layer, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(512, 16), (16, 8)]
    assert not any(isinstance(x, torch.nn.BatchNorm1d) for x in m.projector.modules())
    with pytest.raises(ValueError, match=r"model\.projector: give a Projector or all of"):
        SupCon(projector={"out_dim": 64})  # would silently take Projector's batch_norm
    with pytest.raises(ValueError, match=r"model\.projector widths must be >= 1"):
        Projector([0], 8)
