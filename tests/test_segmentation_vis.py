"""Tests of the segmentation visualisation callbacks (overlay grid and palette PNG writer)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from PIL import Image

from contraseg.callbacks.segmentation_vis import (
    ColourPredictionWriter,
    SegmentationOverlays,
    denormalize,
    overlay,
)
from contraseg.datamodules import SyntheticSegmentationDataModule
from contraseg.datamodules.datasets.palette import colourize, palette_lut, save_palette_png
from contraseg.datamodules.datasets.voc import voc_colormap
from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune

PALETTE = [(10, 20, 30), (200, 100, 50), (0, 255, 0)]


# ----------------------------------------------------------------------------- closed form


def test_colourize_lookup_and_ignore() -> None:
    labels = np.array([[0, 1, 2], [255, 1, 4]])
    out = colourize(labels, PALETTE, ignore_index=255, ignore_colour=(7, 8, 9))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[0].tolist() == [list(c) for c in PALETTE]
    assert out[1, 0].tolist() == [7, 8, 9]
    assert out[1, 1].tolist() == list(PALETTE[1])
    assert out[1, 2].tolist() == voc_colormap(256)[4].tolist()  # beyond the palette: VOC map
    # tensors (any integer dtype) give the same result
    torch_out = colourize(torch.as_tensor(labels, dtype=torch.long), PALETTE, 255, (7, 8, 9))
    np.testing.assert_array_equal(torch_out, out)


def test_colourize_empty_palette_is_voc_and_deterministic() -> None:
    labels = np.arange(6).reshape(2, 3)
    out = colourize(labels, (), ignore_index=None)
    np.testing.assert_array_equal(out.reshape(-1, 3), voc_colormap(6))
    np.testing.assert_array_equal(palette_lut(None), voc_colormap(256))
    assert out[0, 1].tolist() == [128, 0, 0]  # VOC class 1 (aeroplane) is dark red


def test_colourize_validation() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        colourize(np.array([[300]]), PALETTE)
    with pytest.raises(ValueError, match="labels must lie"):
        colourize(np.array([[-1]]), PALETTE)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colourize(np.zeros((1, 2, 2), dtype=np.int64), PALETTE)
    with pytest.raises(ValueError, match="RGB triples"):
        colourize(np.zeros((2, 2), dtype=np.int64), [(1, 2)])


def test_denormalize_closed_form() -> None:
    mean, std = [0.5, 0.25, 0.0, 0.3], [0.25, 0.5, 1.0, 0.1]
    rgb = torch.tensor([0.0, 0.2, 0.6])[:, None, None].expand(3, 2, 2)
    ir = torch.full((1, 2, 2), 0.9)
    raw = torch.cat([rgb, ir])  # 4-band RGB+IR in [0, 1]
    normed = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    out = denormalize(normed, mean, std)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], np.round(np.array([0.0, 0.2, 0.6]) * 255))
    # out-of-range values are clipped; grey images are replicated over RGB
    grey = denormalize(torch.tensor([[[-10.0, 10.0]]]), [0.5], [0.25])
    assert grey.tolist() == [[[0, 0, 0], [255, 255, 255]]]
    with pytest.raises(ValueError, match="mean has 2 entries"):
        denormalize(torch.zeros(3, 2, 2), [0.5, 0.5], [1.0, 1.0, 1.0])


def test_overlay_blends_and_keeps_ignore_transparent() -> None:
    rgb = np.full((1, 3, 3), 100, dtype=np.uint8)
    labels = np.array([[0, 1, 255]])
    out = overlay(rgb, labels, PALETTE, alpha=0.5, ignore_index=255)
    assert out[0, 0].tolist() == [55, 60, 65]  # (100 + (10, 20, 30)) / 2
    assert out[0, 1].tolist() == [150, 100, 75]
    assert out[0, 2].tolist() == [100, 100, 100]  # ignore: image unchanged


def test_save_palette_png_roundtrip(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 0, 21]], dtype=np.int64)
    path = tmp_path / "x.png"
    save_palette_png(labels, path, PALETTE)
    image = Image.open(path)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.array(image), labels)
    assert image.getpalette()[:9] == [c for rgb in PALETTE for c in rgb]
    with pytest.raises(ValueError, match="palette PNGs"):
        save_palette_png(np.array([[256]]), path)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="num_images"):
        SegmentationOverlays(num_images=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        SegmentationOverlays(every_n_epochs=0)
    with pytest.raises(ValueError, match="alpha"):
        SegmentationOverlays(alpha=1.5)


# ----------------------------------------------------------------------------- loggers


class _FakeWandb(WandbLogger):
    def log_image(self, key: str, images: list, step: int | None = None, **kwargs: object) -> None:
        self.calls.append((key, images, step))


class _FakeTensorBoard(TensorBoardLogger):
    @property
    def experiment(self) -> SimpleNamespace:
        return SimpleNamespace(add_figure=lambda *a, **k: self.calls.append((a, k)))


def _fake_samples(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 3, (8, 8), generator=gen)
    mask[0] = 255
    return [
        {
            "image": torch.randn(3, 8, 8, generator=gen),
            "mask": mask,
            "pred": torch.randint(0, 3, (8, 8), generator=gen),
            "name": f"img_{i}",
        }
        for i in range(n)
    ]


def test_grid_logged_to_image_loggers(tmp_path: Path) -> None:
    wandb_logger = object.__new__(_FakeWandb)  # bypass __init__: no wandb run is started
    wandb_logger.calls = []
    tb_logger = object.__new__(_FakeTensorBoard)
    tb_logger.calls = []
    trainer = SimpleNamespace(
        loggers=[wandb_logger, tb_logger, object()],
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path / "unused"),
        is_global_zero=True,
        current_epoch=2,
        global_step=11,
        datamodule=SimpleNamespace(
            palette=PALETTE, mean=[0.5] * 3, std=[0.25] * 3, ignore_index=255
        ),  # fmt: skip
    )
    callback = SegmentationOverlays(num_images=2)
    callback.samples = _fake_samples(2)
    callback._plot_and_log(trainer)

    png = tmp_path / "predictions" / "epoch_0002.png"
    assert png.is_file() and png.stat().st_size > 0
    assert callback.last_png_path == str(png)
    assert wandb_logger.calls == [("val/predictions", [str(png)], 11)]
    ((args, kwargs),) = tb_logger.calls
    assert args[0] == "val/predictions" and isinstance(args[1], Figure)
    assert kwargs["global_step"] == 11


def test_grid_without_png_sends_rendered_array(tmp_path: Path) -> None:
    wandb_logger = object.__new__(_FakeWandb)
    wandb_logger.calls = []
    trainer = SimpleNamespace(loggers=[wandb_logger], log_dir=str(tmp_path), default_root_dir="",
                              is_global_zero=True, current_epoch=0, global_step=3)  # fmt: skip
    callback = SegmentationOverlays(save_png=False)
    callback.samples = _fake_samples(1)
    callback._plot_and_log(trainer)
    ((key, (image,), step),) = wandb_logger.calls
    assert key == "val/predictions" and step == 3
    assert isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
    assert not (tmp_path / "predictions").exists()


# ----------------------------------------------------------------------------- Trainer run


def test_overlays_and_writer_in_trainer(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = SyntheticSegmentationDataModule(
        num_train=32, num_val=8, image_size=32, batch_size=4, num_workers=0,
        label_fraction=8, split_dir=str(tmp_path / "splits"),
    )  # fmt: skip
    model = SegmentationFineTune(num_classes=dm.num_classes)
    overlays = SegmentationOverlays(num_images=3)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=2,
        limit_train_batches=1,  # training itself is not under test: keeps the CPU run short
        logger=logger, callbacks=[overlays], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)

    png = Path(logger.log_dir) / "predictions" / "epoch_0000.png"
    assert png.is_file() and png.stat().st_size > 0
    assert overlays.last_png_path == str(png)
    assert len(overlays.samples) == 3  # spread over the first (size-4) batch only
    for sample in overlays.samples:
        assert sample["image"].shape == (3, 32, 32) and sample["image"].device.type == "cpu"
        assert sample["mask"].shape == sample["pred"].shape == (32, 32)
    assert [s["name"] for s in overlays.samples] == ["000000", "000001", "000002"]

    # the collected buffer goes to W&B through log_image (stand-in logger, no run started)
    wandb_logger = object.__new__(_FakeWandb)
    wandb_logger.calls = []
    fake = SimpleNamespace(loggers=[wandb_logger], log_dir=str(tmp_path / "wb"),
                           default_root_dir="", is_global_zero=True, current_epoch=0,
                           global_step=trainer.global_step, datamodule=dm)  # fmt: skip
    overlays._plot_and_log(fake)
    expected = str(tmp_path / "wb" / "predictions" / "epoch_0000.png")
    assert wandb_logger.calls == [("val/predictions", [expected], trainer.global_step)]

    # prediction writer: one palette PNG per validation image, reading back as indices
    writer = ColourPredictionWriter(tmp_path / "preds")
    predictor = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer],
                          enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    outputs = predictor.predict(model, datamodule=dm)
    files = sorted((tmp_path / "preds").glob("*.png"))
    assert [p.name for p in files] == [f"{i:06d}.png" for i in range(8)]
    assert len(writer.written) == 8
    expected_preds = {n: p for out in outputs for n, p in zip(out["name"], out["pred"])}
    lut = palette_lut(dm.palette).reshape(-1).tolist()
    for path in files:
        image = Image.open(path)
        assert image.mode == "P" and image.getpalette() == lut
        values = np.array(image)
        np.testing.assert_array_equal(values, expected_preds[path.stem].numpy())
        assert 0 <= values.min() and values.max() < dm.num_classes


def test_writer_fallback_names_and_epoch_interval(tmp_path: Path) -> None:
    trainer = SimpleNamespace(datamodule=None, world_size=1, global_rank=0)
    preds = torch.tensor([[[0, 1], [2, 3]], [[4, 4], [0, 0]]])
    writer = ColourPredictionWriter(tmp_path / "out", write_interval="epoch")
    writer.output_dir.mkdir()
    writer.write_on_epoch_end(trainer, None, [[{"pred": preds, "name": None}]], [[[0, 1]]])
    assert sorted(p.name for p in writer.written) == ["pred_0_0.png", "pred_0_1.png"]
    np.testing.assert_array_equal(np.array(Image.open(writer.written[0])), preds[0].numpy())

    ddp = SimpleNamespace(datamodule=None, world_size=2, global_rank=1)
    batch_writer = ColourPredictionWriter(tmp_path / "ddp")
    batch_writer.output_dir.mkdir()
    batch_writer.write_on_batch_end(ddp, None, preds, None, {"image": None}, 5, 0)
    assert [p.name for p in batch_writer.written] == ["pred_rank1_5_0.png", "pred_rank1_5_1.png"]
    named = ColourPredictionWriter(tmp_path / "named")
    named.write_on_batch_end(ddp, None, {"pred": preds[:1], "name": ["../city/a.png"]}, None,
                             None, 0, 0)  # fmt: skip
    assert named.written == [tmp_path / "named" / "city" / "a.png"]
