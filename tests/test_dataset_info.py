"""Data-set metadata defined once (DatasetInfo) and normalisation driven by the array's dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from contraseg.datamodules import (
    CityscapesDataModule,
    PotsdamDataModule,
    PotsdamTilesDataModule,
    VOCDataModule,
)
from contraseg.datamodules.datasets import PotsdamCrops, PotsdamTiles
from contraseg.datamodules.datasets.cityscapes import CITYSCAPES
from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.potsdam import POTSDAM, POTSDAM_TILES
from contraseg.datamodules.datasets.voc import VOC
from contraseg.datamodules.segmentation import eval_transform
from contraseg.datamodules.transforms import ScaleByDtype


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [(torch.uint8, 255, 1.0), (torch.uint8, 51, 0.2), (torch.uint16, 65535, 1.0),
     (torch.uint16, 13107, 0.2), (torch.int16, -1000, -1000.0), (torch.int16, 275, 275.0),
     (torch.int32, 70000, 70000.0), (torch.float32, 0.37, 0.37), (torch.float64, -2.5, -2.5)],
)  # fmt: skip
def test_scale_by_dtype(dtype: torch.dtype, value: float, expected: float) -> None:
    image = tv_tensors.Image(torch.full((2, 3, 3), value, dtype=dtype))
    mask = tv_tensors.Mask(torch.full((3, 3), 7))
    out = ScaleByDtype()({"image": image, "mask": mask})
    assert out["image"].dtype == torch.float32 and isinstance(out["image"], tv_tensors.Image)
    assert torch.allclose(out["image"], torch.full((2, 3, 3), expected), rtol=1e-6, atol=1e-6)
    assert torch.equal(out["mask"], mask)  # masks untouched


def test_uint8_scaling_is_bitwise_torchvision() -> None:
    from torchvision.transforms import v2

    x = tv_tensors.Image(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    ref = v2.ToDtype(torch.float32, scale=True)(x)
    assert torch.equal(ScaleByDtype()(x), ref)


def test_eval_transform_normalises_ct_in_hounsfield_units() -> None:
    """int16 CT with HU statistics: (HU - mean) / std, never HU / 32767."""
    hu = tv_tensors.Image(torch.tensor([[[-125, 75, 275]]], dtype=torch.int16))
    out = eval_transform([75.0], [200.0])({"image": hu})["image"]
    assert torch.allclose(out, torch.tensor([[[-1.0, 0.0, 1.0]]]))
    uint16 = tv_tensors.Image(torch.tensor([[[0, 32768, 65535]]], dtype=torch.int32).to(
        torch.uint16))  # fmt: skip
    out16 = eval_transform([0.5], [0.5])({"image": uint16})["image"]
    assert torch.allclose(out16, torch.tensor([[[-1.0, 0.0, 1.0]]]), atol=1e-4)


def test_metadata_defined_once() -> None:
    pairs = [(CityscapesDataModule, CITYSCAPES), (VOCDataModule, VOC),
             (PotsdamDataModule, POTSDAM), (PotsdamTilesDataModule, POTSDAM_TILES)]  # fmt: skip
    for dm, info in pairs:
        assert dm.info is info
        assert dm.num_classes == info.num_classes and tuple(dm.classes) == info.classes
        assert tuple(dm.palette) == info.palette and dm.ignore_index == info.ignore_index
        assert dm.default_crop_size == info.crop_size and dm.name == info.name
    assert PotsdamCrops.info is POTSDAM and PotsdamTiles.info is POTSDAM_TILES
    assert POTSDAM.bands == 4 and POTSDAM.crop_size == 256 and POTSDAM_TILES.crop_size == 512
    assert CITYSCAPES.num_classes == 19 and VOC.num_classes == 21
    with pytest.raises(ValueError, match="mean and std"):
        DatasetInfo("x", ("a",), mean=(0.5,), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="colours"):
        DatasetInfo("x", ("a", "b"), palette=((0, 0, 0),))


def test_potsdam_statistics_follow_the_bands(seg_roots) -> None:
    rgbir = PotsdamDataModule(str(seg_roots["potsdam"]))
    rgb = PotsdamDataModule(str(seg_roots["potsdam"]), bands="rgb")
    assert rgbir.mean == [0.5] * 4 and rgbir.std == [0.3125] * 4 and rgbir.in_channels == 4
    assert rgb.mean == [0.5] * 3 and rgb.in_channels == 3 and rgbir.crop_size == 256
    assert np.isclose(rgbir.std[0], 1 / 3.2)  # GLCNet's x / 255 * 3.2 - 1.6
