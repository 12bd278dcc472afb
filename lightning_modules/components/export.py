"""Trained encoders and networks out of contraseg: plain ``state_dict`` files plus a JSON manifest.

:func:`write_export` writes, for any contraseg task:

* ``encoder.pth``: the encoder as the state dict of the plain timm model
  ``timm.create_model(name, num_classes=0, in_chans=...)`` (a dense task's encoder is
  timm's ``features_only`` wrapper: its flattened module names, ``stages_0``, are mapped back
  to the plain model's, ``stages.0``);
* ``network.pth`` (segmentation tasks): the whole smp network (``encoder.*``, ``decoder.*``,
  ``segmentation_head.*``), loadable into the registered architecture;
* ``contraseg.json``: the format version, what builds each file (timm name, input channels,
  CIFAR stem, timm arguments; architecture, classes, class names, decoder options) and where
  it came from (checkpoint, its class and step).

:func:`load_encoder` returns the timm model with those weights; :func:`load_network` the
segmentation network.  Neither needs contraseg's tasks, configs or Lightning: another
codebase can read ``contraseg.json`` and the two ``.pth`` files with torch and timm alone
(``docs/export.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from contraseg.lightning_modules.components.networks import (
    TimmEncoder,
    apply_cifar_stem,
    build_segmentation_net,
)

__all__ = ["EXPORT_FORMAT", "load_encoder", "load_network", "plain_timm_state", "write_export"]

EXPORT_FORMAT = "contraseg-export/1"
MANIFEST = "contraseg.json"


def plain_timm_state(model: nn.Module, plain: nn.Module) -> dict[str, Tensor]:
    """``model``'s tensors renamed to the plain timm model ``plain``'s names.

    ``model`` is the plain model itself or timm's ``features_only`` wrapper of it, which
    flattens the modules it keeps into top-level names (``stages.0`` -> ``stages_0``).

    Raises:
        ValueError: A tensor of ``model`` has no counterpart of the same shape in ``plain``.
    """
    target = plain.state_dict()
    flattened = {name.replace(".", "_"): name for name, _ in plain.named_modules() if name}
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        name = key if key in target else f"{flattened.get(head, head)}.{rest}" if rest else key
        if name not in target or target[name].shape != value.shape:
            raise ValueError(f"encoder tensor {key!r} {tuple(value.shape)} has no counterpart in "
                             f"the plain timm model ({name!r})")  # fmt: skip
        out[name] = value.detach().cpu().clone()
    return out


def _encoder_spec(task: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The task's timm model and what builds its plain version."""
    hp = task.hparams
    encoder = task.encoder
    timm_kwargs = dict(hp.get("encoder_kwargs") or {}) if isinstance(encoder, TimmEncoder) else {}
    cifar_stem = bool(timm_kwargs.pop("cifar_stem", False))
    timm_kwargs.pop("in_chans", None)
    for key in ("pretrained", "checkpoint_path"):
        timm_kwargs.pop(key, None)  # the weights are the exported ones
    if getattr(encoder.model, "dynamic_img_size", False):
        timm_kwargs["dynamic_img_size"] = True  # a ViT of any input size (Segmenter)
    stride = getattr(encoder, "_output_stride", 32)  # smp's timm encoder (DeepLabV3+: 16)
    if stride != 32:
        # the dilation the encoder was trained with: the same weights at stride 32 compute
        # other features (drop it from timm_kwargs to use the encoder undilated)
        timm_kwargs["output_stride"] = int(stride)
    spec = {"timm_name": hp.encoder, "in_chans": int(task.encoder_in_channels()),
            "cifar_stem": cifar_stem, "timm_kwargs": timm_kwargs}  # fmt: skip
    return encoder.model, spec


def _build_plain(spec: dict[str, Any]) -> nn.Module:
    model = timm.create_model(spec["timm_name"], pretrained=False, in_chans=spec["in_chans"],
                              num_classes=0, **spec.get("timm_kwargs", {}))  # fmt: skip
    if spec.get("cifar_stem"):
        apply_cifar_stem(model, spec["timm_name"])
    return model


def write_export(task: nn.Module, out: str | Path, source: dict[str, Any]) -> dict[str, Any]:
    """Write ``encoder.pth``, ``network.pth`` (segmentation tasks) and ``contraseg.json``.

    Args:
        task: A contraseg task with its trained weights (``task.encoder.model`` the timm
            model; a dense task's network at ``task.net``).
        out: Output folder (created).
        source: Provenance written into the manifest (checkpoint path, class, step, ...).

    Returns:
        The manifest.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, spec = _encoder_spec(task)
    plain = _build_plain(spec)
    state = plain_timm_state(model, plain)
    spec["num_features"] = int(plain.num_features)
    # tensors the plain model has and the task's encoder had not (a features_only encoder ends
    # at its last stage: e.g. ConvNeXt's head norm): they keep timm's initialisation
    spec["untrained"] = sorted(set(plain.state_dict()) - set(state))
    spec["file"] = "encoder.pth"
    torch.save(state, out / spec["file"])
    manifest: dict[str, Any] = {"format": EXPORT_FORMAT, "encoder": spec, "source": source}
    net = getattr(task, "net", None)
    if isinstance(net, nn.Module) and hasattr(net, "decoder"):
        hp = task.hparams
        classes = task.head_classes() if hasattr(task, "head_classes") else None
        manifest["network"] = {
            "architecture": hp.architecture, "encoder": hp.encoder,
            "in_channels": int(task.encoder_in_channels()), "classes": classes,
            "aspp_rates": list(hp.get("aspp_rates") or []) or None,
            "decoder_channels": list(hp.decoder_channels) if hp.get("decoder_channels") else None,
            "class_names": list(getattr(task, "class_names", None) or []) or None,
            "pad_multiple": int(net.pad_multiple), "file": "network.pth",
        }  # fmt: skip
        torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                   out / "network.pth")  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: expected a folder written by "
                                "`contraseg export` (holding contraseg.json)")  # fmt: skip
    manifest = json.loads(file.read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{file}: format {manifest.get('format')!r}, expected {EXPORT_FORMAT!r}")
    return file.parent, manifest


def load_encoder(path: str | Path) -> nn.Module:
    """The exported encoder as a plain timm model (``num_classes=0``: pooled features).

    Args:
        path: A folder written by ``contraseg export`` (or its ``contraseg.json``).

    Returns:
        ``timm.create_model(name, num_classes=0, in_chans=...)`` with the exported weights,
        in eval mode.

    Raises:
        ValueError: The weights do not fit the model the manifest describes.
    """
    folder, manifest = _manifest(path)
    spec = manifest["encoder"]
    model = _build_plain(spec)
    state = torch.load(folder / spec["file"], map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != set(spec.get("untrained", [])):
        raise ValueError(f"{folder / spec['file']} does not fit {spec['timm_name']}: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")  # fmt: skip
    return model.eval()


def load_network(path: str | Path) -> nn.Module:
    """The exported segmentation network (a registered architecture), in eval mode.

    Raises:
        ValueError: The export holds no network (an image-level task's).
    """
    folder, manifest = _manifest(path)
    spec = manifest.get("network")
    if spec is None:
        raise ValueError(f"{folder} holds an encoder only (an image-level task's export): use "
                         "load_encoder")  # fmt: skip
    options: dict[str, Any] = {"decoder_channels": spec["decoder_channels"]}
    if spec.get("aspp_rates"):
        options["aspp_rates"] = spec["aspp_rates"]
    net = build_segmentation_net(spec["architecture"], spec["encoder"], spec["in_channels"],
                                 spec["classes"], None, **options)  # fmt: skip
    state = torch.load(folder / spec["file"], map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()
