"""Every config resolves to the values it resolved to before the config refactor.

The before-dumps (``tests/data/print_config``) were written by ``tests/config_dumps.py``
from the code before issue 8; only the names in ``RENAMED`` (old dotted key -> new key,
``None``: removed on purpose) and the keys in ``ADDED`` may differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_dumps import CONFIGS, DUMPS, resolved

# key patterns are regular expressions over dotted keys (list items as their index)
M = r"model\.init_args\."
RENAMED: dict[str, str | None] = {
    # one word per concept: "encoder" (image-level tasks said "backbone")
    M + "backbone": "model.init_args.encoder",
    M + r"backbone_kwargs\.in_chans": None,  # linked from data.in_channels
    M + "backbone_kwargs": "model.init_args.encoder_kwargs",
    M + "freeze_backbone": "model.init_args.freeze_encoder",
    # one pair of projector names (see migrate() for the layer-count form)
    M + "head_hidden": None,
    M + "head_out": "model.init_args.projector.out_dim",
    M + "global_hidden_dim": None,
    M + "proj_dim": "model.init_args.projector.out_dim",
    M + "projection_channels": None,
    M + "projection_layers": None,
    # linked from the data module now (data.in_channels), never typed by hand
    M + "in_channels": None,
    # issue 9: Lightning's ModelCheckpoint -> contraseg.callbacks.RunCheckpoint (true last.ckpt
    # every epoch, best.ckpt by monitor, every_n_epochs = kept snapshots); its other knobs are gone
    r"trainer\.callbacks\.ModelCheckpoint\.class_path": None,
    r"trainer\.callbacks\.ModelCheckpoint\.init_args\.(?:dirpath|monitor|mode|every_n_epochs)":
        "trainer.callbacks.RunCheckpoint.init_args.KEY",
    r"trainer\.callbacks\.ModelCheckpoint\..*": None,
    # issue 25: one projector argument (a dataclass) instead of three keys per method
    M + "projector_hidden_dims": "model.init_args.projector.hidden_dims",
    M + "projector_out_dim": "model.init_args.projector.out_dim",
    M + "(?:projector_batch_norm|head_batch_norm|head_norm_act)":
        "model.init_args.projector.batch_norm",
    # issue 25: HCSC supplies its prototype callback itself, from model arguments
    r"trainer\.callbacks\.PrototypeUpdate\.class_path": None,
    r"trainer\.callbacks\.PrototypeUpdate\.init_args\.num_clusters":
        "model.init_args.prototype_clusters",
    r"trainer\.callbacks\.PrototypeUpdate\.init_args\.(?:warmup_epochs|niter|nredo|init|"
    r"distributed|batch_size|num_workers|seed)": "model.init_args.prototype_KEY",
    r"trainer\.callbacks\.PrototypeUpdate\.init_args\.save_plots":
        "model.init_args.prototype_plots",
    r"trainer\.callbacks\.PrototypeUpdate\.init_args\.temperature": None,  # the model's own
}
ADDED: list[str] = [
    r"trainer\.callbacks\.EmbeddingRankMonitor\.init_args\.num_workers",  # a DataLoader now
    r"trainer\.logger\.CSVLogger\..*",  # every run writes metrics.csv (the base trainer)
    r"trainer\.callbacks\.LearningRateMonitor\..*",  # every run logs its LR (the base trainer)
    M + r"projector\.hidden_dims",  # added where migrate() does not derive it
    M + r"projector\.batch_norm",  # issue 25: every projector shows its BatchNorm switch
    M + "(in_channels|init_checkpoint|freeze_encoder|momentum|min_lr_ratio)",  # one base
    M + "(encoder_weights|architecture)",  # every smp task (DenseTask)
    M + "encoder_kwargs",  # Lee et al. now shows it (it was popped from **kwargs)
    M + "strict_init",  # issue 9: init checkpoints load strictly unless asked
    r"trainer\.callbacks\.NaNGuard\..*",  # issue 9: on by default in the base trainer
    r"trainer\.callbacks\.RunCheckpoint\.(class_path|init_args\.\w+)",  # issue 9
    r"data\.init_args\.strict_colours",  # issue 9: Potsdam data modules expose it
    # issue 10 (fidelity to the official code): ASPP rates and decoder widths of every smp
    # network, GLCNet's official local tap / heads / per-view passes, Hu et al.'s head,
    # the fine-tuning loss and attention-channel switches, multi-band / gamma / noise views
    M + "(aspp_rates|decoder_channels)",
    M + "(local_tap|local_channels|joint_forward)",
    M + "(loss|attention_channel)",
    r"data\.init_args\.(augment|pretrain_views)(\.\d+)?\."
    r"(band_brightness|band_contrast|pixel_noise_prob|gamma|noise_std)",
    r"data\.init_args\.(attention_mask|clutter_textured)",  # issue 11: CLAWS's attention
    r"data\.init_args\.class_balanced",  # issue 12: the class-balanced sampler
    r"data\.init_args\.predict_dir",  # issue 26: predict on a folder of one's own images
    M + "(schedule|poly_power)",  # issue 27: Segmenter's polynomial decay
    M + "miou_classes",  # issue 27: SYNTHIA's 16- / 13-class protocols
    M + "decoder",  # issue 27: an architecture's decoder variant (Segmenter's mask / linear)
    r"trainer\.callbacks\.RunFigures\..*",  # issue 26: every run draws its learning curves
    r"trainer\.logger\.WandbLogger\.init_args\.(name|group|job_type|tags)",  # issue 26
    r"data\.init_args\.train_set",  # issue 13: a condensed set as the training split
    M + "(channels_last|compile)",  # issue 22: step-speed switches of the task base
    M + "prototype_\\w+",  # issue 25: HCSC's prototype settings (defaults the callback had)
    M + r"projector\.activation",  # issue 28: GRACE's projection has an ELU
]


# issue 25: a data set's own crop size and normalisation are signature defaults now, so a
# config that left them unset shows the values it ran with where it showed null
SHOWN = [r"data\.init_args\.(crop_size|mean|std)"]
# values that differ on purpose
CHANGED = {
    r"trainer\.logger\.WandbLogger\.init_args\.name",  # the W&B run is named after the file
}
# issue 10: Hu et al.'s stage 2 follows the official recipe (Adam 1e-4, weight decay 1e-4,
# constant lr, intensity-only views) instead of the earlier cosine / crop + flip recipe
CHANGED_IN = {
    "localcontrast_quickstart": {
        M + "(lr|weight_decay|warmup_epochs|min_lr_ratio)",
        r"data\.init_args\.pretrain_views\.(crop_scale|crop_ratio|hflip_prob|contrast|"
        r"saturation|hue|grayscale_prob)",
    },
}


def migrate(before: dict[str, Any]) -> dict[str, Any]:
    """Old projector arguments in the new names (values derived, not renamed)."""
    flat = dict(before)
    if "model.init_args.head_hidden" in flat:
        flat["model.init_args.projector.hidden_dims"] = [flat["model.init_args.head_hidden"]]
    if "model.init_args.global_hidden_dim" in flat:
        flat["model.init_args.projector.hidden_dims"] = [flat["model.init_args.global_hidden_dim"]]
    if "model.init_args.projection_channels" in flat:
        width = flat["model.init_args.projection_channels"]
        layers = flat["model.init_args.projection_layers"]
        flat["model.init_args.projector.hidden_dims"] = [width] * (layers - 1)
        flat["model.init_args.projector.out_dim"] = width
    return flat


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(
        isinstance(v, dict) and "class_path" in v for v in tree
    ):  # callbacks / loggers: keyed by class (their order is not a resolved value)
        out = {}
        for value in tree:
            out.update(flatten(value, f"{prefix}{value['class_path'].rsplit('.', 1)[-1]}."))
        return out
    if isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def renamed(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        for pattern, new in RENAMED.items():
            match = re.fullmatch(f"({pattern})(\\..*)?", key)  # a key and everything under it
            if match:
                if new is not None:
                    new = new.replace("KEY", key.rsplit(".", 1)[-1])
                    out[new + (match.group(2) or "")] = value
                break
        else:
            out[key] = value
    return out


DUMPED = sorted(DUMPS.glob("*.yaml"))


def load(tree: dict[str, Any]) -> dict[str, Any]:
    """One logger given as a mapping is a list of one logger."""
    trainer = tree.get("trainer") or {}
    if isinstance(trainer.get("logger"), dict):
        trainer["logger"] = [trainer["logger"]]
    return tree


# configs added after the dumps were taken (no "before" to compare)
NEW = {"finetune_folder", "directclr_imagenet", "simclr_textured", "glcnet_textured",
       "pixelcontrast_textured", "attention_textured", "localcontrast_textured",
       "finetune_textured", "moco_v2_imagenet", "moco_v2_cifar10",
       "moco_v2_quickstart", "hcsc_quickstart", "hcsc_imagenet", "hcsc_cifar10",
       "claws_quickstart", "claws_textured", "claws_folder",
       "hcsc_imagenet_multicrop",
       # issue 12: medical, supervised contrast, imbalance and multi-domain configs
       "simclr_medical", "localcontrast_medical", "finetune_medical", "attention_medical",
       "simclr_mmwhs", "localcontrast_mmwhs", "finetune_mmwhs", "simclr_hippocampus",
       "localcontrast_hippocampus", "finetune_hippocampus", "attention_btcv", "finetune_btcv",
       "supcon_imbalanced", "classifier_imbalanced", "supcon_isic", "classifier_isic",
       "finetune_isic", "multidomain_medical",
       # issue 13: dataset condensation
       "dcc_digits", "dcc_clutter", "dcc_cifar10",
       # issue 23: MoCo v2 / HCSC on the textured scenes, the digit-scene benchmark
       "moco_v2_textured", "hcsc_textured", "simclr_digits", "moco_v2_digits", "hcsc_digits",
       "finetune_digits", "glcnet_digits", "pixelcontrast_digits",
       # issue 27: Segmenter
       "segmenter_textured", "segmenter_cityscapes",
       # issue 27: domain adaptation on the texture scenes
       "da_source_only_textured", "da_oracle_textured", "pr_sfda_textured",
       "patch_contrast_textured", "da_source_only_gta5", "pr_sfda_gta5",
       "patch_contrast_gta5", "segmenter_ade20k", "da_source_only_synthia",
       # issue 28: GRACE and ARIEL on the real graphs and the embedded CSBM
       *(f"{m}_{g}" for m in ("grace", "ariel")
         for g in ("cora", "citeseer", "amazon_computers", "amazon_photo", "coauthor_cs",
                   "coauthor_physics", "csbm")),
       "grace_pubmed"}  # fmt: skip


def test_every_config_has_a_dump() -> None:
    assert {p.stem for p in DUMPED} == {p.stem for p in CONFIGS.glob("*.yaml")} - NEW


@pytest.mark.parametrize("dump", DUMPED, ids=lambda p: p.stem)
def test_resolved_config_unchanged(dump: Path) -> None:
    before = renamed(migrate(flatten(load(yaml.safe_load(dump.read_text())))))
    after = flatten(load(resolved(CONFIGS / dump.name)))
    extra = {k for k in set(after) - set(before) if not any(re.fullmatch(a, k) for a in ADDED)}
    assert not extra, f"new keys {sorted(extra)}"
    missing = set(before) - set(after)
    assert not missing, f"keys gone {sorted(missing)}"
    allowed = CHANGED | CHANGED_IN.get(dump.stem, set())
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]
               and not any(re.fullmatch(c, k) for c in allowed)
               and not (before[k] is None and any(re.fullmatch(c, k) for c in SHOWN))}  # fmt: skip
    assert not changed, f"values changed {changed}"
