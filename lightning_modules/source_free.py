"""Source-free domain-adaptive segmentation with negative learning (PR-SFDA; Luo et al. 2021).

arXiv 2106.12123's abstract names the method's two phases; its code, thresholds and
schedule are not public.  This is **contraseg's reading**, each unknown an argument, with
the building blocks of the papers it cites (formulas:
:mod:`contraseg.lightning_modules.losses.source_free`):

* the run starts from a **source model** (``init_checkpoint``: the whole network of a
  fine-tuning checkpoint trained on the source, head included) and sees only **unlabeled
  target images**: a training batch holding a mask or source data is an error;
* **phase 1** (epochs ``[0, max_squares_epochs)``), confidence regularisation: maximum
  squares on the target predictions (Chen et al. 2019), optionally image-wise weighted;
* **phase 2**, noise-aware pseudo-label learning, in ``rounds`` of ``round_epochs`` epochs.
  At the start of each round the current network is copied into a frozen pseudo-label
  model (``teacher``), which labels every target training image once to set the
  class-balanced confidence thresholds (the top ``pseudo_proportion`` of each class's
  pixels, ``+ proportion_step`` per round: LDBE's 0.1 and 0.05).  On each batch the teacher
  gives positive labels (confident pixels: cross-entropy) and complementary labels (a class
  ranked in the less likely half: ``-log(1 - p_k)``, on pixels above ``1 / C`` confidence as
  NLNL's SelNL).  Epochs after the last round keep the last round's teacher.

The teacher and the thresholds are in the checkpoint (state dict and buffers), and the
round in progress is a buffer, so a killed run resumes in its round with its labels.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from contraseg.lightning_modules.components.checkpoint_init import REPORT_KEYS, read_state_dict
from contraseg.lightning_modules.losses.source_free import (
    class_balanced_thresholds,
    complementary_labels,
    confidence_histogram,
    max_squares_loss,
    negative_learning_loss,
    positive_learning_loss,
    pseudo_labels,
)
from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune
from contraseg.lightning_modules.task import TaskLoss
from contraseg.seeding import mix_seed, run_seed

__all__ = ["SourceFreeAdaptation"]


class SourceFreeAdaptation(SegmentationFineTune):
    """PR-SFDA: max-squares, then positive + negative learning on refreshed pseudo labels.

    Args:
        max_squares_epochs: Length of phase 1 in epochs (0: start with pseudo labels).
        image_weighting: Max-squares with Chen et al.'s image-wise class weighting.
        iw_ratio: Its exponent (0.2 in the official MaxSquare code).
        rounds: Pseudo-label rounds of phase 2.
        round_epochs: Epochs per round.
        pseudo_proportion: Share of each class's target pixels kept as positive labels in
            the first round (LDBE's 0.1; not from the paper).
        proportion_step: Added per round (LDBE's 0.05; not from the paper).
        positive_weight: Weight of the positive-learning cross-entropy.
        negative_weight: Weight of the negative-learning term.
        negative_min_rank: Complementary labels are drawn among the classes ranked at least
            this (0 = most likely); ``null``: ``C // 2``, the less likely half.
        negative_min_confidence: Pixels with a complementary label need this teacher
            confidence; ``null``: ``1 / C`` (SelNL).
        threshold_images: Target training images the teacher labels to set the thresholds
            (``null``: all).
        **kwargs: :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune`
            arguments; ``init_checkpoint`` (the source model) is required.
    """

    NON_NEGATIVE = (*SegmentationFineTune.NON_NEGATIVE, "max_squares_epochs", "positive_weight",
                    "negative_weight", "proportion_step")  # fmt: skip

    def __init__(
        self,
        max_squares_epochs: int = 1,
        image_weighting: bool = False,
        iw_ratio: float = 0.2,
        rounds: int = 2,
        round_epochs: int = 1,
        pseudo_proportion: float = 0.1,
        proportion_step: float = 0.05,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        negative_min_rank: int | None = None,
        negative_min_confidence: float | None = None,
        threshold_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("init_checkpoint") is None:
            raise ValueError("model.init_checkpoint is required: source-free adaptation starts "
                             "from a source model's checkpoint (a fine-tuning run on the source)")
        if rounds < 1 or round_epochs < 1:
            raise ValueError(f"model.rounds and model.round_epochs must be >= 1, got {rounds} "
                             f"and {round_epochs}")  # fmt: skip
        if not 0 < pseudo_proportion <= 1:
            raise ValueError(f"model.pseudo_proportion must be in (0, 1], got {pseudo_proportion}")
        super().__init__(**kwargs)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """Smoke tests keep the source checkpoint the test writes (``init_checkpoint``)."""
        args = super().tiny_test_args(init_args)
        if "--model.init_args.init_checkpoint" in args:
            at = args.index("--model.init_args.init_checkpoint")
            del args[at:at + 2]
        return args

    def configure_models(self) -> None:
        """The network, its frozen copy (the pseudo-label model) and the round's state."""
        super().configure_models()
        self.teacher = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("thresholds", torch.full((self.hparams.num_classes,), 2.0))
        self.register_buffer("current_round", torch.tensor(-1))

    def compile_targets(self) -> list[torch.nn.Module]:  # noqa: D102
        return [m for m in super().compile_targets() if m is not self.teacher]

    def load_checkpoint(self, path: str) -> dict[str, list[str]]:
        """The source model: every ``net.*`` tensor (encoder, decoder and head), strictly."""
        state = read_state_dict(path)
        net = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        report: dict[str, list[str]] = {key: [] for key in REPORT_KEYS}
        report["prefix"] = ["net."]
        own = self.net.state_dict()
        for name, tensor in own.items():
            if name not in net:
                report["missing"].append(name)
            elif net[name].shape != tensor.shape:
                report["shape_mismatch"].append(name)
            else:
                report["loaded"].append(name)
        if report["missing"] or report["shape_mismatch"] or not report["loaded"]:
            raise ValueError(
                f"model.init_checkpoint {path} is not a source model of this network: "
                f"{len(report['missing'])} tensors missing (e.g. {report['missing'][:3]}), "
                f"{len(report['shape_mismatch'])} of another shape "
                f"(e.g. {report['shape_mismatch'][:3]}); expected a SegmentationFineTune "
                "checkpoint with the same architecture, encoder and classes")  # fmt: skip
        self.net.load_state_dict({k: net[k] for k in own})
        self.teacher.load_state_dict(self.net.state_dict())
        return report

    # ------------------------------------------------------------------ rounds
    def round_of(self, epoch: int) -> int:
        """Round of ``epoch`` (``-1``: phase 1; epochs after the last round stay in it)."""
        hp = self.hparams
        if epoch < hp.max_squares_epochs:
            return -1
        return min((epoch - hp.max_squares_epochs) // hp.round_epochs, hp.rounds - 1)

    def on_fit_start(self) -> None:
        """Refuse data modules that feed source data or labels."""
        super().on_fit_start()
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "source_free", True) is False:
            raise ValueError(f"source-free adaptation got data streams {dm.streams}: set "
                             "data.init_args.streams [target] (no source, no target labels)")

    def on_train_epoch_start(self) -> None:
        """At a round's first epoch: copy the network into the teacher, set its thresholds."""
        r = self.round_of(self.current_epoch)
        if r < 0 or r == int(self.current_round):
            return
        self.teacher.load_state_dict(self.net.state_dict())
        proportion = min(1.0, self.hparams.pseudo_proportion + r * self.hparams.proportion_step)
        self.thresholds.copy_(self.teacher_thresholds(proportion))
        self.current_round.fill_(r)
        rank_zero_info(f"PR-SFDA round {r}: pseudo-label thresholds per class "
                       f"{[round(float(t), 3) for t in self.thresholds]}")  # fmt: skip

    def _teacher_probs(self, images: Tensor) -> Tensor:
        """Softmax of the frozen teacher (eval mode), padded or windowed as evaluation."""
        was = self.teacher.training
        self.teacher.eval()
        try:
            with torch.no_grad():
                logits = self._infer(images, lambda x: self.teacher(self._with_attention(x)))
                return logits.float().softmax(1)
        finally:
            self.teacher.train(was)

    def teacher_thresholds(self, proportion: float) -> Tensor:
        """Class-balanced thresholds of the teacher over the target training images.

        The images come from the data module's ``target_images()`` (unlabeled, normalised,
        whole images); without one (a plain segmentation data module), from nothing:
        ``ValueError``.
        """
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "target_images"):
            raise ValueError("source-free adaptation needs contraseg.datamodules."
                             "SourceTargetDataModule (its target_images() set the thresholds)")
        histogram, seen = None, 0
        limit = self.hparams.threshold_images
        for batch in dm.target_images():
            if "mask" in batch:
                raise ValueError("target_images() returned masks: source-free adaptation "
                                 "must not see target labels")  # fmt: skip
            probs = self._teacher_probs(batch["image"].to(self.device))
            conf, pred = probs.max(1)
            counts = confidence_histogram(conf, pred, self.hparams.num_classes)
            histogram = counts if histogram is None else histogram + counts
            seen += probs.shape[0]
            if limit is not None and seen >= limit:
                break
        if histogram is None:
            raise ValueError("target_images() yielded no image")
        return class_balanced_thresholds(histogram, proportion).to(self.device)

    # ------------------------------------------------------------------ loss
    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Phase 1: max-squares; phase 2: positive + negative learning from the teacher."""
        if "mask" in batch or "source" in batch:
            raise ValueError("source-free adaptation trains on unlabeled target images only; "
                             f"the batch holds {sorted(batch)}: use SourceTargetDataModule with "
                             "streams [target]")  # fmt: skip
        hp = self.hparams
        images = batch["image"]
        logits = self(images)
        if self.round_of(self.current_epoch) < 0:
            loss = max_squares_loss(logits, hp.image_weighting, hp.iw_ratio)
            return TaskLoss(loss, {"max_squares": loss.detach()})
        probs = self._teacher_probs(images)
        labels = pseudo_labels(probs, self.thresholds, self.ignore_index)
        c = probs.shape[1]
        g = torch.Generator(device=probs.device)
        g.manual_seed(mix_seed(run_seed(), self.global_step, 7))
        rank = c // 2 if hp.negative_min_rank is None else hp.negative_min_rank
        conf = 1.0 / c if hp.negative_min_confidence is None else hp.negative_min_confidence
        complementary = complementary_labels(probs, rank, g, conf, self.ignore_index)
        positive = positive_learning_loss(logits, labels, self.ignore_index)
        negative = negative_learning_loss(logits, complementary, self.ignore_index)
        loss = hp.positive_weight * positive + hp.negative_weight * negative
        kept = (labels != self.ignore_index).float().mean()
        return TaskLoss(loss, {"positive": positive.detach(), "negative": negative.detach(),
                               "pseudo_labelled": kept})  # fmt: skip
