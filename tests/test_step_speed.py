"""Step-speed options: channels-last weights and ``compile`` leave the loss unchanged."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from torch import nn

from contraseg.lightning_modules import SimCLR


def _batch(seed: int = 0, size: int = 32) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
    return {"views": views, "label": torch.tensor([0, 1, 2, -1])}


def _model(**kwargs: Any) -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(encoder="test_resnet", probe_classes=5, **kwargs)


def test_channels_last_weights_give_the_same_loss_and_gradients() -> None:
    """``channels_last: true`` converts the weights at setup: same loss and gradients.

    The default (``null``) converts only when fitting on CUDA.
    """
    last, plain, auto = _model(channels_last=True), _model(channels_last=False), _model()
    cpu = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    auto.trainer = cpu
    for model in (last, plain, auto):
        model.setup("fit")
    assert all(p.is_contiguous() for p in auto.parameters())  # null on CPU: unchanged
    conv = next(p for p in last.encoder.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for p in plain.parameters())
    batch = _batch()
    a, b = last.training_loss(batch).loss, plain.training_loss(batch).loss
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(last.named_parameters(), plain.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    keys = set(last.state_dict())
    assert keys == set(plain.state_dict())  # checkpoints are interchangeable


def test_compile_compiles_encoder_and_heads_in_place(monkeypatch) -> None:
    """``compile=True`` at fit start: same loss, same state-dict keys (checkpoints load).

    The test compiles with the ``aot_eager`` backend (graph capture and AOT autograd, no
    C++ code generation, which takes about a minute per network on a 2-core CPU) unless
    ``CONTRASEG_COMPILE_BACKEND`` names another (``benchmarks/gpu_check.sh``: inductor).
    """
    backend = os.environ.get("CONTRASEG_COMPILE_BACKEND", "aot_eager")
    compiled: list[str] = []
    original = nn.Module.compile

    def compile_cheaply(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        compiled.append(type(self).__name__)
        original(self, *args, backend=backend, **kwargs)

    monkeypatch.setattr(nn.Module, "compile", compile_cheaply)
    model, reference = _model(compile=True), _model(compile=False)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    model.trainer = trainer  # hooks read it; fitting itself is covered by the config tests
    model.on_fit_start()
    assert compiled == ["TimmEncoder", "MLPHead"]  # encoder and projector; evaluators are not
    batch = _batch(1)
    a, b = model.training_loss(batch).loss, reference.training_loss(batch).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert set(model.state_dict()) == set(reference.state_dict())
    model.on_fit_start()  # a second fit (e.g. validate then fit) does not compile again
    assert len(compiled) == len(model.compile_targets())
