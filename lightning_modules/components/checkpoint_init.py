"""Initialise an smp model (timm encoder, optionally decoder parts) from a checkpoint, by name.

Encoder weights come from a contraseg pretraining checkpoint (``encoder.model.*``), a
contraseg dense-pretraining or fine-tuning checkpoint (``net.encoder.model.*``) or a plain
timm state dict.  Decoder parts (e.g. GLCNet's ASPP, or a whole pretrained U-Net decoder)
come from ``net.decoder.*`` tensors of a contraseg dense model with the same smp
architecture.  The segmentation head is never loaded.  A checkpoint conv with more input
channels than the target (e.g. image + object mask) can be loaded on its first channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# where encoder weights live: contraseg image-level pretraining (``backbone.model.`` before
# version 0.2), contraseg dense / fine-tuning, plain timm
CHECKPOINT_PREFIXES = ("encoder.model.", "backbone.model.", "net.encoder.model.", "")
DECODER_PREFIX = "net.decoder."
REPORT_KEYS = ("loaded", "sliced_input_channels", "resampled_pos_embed", "shape_mismatch",
               "missing", "prefix")


def read_state_dict(checkpoint_path: str | Path) -> dict[str, Tensor]:
    """Tensors of a Lightning checkpoint (its ``state_dict``) or of a plain state dict."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_checkpoint {str(path)!r} does not exist")
    state = load_checkpoint_file(path)
    state = state.get("state_dict", state)
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no tensors: {CHECKPOINT_EXPECTED}")
    return state


CHECKPOINT_EXPECTED = (
    "a checkpoint should be a Lightning .ckpt written by contraseg (weights under "
    "'state_dict') or a plain PyTorch state dict of tensors saved with torch.save"
)


def load_checkpoint_file(path: str | Path) -> dict:
    """``torch.load`` (weights only, on CPU) with an error naming the file when it is unreadable.

    Raises:
        ValueError: The file is not a PyTorch checkpoint (text, truncated, foreign pickle).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path} ({first[:160]}): "
                         f"{CHECKPOINT_EXPECTED}") from err  # fmt: skip
    if not isinstance(state, dict):
        raise ValueError(
            f"{path} holds a {type(state).__name__}, not a dict: {CHECKPOINT_EXPECTED}"
        )
    return state


def check_init_report(report: dict[str, list[str]], path: str | Path, strict: bool) -> None:
    """Error (``strict``) when an init checkpoint left encoder tensors missing or mismatched.

    Raises:
        ValueError: Naming the file, the counts and the first names, and the way out
            (``model.init_args.strict_init false`` for a deliberate partial load).
    """
    bad = {k: report[k] for k in ("shape_mismatch", "missing") if report.get(k)}
    if not strict or not bad:
        return
    detail = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {v[:3]})" for k, v in bad.items())
    raise ValueError(
        f"model.init_checkpoint {path} does not fit the model: {detail}, "
        f"{len(report['loaded'])} loaded. A checkpoint of another encoder or architecture? "
        "Set model.init_args.strict_init false to load only the matching tensors."
    )


def _is_sliceable(source: Tensor, target: Tensor) -> bool:
    """A 4-D conv weight that differs from the target only by having more input channels."""
    return (
        source.ndim == 4 and target.ndim == 4 and source.shape[1] > target.shape[1]
        and source.shape[:1] + source.shape[2:] == target.shape[:1] + target.shape[2:]
    )  # fmt: skip


def _resampled_pos_embed(module: nn.Module, name: str, source: Tensor,
                         target: Tensor) -> Tensor | None:  # fmt: skip
    """A ViT position embedding of another grid, resampled to ``module``'s (else ``None``).

    A checkpoint trained at another crop size (a 96 px pretraining, a 768 px Segmenter) has
    another patch grid; timm's ``resample_abs_pos_embed`` (bicubic, antialiased: what timm
    itself does when it loads weights of another size) maps it onto this model's grid, the
    prefix (class) tokens kept as they are.
    """
    grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    prefix = int(getattr(module, "num_prefix_tokens", 0) or 0)
    if (not name.endswith("pos_embed") or grid is None or source.ndim != 3 or target.ndim != 3
            or source.shape[-1] != target.shape[-1]):  # fmt: skip
        return None
    old = source.shape[1] - prefix
    side = int(round(old**0.5))
    if side * side != old:
        return None
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(source, list(grid), [side, side], num_prefix_tokens=prefix)


def _copy_by_name(
    module: nn.Module, source: dict[str, Tensor], names: list[str], slice_input_channels: bool
) -> dict[str, list[str]]:
    """Load ``source[name]`` into ``module`` for each ``name``; report what happened."""
    report: dict[str, list[str]] = {key: [] for key in REPORT_KEYS}
    target, update = module.state_dict(), {}
    for name in names:
        value = target[name]
        if name not in source:
            report["missing"].append(name)
        elif source[name].shape == value.shape:
            update[name] = source[name]
            report["loaded"].append(name)
        elif slice_input_channels and _is_sliceable(source[name], value):
            update[name] = source[name][:, : value.shape[1]].clone()
            report["sliced_input_channels"].append(name)
        elif (resampled := _resampled_pos_embed(module, name, source[name], value)) is not None:
            update[name] = resampled
            report["resampled_pos_embed"].append(name)
        else:
            report["shape_mismatch"].append(name)
    module.load_state_dict(update, strict=False)
    return report


def _encoder_source(
    state: dict[str, Tensor], target: dict[str, Tensor], path: Path, model: nn.Module
) -> tuple[str, dict[str, Tensor]]:
    for prefix in CHECKPOINT_PREFIXES:
        source = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(source) & set(target):
            return prefix, source
    raise ValueError(
        f"{path} has no encoder weights under any of {CHECKPOINT_PREFIXES} that match the "
        f"{type(model).__name__} encoder: not a contraseg or timm checkpoint?"
    )


def load_encoder_from_checkpoint(
    encoder: nn.Module,
    checkpoint_path: str | Path,
    slice_input_channels: bool = True,
    state: dict[str, Tensor] | None = None,
) -> dict[str, list[str]]:
    """Copy encoder weights from a checkpoint into an smp timm encoder, by name.

    The first of ``CHECKPOINT_PREFIXES`` whose names match the encoder is used.

    Args:
        encoder: ``model.encoder`` of an smp model with a ``tu-`` (timm) encoder.
        checkpoint_path: Lightning checkpoint (``state_dict`` inside) or a plain state dict.
        slice_input_channels: Load a conv weight with extra trailing input channels on its
            first ``target.shape[1]`` channels (as if the extra inputs were zero).
        state: The checkpoint's tensors when already read (``checkpoint_path`` is then
            used for messages only).

    Returns:
        ``REPORT_KEYS`` lists of names relative to the timm model, ``"prefix"`` holding
        the prefix used.
    """
    path = Path(checkpoint_path)
    state = read_state_dict(path) if state is None else state
    target = encoder.model.state_dict()
    prefix, source = _encoder_source(state, target, path, encoder.model)
    report = _copy_by_name(encoder.model, source, list(target), slice_input_channels)
    report["prefix"] = [prefix]
    return report


def _selected(name: str, prefixes: list[str]) -> bool:
    return any(not p or name == p or name.startswith(p.rstrip(".") + ".") for p in prefixes)


def load_decoder_from_checkpoint(
    decoder: nn.Module,
    checkpoint_path: str | Path,
    prefixes: list[str],
    slice_input_channels: bool = True,
    state: dict[str, Tensor] | None = None,
) -> dict[str, list[str]]:
    """Copy the decoder tensors under ``prefixes`` from a contraseg dense checkpoint.

    Args:
        decoder: ``model.decoder`` of an smp model.
        checkpoint_path: Checkpoint with ``net.decoder.*`` tensors of the same smp
            architecture (dense pretraining such as GLCNet, or a fine-tuning run).
        prefixes: Name prefixes inside the decoder (``"aspp"``; ``""`` for all of it).
        slice_input_channels: As in ``load_encoder_from_checkpoint``.
        state: The checkpoint's tensors when already read.

    Returns:
        ``REPORT_KEYS`` lists of decoder names (prefixed ``decoder.``), ``"prefix"`` empty.

    Raises:
        ValueError: The checkpoint has no ``net.decoder.*`` tensors, a prefix selects no
            decoder tensor, or no selected tensor is in the checkpoint.
    """
    path = Path(checkpoint_path)
    state = read_state_dict(path) if state is None else state
    source = {k[len(DECODER_PREFIX) :]: v for k, v in state.items() if k.startswith(DECODER_PREFIX)}
    if not source:
        raise ValueError(
            f"model.init_decoder={prefixes} but {path} has no {DECODER_PREFIX}* tensors: "
            "decoder parts load only from a contraseg dense (smp) checkpoint"
        )
    target = list(decoder.state_dict())
    unknown = [p for p in prefixes if not any(_selected(n, [p]) for n in target)]
    names = [n for n in target if _selected(n, prefixes)]
    if unknown or not set(names) & set(source):
        raise ValueError(
            f"model.init_decoder={prefixes}: no {type(decoder).__name__} tensors "
            f"{'under ' + str(unknown) if unknown else 'selected'} in {path} (its decoder "
            f"has e.g. {sorted(source)[:3]}): a checkpoint of another smp architecture?"
        )
    report = _copy_by_name(decoder, source, names, slice_input_channels)
    return {k: [f"decoder.{n}" for n in v] for k, v in report.items()}


def init_from_checkpoint(
    net: nn.Module,
    checkpoint_path: str | Path,
    init_decoder: list[str] | None = None,
    slice_input_channels: bool = True,
) -> dict[str, list[str]]:
    """Initialise an smp model's encoder, and optionally decoder parts, from one checkpoint.

    Args:
        net: smp model with a ``tu-`` encoder.
        checkpoint_path: See ``load_encoder_from_checkpoint``.
        init_decoder: Decoder name prefixes to load too (see ``load_decoder_from_checkpoint``).
        slice_input_channels: See ``load_encoder_from_checkpoint``.

    Returns:
        The encoder report with the decoder's (``decoder.``-prefixed names) appended.
    """
    state = read_state_dict(checkpoint_path)
    report = load_encoder_from_checkpoint(net.encoder, checkpoint_path, slice_input_channels, state)
    if init_decoder:
        dec = load_decoder_from_checkpoint(
            net.decoder, checkpoint_path, init_decoder, slice_input_channels, state
        )
        for key in REPORT_KEYS:
            report[key] += dec[key]
    return report


def summarize(report: dict[str, list[str]]) -> str:
    """One log line: counts per report key, with the first few names of the problems."""
    parts = [f"{len(report[k])} {k}" for k in REPORT_KEYS[:-1]]
    parts += [f"{k}: {report[k][:5]}" for k in ("shape_mismatch", "missing") if report[k]]
    return ", ".join(parts) + f" (encoder prefix {report['prefix'][0]!r})"
