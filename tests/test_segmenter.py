"""Segmenter: the mask transformer against a per-class loop, the network contract, padding
and cropping, position-embedding resampling as timm's, checkpoint init and a tiny fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from contraseg.lightning_modules import SegmentationFineTune
from contraseg.lightning_modules.components.networks import build_segmentation_net, check_network
from contraseg.lightning_modules.components.segmenter import (
    MaskTransformer,
    Segmenter,
    ViTMapEncoder,
)

VIT = "vit_tiny_patch16_224"


def test_mask_transformer_equals_a_per_class_loop() -> None:
    torch.manual_seed(0)
    head = MaskTransformer(dim=16, classes=3, n_layers=1, heads=2, dropout=0.0).eval()
    tokens = torch.randn(2, 6, 16)
    with torch.no_grad():
        out = head.masks(tokens)
        x = torch.cat([head.proj_dec(tokens), head.cls_emb.expand(2, -1, -1)], dim=1)
        for block in head.blocks:
            x = block(x)
        x = head.decoder_norm(x)
        ref = torch.empty(2, 6, 3)
        for b in range(2):
            for n in range(6):
                p = x[b, n] @ head.proj_patch
                scores = []
                for k in range(3):
                    c = x[b, 6 + k] @ head.proj_classes
                    scores.append(float(p @ c / (p.norm() * c.norm())))
                s = torch.tensor(scores)
                mean, var = s.mean(), s.var(unbiased=False)
                ref[b, n] = ((s - mean) / torch.sqrt(var + head.mask_norm.eps)
                             * head.mask_norm.weight + head.mask_norm.bias)  # fmt: skip
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["segmenter", "segmenter_linear"])
def test_the_network_contract_and_its_shapes(architecture: str) -> None:
    net = build_segmentation_net(architecture, VIT, in_channels=4, classes=5)
    check_network(net, architecture)
    assert net.pad_multiple == 16 and net.encoder.out_channels == [192]
    assert isinstance(net.encoder.model, nn.Module) and net.encoder.model.patch_embed
    x = torch.randn(2, 4, 48, 80)  # not square, any multiple of the patch
    assert net.encoder(x)[-1].shape == (2, 192, 3, 5)
    assert net(x).shape == (2, 5, 48, 80)
    pretrain = build_segmentation_net(architecture, VIT, in_channels=4, classes=None)
    assert pretrain(x).shape == (2, 192, 3, 5)  # the token map (dense pretraining)
    with pytest.raises(ValueError, match="timm ViT"):
        ViTMapEncoder("resnet18")


def test_fine_tuning_pads_to_the_patch_and_crops_back() -> None:
    torch.manual_seed(0)
    model = SegmentationFineTune(num_classes=3, architecture="segmenter", encoder=VIT).eval()
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        logits = model._infer(x)
        padded = model(nn.functional.pad(x, (0, 14, 0, 8)))[..., :40, :50]
    assert logits.shape == (1, 3, 40, 50)
    torch.testing.assert_close(logits, padded)


def test_a_checkpoint_of_another_grid_is_resampled_as_timm_does(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = timm.create_model(VIT, pretrained=False, num_classes=0, img_size=96)  # 6 x 6 grid
    path = tmp_path / "vit96.pth"
    torch.save(small.state_dict(), path)
    model = SegmentationFineTune(num_classes=3, architecture="segmenter", encoder=VIT,
                                 init_checkpoint=str(path))  # 14 x 14 grid  # fmt: skip
    report = model.init_report
    assert report["resampled_pos_embed"] == ["pos_embed"] and not report["shape_mismatch"]
    expected = resample_abs_pos_embed(small.pos_embed, [14, 14], [6, 6], num_prefix_tokens=1)
    torch.testing.assert_close(model.net.encoder.model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.net.encoder.model.blocks[0].attn.qkv.weight,
                               small.blocks[0].attn.qkv.weight)  # fmt: skip


def test_a_tiny_fit(tmp_path: Path) -> None:
    from contraseg.datamodules import SyntheticSegmentationDataModule

    dm = SyntheticSegmentationDataModule(num_train=16, num_val=4, image_size=32, batch_size=4,
                                         num_workers=0, crop_size=32,
                                         split_dir=str(tmp_path / "splits"))  # fmt: skip
    model = SegmentationFineTune(num_classes=dm.num_classes, architecture="segmenter",
                                 encoder=VIT, optimizer="sgd", lr=0.01)  # fmt: skip
    before = model.net.decoder.cls_emb.detach().clone()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    assert 0 <= float(trainer.callback_metrics["val/miou"]) <= 1
    assert not torch.equal(before, model.net.decoder.cls_emb.detach())
    assert isinstance(model.net, Segmenter)


def test_export_of_a_segmenter_round_trips(tmp_path: Path) -> None:
    import contraseg
    from contraseg.lightning_modules.components.export import write_export

    torch.manual_seed(0)
    model = SegmentationFineTune(num_classes=3, architecture="segmenter", encoder=VIT).eval()
    manifest = write_export(model, tmp_path / "exported", {"checkpoint": "in memory"})
    assert manifest["encoder"]["timm_kwargs"] == {"dynamic_img_size": True}
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(contraseg.load_network(tmp_path / "exported")(x), model(x))
        encoder = contraseg.load_encoder(tmp_path / "exported")
        tokens = encoder.forward_features(x)[:, 1:].transpose(1, 2).reshape(1, 192, 3, 4)
        torch.testing.assert_close(tokens, model.net.encoder(x)[-1])


def test_a_vit_pretrained_by_simclr_or_a_dense_method_initialises_segmenter(tmp_path) -> None:
    """SimCLR (image level) and Zhao et al. (dense, over Segmenter's token map) pretrain a ViT
    whose checkpoint fills every encoder tensor of a Segmenter fine-tuning network."""
    from contraseg.lightning_modules import PixelContrast, SegmentationFineTune, SimCLR

    simclr = SimCLR(encoder="vit_tiny_patch16_224", encoder_kwargs={"dynamic_img_size": True})
    torch.save({"state_dict": simclr.state_dict()}, tmp_path / "simclr.ckpt")
    dense = PixelContrast(architecture="segmenter", encoder="vit_tiny_patch16_224")
    x = torch.randn(2, 3, 64, 64)
    batch = {"views": [x, x.flip(-1)], "masks": [torch.randint(0, 3, (2, 64, 64))] * 2,
             "index_maps": [torch.arange(64 * 64).view(1, 64, 64).expand(2, -1, -1)] * 2,
             "source_size": torch.tensor([[64, 64]] * 2)}  # fmt: skip
    loss = dense.training_loss(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert dense.net.encoder.model.blocks[0].attn.qkv.weight.grad is not None
    torch.save({"state_dict": dense.state_dict()}, tmp_path / "dense.ckpt")
    for name, source in (("simclr", simclr.encoder.model), ("dense", dense.net.encoder.model)):
        model = SegmentationFineTune(num_classes=4, architecture="segmenter",
                                     encoder="vit_tiny_patch16_224",
                                     init_checkpoint=str(tmp_path / f"{name}.ckpt"))  # fmt: skip
        report = model.init_report
        assert not report["missing"] and not report["shape_mismatch"], name
        for key, tensor in source.state_dict().items():
            assert torch.equal(model.net.encoder.model.state_dict()[key], tensor), (name, key)


def test_decoder_argument_picks_segmenter_decoders_and_smp_refuses_one() -> None:
    from contraseg.lightning_modules import SegmentationFineTune
    from contraseg.lightning_modules.components.segmenter import LinearDecoder, MaskTransformer

    args = {"num_classes": 3, "architecture": "segmenter", "encoder": "vit_tiny_patch16_224"}
    assert isinstance(SegmentationFineTune(**args).net.decoder, MaskTransformer)
    assert isinstance(SegmentationFineTune(**args, decoder="linear").net.decoder, LinearDecoder)
    with pytest.raises(ValueError, match="must be 'mask' or 'linear'"):
        SegmentationFineTune(**args, decoder="fcn")
    with pytest.raises(ValueError, match="has one decoder"):
        SegmentationFineTune(num_classes=3, decoder="mask")
