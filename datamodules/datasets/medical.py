"""Medical volume sets on disk: protocols (classes, label tables, modality) and subject lists.

A data set is a list of :class:`Subject` (id, image file, label file) and a
:class:`Protocol` (class names, raw-label table, modality and CT window, official test
subjects).  The readers here only find and pair files; :mod:`contraseg.datamodules.datasets.nifti`
reads them and :mod:`contraseg.datamodules.medical` serves slices.

Layouts:

* **BTCV** (Synapse multi-organ): ``RawData/Training/img/img0001.nii.gz`` and
  ``.../label/label0001.nii.gz`` (``root`` may also be ``RawData`` or ``RawData/Training``);
  13 organs; ``btcv8`` is the TransUNet protocol (8 organs, the other 5 to background) with
  its 12 test cases.
* **MM-WHS** CT: ``ct_train_1001_image.nii.gz`` / ``ct_train_1001_label.nii.gz`` (also the
  ``mr_train_`` files with ``modality: mr``); raw values 205, 420, 500, 550, 600, 820, 850.
* **MSD Task04 Hippocampus**: ``dataset.json`` listing ``training`` pairs under
  ``imagesTr`` / ``labelsTr`` (MR, labels 0-2); macOS ``._*`` resource files are skipped.
* **NIfTI folder** (users' own data): ``image_pattern`` / ``label_pattern`` with an ``{id}``
  placeholder relative to ``root``, e.g. ``images/{id}.nii.gz`` and ``labels/{id}_seg.nii.gz``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from contraseg.datamodules.datasets.io import DataFormatError, require_dir, require_file

__all__ = [
    "BTCV",
    "BTCV8",
    "BTCV8_TEST",
    "HIPPOCAMPUS",
    "MMWHS",
    "Protocol",
    "Subject",
    "btcv_subjects",
    "hippocampus_subjects",
    "mmwhs_subjects",
    "pattern_subjects",
]


@dataclass(frozen=True)
class Subject:
    """One subject: id, image file and label file (``None``: unlabelled)."""

    id: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class Protocol:
    """What a volume set means.

    Attributes:
        name: Short name (split files are named after it).
        classes: Class names, background first.
        label_table: ``raw value -> class``; ``None`` means raw values are the classes.
        modality: ``ct`` or ``mr`` (selects the normalisation).
        window: CT Hounsfield window.
        test_subjects: Official held-out subjects (empty: a seeded subject split).
    """

    name: str
    classes: tuple[str, ...]
    label_table: dict[int, int] | None = None
    modality: str = "ct"
    window: tuple[float, float] | None = (-125.0, 275.0)
    test_subjects: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.classes)


BTCV_ORGANS = (
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "ivc",
    "portal_splenic_vein",
    "pancreas",
    "right_adrenal",
    "left_adrenal",
)
BTCV = Protocol("btcv", ("background", *BTCV_ORGANS), {i: i for i in range(14)})
# TransUNet: aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach
_TRANSUNET = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
BTCV8_TEST = (
    "0001",
    "0002",
    "0003",
    "0004",
    "0008",
    "0022",
    "0025",
    "0029",
    "0032",
    "0035",
    "0036",
    "0038",
)
BTCV8 = Protocol(
    "btcv8",
    (
        "background",
        "aorta",
        "gallbladder",
        "left_kidney",
        "right_kidney",
        "liver",
        "pancreas",
        "spleen",
        "stomach",
    ),
    {i: _TRANSUNET.get(i, 0) for i in range(14)},  # the 5 other organs are background
    test_subjects=BTCV8_TEST,
)
MMWHS = Protocol(
    "mmwhs",
    (
        "background",
        "lv_myocardium",
        "la_cavity",
        "lv_cavity",
        "ra_cavity",
        "rv_cavity",
        "ascending_aorta",
        "pulmonary_artery",
    ),
    {0: 0, 205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7},
    window=(-200.0, 800.0),
)
HIPPOCAMPUS = Protocol(
    "hippocampus",
    ("background", "anterior", "posterior"),
    {0: 0, 1: 1, 2: 2},
    modality="mr",
    window=None,
)


def _pair(images: dict[str, Path], labels: dict[str, Path], where: str) -> list[Subject]:
    """Subjects from id -> file maps; an image without label (or the reverse) is an error."""
    missing = sorted(set(images) - set(labels))
    orphans = sorted(set(labels) - set(images))
    if missing:
        raise DataFormatError(
            f"{where}: no label file for images {missing[:5]} ({len(missing)} in all)"
        )
    if orphans:
        raise DataFormatError(f"{where}: label files {orphans[:5]} have no image")
    if not images:
        raise DataFormatError(f"{where}: no volumes found")
    return [Subject(i, images[i], labels[i]) for i in sorted(images)]


def pattern_subjects(
    root: str | Path, image_pattern: str, label_pattern: str | None
) -> list[Subject]:
    """Subjects of a folder whose files follow ``{id}`` patterns relative to ``root``.

    Args:
        root: Data set folder.
        image_pattern: e.g. ``"img/img{id}.nii.gz"``.
        label_pattern: e.g. ``"label/label{id}.nii.gz"``; ``None``: unlabelled volumes.

    Returns:
        Subjects sorted by id.

    Raises:
        FileNotFoundError: If ``root`` is missing.
        DataFormatError: If nothing matches or images and labels do not pair up.
    """
    root = require_dir(root, "NIfTI data set root")

    def scan(pattern: str) -> dict[str, Path]:
        if pattern.count("{id}") != 1:
            raise ValueError(f"pattern {pattern!r} must contain '{{id}}' exactly once")
        head, tail = pattern.split("{id}")
        regex = re.compile(re.escape(head) + r"(.+?)" + re.escape(tail) + r"$")
        found = {}
        for path in root.glob(pattern.replace("{id}", "*")):
            rel = path.relative_to(root).as_posix()
            match = regex.match(rel)
            if match and not path.name.startswith("._"):
                found[match.group(1)] = path
        return found

    images = scan(image_pattern)
    if label_pattern is None:
        if not images:
            raise DataFormatError(f"{root}: no file matches {image_pattern!r}")
        return [Subject(i, images[i], None) for i in sorted(images)]
    return _pair(images, scan(label_pattern), f"{root} ({image_pattern} / {label_pattern})")


def btcv_subjects(root: str | Path) -> list[Subject]:
    """BTCV training subjects (ids ``0001``...) from ``root`` or its ``RawData/Training``."""
    root = require_dir(root, "BTCV root", "expected RawData/Training/{img,label}/")
    for base in (root / "RawData" / "Training", root / "Training", root):
        if (base / "img").is_dir():
            return pattern_subjects(base, "img/img{id}.nii.gz", "label/label{id}.nii.gz")
    raise FileNotFoundError(
        f"BTCV: no img/ folder under {root} (expected "
        "RawData/Training/img/img0001.nii.gz and label/label0001.nii.gz)"
    )


def mmwhs_subjects(root: str | Path, modality: str = "ct") -> list[Subject]:
    """MM-WHS ``{ct,mr}_train_<id>_{image,label}.nii.gz`` pairs (any sub-folder of ``root``)."""
    root = require_dir(root, "MM-WHS root", "expected ct_train_1001_image.nii.gz ...")
    images = {p.name.split("_")[2]: p for p in root.rglob(f"{modality}_train_*_image.nii.gz")}
    labels = {p.name.split("_")[2]: p for p in root.rglob(f"{modality}_train_*_label.nii.gz")}
    return _pair(images, labels, f"MM-WHS {modality} under {root}")


def hippocampus_subjects(root: str | Path) -> list[Subject]:
    """MSD Task04 Hippocampus ``training`` pairs from ``dataset.json``.

    Raises:
        DataFormatError: If ``dataset.json`` is malformed or names a file that is missing.
    """
    root = require_dir(root, "MSD Hippocampus root", "expected dataset.json, imagesTr/, labelsTr/")
    meta = require_file(root / "dataset.json", "MSD dataset.json")
    try:
        entries = json.loads(meta.read_text())["training"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataFormatError(f"{meta}: expected a JSON object with a 'training' list") from err
    subjects = []
    for entry in entries:
        try:
            image, label = root / entry["image"], root / entry["label"]
        except (KeyError, TypeError) as err:
            raise DataFormatError(f"{meta}: training entry {entry!r} lacks image/label") from err
        for path, kind in ((image, "image"), (label, "label")):
            if not path.is_file():
                raise DataFormatError(f"{meta}: training {kind} {path} does not exist")
        subjects.append(Subject(image.name.split(".")[0], image, label))
    if not subjects:
        raise DataFormatError(f"{meta}: the 'training' list is empty")
    return sorted(subjects, key=lambda s: s.id)
