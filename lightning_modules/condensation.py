"""Dataset condensation: DC, DCC and DSAC (Lee et al., ICML 2022), and the selection baselines.

The learnable parameter is the synthetic set ``images`` (``ipc`` per class), initialised
from random real images of each class (``init: real``; ``herding`` or ``noise`` as options)
and optimised by SGD (lr 0.1, momentum 0.5).  One training **epoch is one outer
iteration**, written out in :meth:`DatasetCondensation.training_step` (manual optimisation):

1. the matching network (``ConvNet``) is re-initialised at random;
2. for ``inner`` steps: draw ``batch_real`` real images of every class; the matching loss
   (:mod:`contraseg.lightning_modules.losses.gradient_matching`) is DC per class, or DCC once over
   all classes when ``method: dcc`` and ``outer >= outer_warmup or inner_step >= inner_warmup``
   (the official condition); one SGD step on the images; then, except after the last
   inner step, ``net_steps`` epochs of the network on the synthetic set (SGD lr 0.01);
3. with ``dsa: true`` (DSAC = DCC + DSA), the real and synthetic images of a class share
   one siamese augmentation draw (:mod:`~contraseg.lightning_modules.components.siamese_augment`).

``(inner, net_steps)`` default to the official ``get_loops(ipc)`` (DCC ``utils.py:428-446``:
ipc 1 -> (10, 5), 10 -> (10, 50), 20 -> (20, 25), 30 -> (30, 20), 40 -> (40, 15), 50 -> (50,
10)).  ``method: none`` keeps the initial selection (random or herding baselines).  At the
outer iterations in ``eval_iterations`` (the paper: 0, 500, 1000) fresh networks are trained
on the set and tested on the real test split (:mod:`~contraseg.lightning_modules.evaluators.
synthetic_set`); each evaluation writes the set to ``<run>/condensed/iter_XXXXX.pt``, which
``data.train_set`` of every classification DataModule loads.  Checkpoints hold the set,
its optimiser's momentum, the epoch (outer iteration) and the evaluations so far.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn

from contraseg.lightning_modules.components.class_gradients import (
    MODES,
    class_gradients,
    mean_gradient,
)
from contraseg.lightning_modules.components.convnet import ConvNet, reset_parameters
from contraseg.lightning_modules.components.herding import herding
from contraseg.lightning_modules.components.siamese_augment import SiameseAugment
from contraseg.lightning_modules.evaluators.synthetic_set import SyntheticSetEvaluator, train_on_set
from contraseg.lightning_modules.losses.gradient_matching import dc_loss, dcc_loss
from contraseg.lightning_modules.task import BaseTask
from contraseg.seeding import mix_seed, run_seed

__all__ = ["OFFICIAL_LOOPS", "DatasetCondensation", "official_loops"]

METHODS = ("dc", "dcc", "none")
INITS = ("real", "herding", "noise")
# DCC utils.py:428-446 (get_loops): ipc -> (inner_loop, T)
OFFICIAL_LOOPS = {1: (10, 5), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15),
                  50: (50, 10)}  # fmt: skip


def official_loops(ipc: int) -> tuple[int, int]:
    """``(inner steps, network epochs per step)`` of the official code for ``ipc``."""
    if ipc not in OFFICIAL_LOOPS:
        raise ValueError(f"no official loop counts for ipc {ipc} (defined for "
                         f"{sorted(OFFICIAL_LOOPS)}): set model.inner_loop, net_steps")  # fmt: skip
    return OFFICIAL_LOOPS[ipc]


class DatasetCondensation(BaseTask):
    """DC / DCC / DSAC condensation of a labelled data set into ``ipc`` images per class.

    Args:
        method: ``dc`` (per-class matching), ``dcc`` (contrastive, after the warm-up) or
            ``none`` (keep the initial selection: the random / herding baselines).
        dsa: Differentiable siamese augmentation (``dcc`` + ``dsa`` = DSAC).
        dsa_strategy: DSA families.
        ipc: Synthetic images per class.
        num_classes: Classes (linked from the data).
        image_size: Side of the images (checked against the data at fit start).
        init: ``real`` (random real images), ``herding`` or ``noise`` (Gaussian).
        lr_images: SGD learning rate of the images.
        momentum_images: SGD momentum of the images.
        lr_net: SGD learning rate of the matching network.
        inner_loop: Inner steps per outer iteration (``None``: official for ``ipc``).
        net_steps: Network epochs on the synthetic set per inner step (``None``: official).
        outer_warmup: DCC from this outer iteration on (official 250) ...
        inner_warmup: ... or from this inner step on (official 10).
        batch_real: Real images per class and inner step (official 256).
        batch_train: Batch of the network updates on the synthetic set (official 256).
        net_width: ConvNet width.
        net_depth: ConvNet depth.
        net_norm: ConvNet norm (``instancenorm``, ``batchnorm``, ...).
        per_class: Per-class gradients of DC with ``vmap`` (``torch.func``) or a ``loop``
            (default: the loop, measured faster on CPU: ``benchmarks/condensation.py``).
        eval_iterations: Outer iterations to evaluate at (those past ``max_epochs`` are
            dropped; ``max_epochs`` itself is evaluated at the end).
        eval_nets: Fresh networks per evaluation (the paper: 20).
        eval_epochs: Their epochs (``None``: 1000 with augmentation, 300 without).
        eval_lr: Their initial learning rate.
        eval_batch_size: Their batch size.
        eval_augment: Train them with DSA (``None``: when ``dsa``).
        herding_epochs: Epochs of the feature network of ``init: herding``.
        velocity_every: Epochs between kernel-velocity measurements of the first
            evaluation network (0: none).
        velocity_probe: Test images of the kernel-velocity probe.
        optimizer: Optimiser of the :class:`BaseTask` contract (the condensation loops use
            their own SGD optimisers on images and networks).
        **kwargs: :class:`~contraseg.lightning_modules.task.BaseTask` arguments (``in_channels``).
    """

    POSITIVE = (*BaseTask.POSITIVE, "lr_images", "lr_net", "eval_lr", "ipc", "batch_real",
                "batch_train", "eval_nets", "eval_batch_size")  # fmt: skip
    NON_NEGATIVE = (*BaseTask.NON_NEGATIVE, "momentum_images", "outer_warmup",
                    "inner_warmup", "herding_epochs", "velocity_every")  # fmt: skip

    def __init__(self, method: str = "dcc", dsa: bool = False,
                 dsa_strategy: str = "color_crop_cutout_flip_scale_rotate", ipc: int = 10,
                 num_classes: int = 10, image_size: int = 32, init: str = "real",
                 lr_images: float = 0.1, momentum_images: float = 0.5, lr_net: float = 0.01,
                 inner_loop: int | None = None, net_steps: int | None = None,
                 outer_warmup: int = 250, inner_warmup: int = 10, batch_real: int = 256,
                 batch_train: int = 256, net_width: int = 128, net_depth: int = 3,
                 net_norm: str = "instancenorm", per_class: str = "loop",
                 eval_iterations: list[int] | None = None, eval_nets: int = 20,
                 eval_epochs: int | None = None, eval_lr: float = 0.01,
                 eval_batch_size: int = 256, eval_augment: bool | None = None,
                 herding_epochs: int = 5, velocity_every: int = 0, velocity_probe: int = 32,
                 optimizer: str = "sgd", **kwargs: Any) -> None:  # fmt: skip
        if method not in METHODS:
            raise ValueError(f"model.method must be one of {METHODS}, got {method!r}")
        if init not in INITS:
            raise ValueError(f"model.init must be one of {INITS}, got {init!r}")
        if per_class not in MODES:
            raise ValueError(f"model.per_class must be one of {MODES}, got {per_class!r}")
        if (inner_loop is None) != (net_steps is None):
            raise ValueError("model.inner_loop and model.net_steps go together (or both null: "
                             "the official counts for ipc)")  # fmt: skip
        self.loops = (inner_loop, net_steps) if inner_loop is not None else official_loops(ipc)
        if self.loops[0] < 1 or self.loops[1] < 0:
            raise ValueError(f"model.inner_loop must be >= 1 and net_steps >= 0, got {self.loops}")
        super().__init__(optimizer=optimizer, **kwargs)
        self.automatic_optimization = False
        self.eval_history: dict[int, dict[str, Any]] = {}

    # ----------------------------------------------------------------- construction
    def configure_models(self) -> None:
        """The matching ConvNet (``self.encoder``) and the synthetic set."""
        hp = self.hparams
        self.encoder = self.make_net()
        shape = (hp.num_classes * hp.ipc, hp.in_channels, hp.image_size, hp.image_size)
        self.images = nn.Parameter(torch.randn(shape))
        labels = torch.arange(hp.num_classes).repeat_interleave(hp.ipc)
        self.register_buffer("syn_labels", labels, persistent=True)
        self.dsa = SiameseAugment(hp.dsa_strategy) if hp.dsa else None
        augment = hp.dsa if hp.eval_augment is None else hp.eval_augment
        self.eval_dsa = (self.dsa or SiameseAugment(hp.dsa_strategy)) if augment else None
        self.evaluator = SyntheticSetEvaluator(
            n_nets=hp.eval_nets, epochs=hp.eval_epochs, lr=hp.eval_lr,
            batch_size=hp.eval_batch_size, velocity_every=hp.velocity_every)  # fmt: skip

    def make_net(self) -> ConvNet:
        """A freshly initialised ConvNet (torch's RNG) on the task's device."""
        hp = self.hparams
        net = ConvNet(hp.in_channels, hp.num_classes, hp.image_size, hp.net_width,
                      hp.net_depth, hp.net_norm)  # fmt: skip
        return net.to(self.images.device) if hasattr(self, "images") else net

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return ["--model.init_args.net_width", "8", "--model.init_args.batch_real", "4",
                "--model.init_args.ipc", "1",
                "--model.init_args.inner_loop", "2", "--model.init_args.net_steps", "1",
                "--model.init_args.eval_nets", "1", "--model.init_args.eval_epochs", "1",
                "--model.init_args.herding_epochs", "1"]  # fmt: skip

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD on the synthetic images (official: lr 0.1, momentum 0.5)."""
        hp = self.hparams
        return torch.optim.SGD([self.images], lr=hp.lr_images, momentum=hp.momentum_images)

    # ----------------------------------------------------------------- fit start
    def on_fit_start(self) -> None:
        """Check the data against the set's shape; initialise it on a fresh (not resumed) run."""
        super().on_fit_start()
        dm = self.trainer.datamodule
        hp = self.hparams
        want = (hp.num_classes, hp.in_channels, hp.image_size)
        have = (dm.num_classes, dm.in_channels, dm.image_size)
        if want != have:
            raise ValueError(f"model (classes, channels, image_size) {want} differ from the "
                             f"data's {have}: set model.init_args.image_size")  # fmt: skip
        self.bank = dm.bank.to(self.device)
        if self.trainer.ckpt_path is None:
            with torch.random.fork_rng(devices=self._rng_devices()):
                torch.manual_seed(mix_seed(run_seed(), 0x1A17))
                self.images.data.copy_(self.initial_images())
            rank_zero_info(f"condensation: {hp.init} initialisation of {len(self.images)} images")
        # a resumed run reports the evaluations made before the interruption too (as in order)
        for iteration in sorted(self.eval_history):
            self._publish(self.eval_metrics(iteration, self.eval_history[iteration]))

    def _rng_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    @torch.no_grad()
    def initial_images(self) -> Tensor:
        """``ipc`` images per class: random real images, a herding selection, or noise."""
        hp = self.hparams
        bank = self.bank
        if hp.init == "noise":
            return torch.randn_like(self.images)
        small = [c for c in range(hp.num_classes) if int(bank.counts[c]) < hp.ipc]
        if small:
            raise ValueError(f"classes {small} have fewer than ipc={hp.ipc} training images")
        if hp.init == "real":
            picks = [bank.of_class(c)[torch.randperm(int(bank.counts[c]), device=self.device)
                     [: hp.ipc]] for c in range(hp.num_classes)]  # fmt: skip
            return bank.images[torch.cat(picks)]
        net = self.make_net()  # herding: features of a ConvNet trained on the real set
        with torch.enable_grad():
            train_on_set(net, bank.images, bank.labels, max(hp.herding_epochs - 1, 0))
        net.eval()
        feats = torch.cat([net.embed(x) for x in bank.images.split(512)])
        picks = [bank.of_class(c)[herding(feats[bank.of_class(c)], hp.ipc)]
                 for c in range(hp.num_classes)]  # fmt: skip
        return bank.images[torch.cat(picks)]

    # ----------------------------------------------------------------- one outer iteration
    def use_contrast(self, outer: int, inner: int) -> bool:
        """The official switch: DCC when ``outer >= outer_warmup or inner >= inner_warmup``."""
        hp = self.hparams
        return hp.method == "dcc" and (outer >= hp.outer_warmup or inner >= hp.inner_warmup)

    def matching_loss(self, net: nn.Module, contrast: bool) -> Tensor:
        """DC or DCC loss of one inner step (fresh real batches of every class)."""
        hp = self.hparams
        real, real_y = self.bank.per_class(hp.batch_real)
        syn = self.images.view(hp.num_classes, hp.ipc, *self.images.shape[1:])
        syn_y = self.syn_labels.view(hp.num_classes, hp.ipc)
        if self.dsa is not None:  # one draw per class, shared by its real and synthetic images
            params = self.dsa.sample(hp.num_classes, real.shape[-2:], self.device)
            real = self.dsa.apply(real.flatten(0, 1), params, real_y.flatten()).view_as(real)
            syn = self.dsa.apply(syn.flatten(0, 1), params, syn_y.flatten()).view_as(syn)
        if contrast:
            g_real = mean_gradient(net, real.flatten(0, 1), real_y.flatten())
            g_syn = mean_gradient(net, syn.flatten(0, 1), syn_y.flatten(), create_graph=True)
            return dcc_loss(g_syn, g_real)
        g_real = class_gradients(net, real, real_y, mode=hp.per_class)
        g_syn = class_gradients(net, syn, syn_y, create_graph=True, mode=hp.per_class)
        return dc_loss(g_syn, g_real)

    def _freeze_bn(self, net: nn.Module) -> None:
        """BatchNorm nets: statistics from 16 real images per class, then frozen (official)."""
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        net.train()
        with torch.no_grad():
            net(self.bank.per_class(16)[0].flatten(0, 1))
        for m in bns:
            m.eval()

    def _train_net(self, net: nn.Module, opt: torch.optim.Optimizer) -> None:
        """``net_steps`` epochs of the network on the current synthetic set."""
        hp = self.hparams
        data, labels = self.images.detach(), self.syn_labels
        net.train()
        for _ in range(self.loops[1]):
            for idx in torch.randperm(len(data), device=data.device).split(hp.batch_train):
                x = data[idx] if self.dsa is None else self.dsa(data[idx])
                loss = F.cross_entropy(net(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One outer iteration (the epoch): ``inner_loop`` image updates between net updates."""
        hp = self.hparams
        if hp.method == "none":
            return
        outer = self.current_epoch
        net = self.encoder
        reset_parameters(net)
        net_opt = torch.optim.SGD(net.parameters(), lr=hp.lr_net)
        opt = self.optimizers()
        inner = self.loops[0]
        losses, contrast = [], False
        for step in range(inner):
            self._freeze_bn(net)
            contrast = self.use_contrast(outer, step)
            loss = self.matching_loss(net, contrast)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            losses.append(loss.detach())
            if step < inner - 1:
                self._train_net(net, net_opt)
        self.log("train/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=1)
        self.log("train/contrast", float(contrast), batch_size=1)

    # ----------------------------------------------------------------- evaluation
    def eval_points(self) -> list[int]:
        """The requested evaluation iterations that this run reaches."""
        its = self.hparams.eval_iterations
        its = [0, 500, 1000] if its is None else its
        last = self.trainer.max_epochs
        return sorted({int(i) for i in its if 0 <= i <= last})

    def on_train_epoch_start(self) -> None:
        """Evaluate the set of outer iteration ``epoch`` before updating it."""
        epoch = self.current_epoch
        if epoch in self.eval_points() and epoch not in self.eval_history:
            self.evaluate(epoch)

    def on_fit_end(self) -> None:
        """Evaluate the final set (outer iteration ``max_epochs``) if requested."""
        last = self.trainer.max_epochs
        if last in self.eval_points() and last not in self.eval_history:
            self.evaluate(last)

    def evaluate(self, iteration: int) -> dict[str, Any]:
        """Train fresh networks on the set, test them; log, keep and save the result."""
        dm = self.trainer.datamodule
        images, labels = self.images.detach().clone(), self.syn_labels.clone()
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(mix_seed(run_seed(), 0xE7A1, iteration))
            probe, test = None, dm.test_dataloader()
            if self.hparams.velocity_every:
                probe = next(iter(test))["image"][: self.hparams.velocity_probe].to(self.device)
            with torch.enable_grad(), torch.inference_mode(False):
                res = self.evaluator.evaluate(
                    self.make_net, images, labels, test, augment=self.eval_dsa,
                    probe=probe, desc=f"evaluating outer iteration {iteration}")  # fmt: skip
        self.eval_history[iteration] = dict(res)
        metrics = self.eval_metrics(iteration, res)
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        self._publish(metrics)
        rank_zero_info(f"condensation iteration {iteration}: test accuracy "
                       f"{100 * res['accuracy']:.2f} ± {100 * res['accuracy_std']:.2f} % "
                       f"({len(res['accuracies'])} nets, {res['epochs']} epochs)")  # fmt: skip
        self.save_condensed(iteration)
        return res

    def _publish(self, metrics: dict[str, float]) -> None:
        """Metrics into ``trainer.callback_metrics`` (what checkpoints and the tables read)."""
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    @staticmethod
    def eval_metrics(iteration: int, res: dict[str, Any]) -> dict[str, float]:
        """The logged metrics of the evaluation at outer iteration ``iteration``."""
        metrics = {"val/accuracy": res["accuracy"], "val/accuracy_std": res["accuracy_std"],
                   f"val/accuracy@{iteration}": res["accuracy"],
                   "val/train_accuracy": res["train_acc"], "val/iteration": float(iteration)}
        if res["velocity"]:
            curve = [v for _, v in res["velocity"]]
            # x 1e3: kernel distance per 1000 epochs (the per-epoch values are ~1e-4)
            metrics["val/kernel_velocity_x1e3"] = 1e3 * sum(curve) / len(curve)
        return metrics

    @rank_zero_only
    def save_condensed(self, iteration: int) -> Path:
        """Write the set as ``<default_root_dir>/condensed/iter_XXXXX.pt`` (and ``last.pt``)."""
        dm = self.trainer.datamodule
        folder = Path(self.trainer.default_root_dir) / "condensed"
        folder.mkdir(parents=True, exist_ok=True)
        res = self.eval_history.get(iteration, {})
        obj = {"images": self.images.detach().cpu().clone(), "labels": self.syn_labels.cpu(),
               "mean": dm.mean, "std": dm.std, "classes": dm.classes,
               "num_classes": self.hparams.num_classes, "ipc": self.hparams.ipc,
               "iteration": iteration, "method": self.hparams.method, "dsa": self.hparams.dsa,
               "accuracy": res.get("accuracy"), "velocity": res.get("velocity")}  # fmt: skip
        path = folder / f"iter_{iteration:05d}.pt"
        torch.save(obj, path)
        torch.save(obj, folder / "last.pt")
        return path

    # ----------------------------------------------------------------- state
    def task_state(self) -> dict[str, Any]:  # noqa: D102
        return {"eval_history": {int(k): v for k, v in self.eval_history.items()}}

    def load_task_state(self, state: dict[str, Any]) -> None:  # noqa: D102
        self.eval_history = {int(k): v for k, v in state.get("eval_history", {}).items()}

    def embed(self, images: Tensor) -> Tensor:
        """Features of the current matching network."""
        return self.encoder.embed(images)
