r"""What a pretrained encoder encodes: class vs per-image nuisance, and its spectrum.

For each ``name=checkpoint`` (``random`` for a random init) the script embeds ``--scenes``
validation scenes of the segmentation-scale benchmark
(:class:`contraseg.datamodules.datasets.textured_scenes.TexturedScenes`, seed 1 = the data modules'
validation seed) with the smp encoder of a DeepLabV3+ (ResNet-18) loaded the way fine-tuning
loads it (``init_from_checkpoint``), global-average-pools layer 4, and reports, by 5-fold
cross-validation with scikit-learn:

* ``knn``: accuracy of a cosine 20-NN classifier of the scene label (its largest class);
* ``linear``: accuracy of a logistic-regression probe of the same label;
* ``colour R2``: R^2 of a ridge regression of the scene's mean background colour, a per-image
  nuisance that carries no class (high: the encoder keeps nuisance);
* ``eff. rank``: effective rank (entropy of the normalised singular values) of the features.

The GLCNet investigation of issue 10 tracked these on the 32 px scenes (``--size 32
--shapes`` renders those instead).

    .venv/bin/python benchmarks/encoder_report.py random=random \
        simclr=outputs/simclr_textured/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contraseg.callbacks.spectrum import effective_rank  # noqa: E402
from contraseg.datamodules.datasets import SceneSpec, SyntheticScenes, TexturedScenes  # noqa: E402
from contraseg.lightning_modules.components.checkpoint_init import init_from_checkpoint  # noqa: E402
from contraseg.lightning_modules.components.networks import build_segmentation_net  # noqa: E402


def scenes(n: int, size: int, shapes: bool) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Normalised images, scene labels and mean background colours of ``n`` val scenes."""
    if shapes:
        items = [SyntheticScenes(n, size, 6, max_objects=1, seed=1)[i] for i in range(n)]
        image = torch.stack([it["image"] for it in items])
        mask = torch.stack([it["mask"] for it in items])
        label = np.array([it["label"] for it in items])
    else:
        out = TexturedScenes(n, SceneSpec(image_size=size), seed=1).render(list(range(n)))
        image, mask, label = out["image"], out["mask"], out["label"].numpy()
    x = image.float() / 255
    bg = (mask == 0)[:, None].float()
    colour = ((x * bg).sum((2, 3)) / bg.sum((2, 3)).clamp_min(1)).numpy()
    return (x - 0.5) / 0.25, label, colour


@torch.no_grad()
def features(checkpoint: str, images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Layer-4 GAP features of the encoder initialised from ``checkpoint``."""
    torch.manual_seed(0)
    net = build_segmentation_net("deeplabv3plus", "resnet18", 3, None)
    if checkpoint != "random":
        init_from_checkpoint(net, checkpoint)
    net.eval()
    chunks = [net.encoder(images[i : i + batch])[-1].mean((2, 3))
              for i in tqdm(range(0, len(images), batch), desc=checkpoint[-40:], leave=False)]
    return torch.cat(chunks).numpy()


def main(argv: list[str] | None = None) -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+", help="name=checkpoint (or name=random)")
    parser.add_argument("--scenes", type=int, default=1024)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--shapes", action="store_true", help="the 32 px shapes scenes")
    args = parser.parse_args(argv)
    images, label, colour = scenes(args.scenes, args.size, args.shapes)
    print(f"{args.scenes} validation scenes at {args.size} px; 5-fold CV; chance "
          f"{np.bincount(label).max() / len(label):.3f} (majority class)")  # fmt: skip
    print("| encoder | knn | linear | colour R2 | eff. rank |")
    print("|---|---|---|---|---|")
    for spec in args.encoders:
        name, _, path = spec.partition("=")
        z = features(path or name, images)
        zn = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-8)
        zs = (z - z.mean(0)) / z.std(0).clip(1e-6)
        knn = cross_val_score(KNeighborsClassifier(20, metric="cosine"), zn, label, cv=5).mean()
        lin = cross_val_score(LogisticRegression(max_iter=2000), zs, label, cv=5).mean()
        r2 = cross_val_score(Ridge(1.0), zs, colour, cv=5, scoring="r2").mean()
        rank = effective_rank(torch.from_numpy(z))
        print(f"| {name} | {knn:.3f} | {lin:.3f} | {r2:.3f} | {rank:.1f} |")


if __name__ == "__main__":
    main()
