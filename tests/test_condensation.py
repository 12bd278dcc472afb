"""Dataset condensation (DC / DCC / DSAC): losses, gradients, DSA, selection, NTK, the task."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from harness_runs import fresh_run, served_run
from torch import nn

from contraseg.datamodules.condensation import ClassBank
from contraseg.datamodules.datasets.condensed import CondensedSet
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.lightning_modules.components.class_gradients import class_gradients, mean_gradient
from contraseg.lightning_modules.components.convnet import ConvNet, reset_parameters
from contraseg.lightning_modules.components.herding import herding
from contraseg.lightning_modules.components.siamese_augment import SiameseAugment
from contraseg.lightning_modules.condensation import DatasetCondensation, official_loops
from contraseg.lightning_modules.evaluators.kernel_velocity import (
    empirical_ntk,
    kernel_distance,
    kernel_velocity,
)
from contraseg.lightning_modules.losses.gradient_matching import (
    dc_loss,
    dcc_loss,
    gradient_distance,
    layer_distance,
)

REPO = Path(__file__).resolve().parents[1]


def _naive_distance(gs: list[torch.Tensor], gr: list[torch.Tensor]) -> float:
    """The official distance_wb written with Python loops over rows, in float64."""
    total = 0.0
    for a, b in zip(gs, gr, strict=True):
        if a.dim() == 1:
            continue
        a2 = a.detach().double().reshape(a.shape[0], -1)
        b2 = b.detach().double().reshape(b.shape[0], -1)
        for i in range(a2.shape[0]):
            dot = sum(float(x) * float(y) for x, y in zip(a2[i], b2[i], strict=True))
            na = math.sqrt(sum(float(x) ** 2 for x in a2[i]))
            nb = math.sqrt(sum(float(y) ** 2 for y in b2[i]))
            total += 1 - dot / (na * nb + 1e-6)
    return total


def test_gradient_distance_equals_hand_computation_on_a_two_layer_net() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))  # no all-zero rows
    x1, y1 = torch.randn(5, 4), torch.randint(0, 2, (5,))
    x2, y2 = torch.randn(7, 4), torch.randint(0, 2, (7,))
    g1 = torch.autograd.grad(F.cross_entropy(net(x1), y1), list(net.parameters()))
    g2 = torch.autograd.grad(F.cross_entropy(net(x2), y2), list(net.parameters()))
    d = gradient_distance(list(g1), list(g2))
    assert float(d) == pytest.approx(_naive_distance(list(g1), list(g2)), rel=1e-5)
    # biases contribute nothing; a gradient matches itself (up to eps; an all-zero row, e.g.
    # of a dead ReLU unit, counts 1 as in the official code)
    assert float(layer_distance(g1[1], g2[1])) == 0.0
    rows = torch.cat([g.reshape(g.shape[0], -1).norm(dim=1) ** 2 for g in g1 if g.dim() > 1])
    closed = float((1e-6 / (rows + 1e-6)).sum())  # 1 - n^2 / (n^2 + eps) per row
    assert float(gradient_distance(list(g1), list(g1))) == pytest.approx(closed, rel=1e-3)
    # a 2 x 2 weight by hand: rows (1, 0) vs (1, 1) -> 1 - 1/sqrt 2; (0, 2) vs (0, -1) -> 2
    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    assert float(layer_distance(a, b)) == pytest.approx(1 - 1 / math.sqrt(2) + 2, abs=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        layer_distance(a, b[:1])


def _toy(classes: int = 3, n: int = 4, ipc: int = 2, size: int = 8) -> tuple:
    torch.manual_seed(1)
    net = ConvNet(3, classes, size, width=4, depth=2)
    real = torch.randn(classes, n, 3, size, size)
    real_y = torch.arange(classes).view(-1, 1).expand(classes, n)
    syn = torch.randn(classes, ipc, 3, size, size, requires_grad=True)
    syn_y = torch.arange(classes).view(-1, 1).expand(classes, ipc)
    return net, real, real_y, syn, syn_y


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_dc_and_dcc_equal_naive_per_class_loops(mode: str) -> None:
    net, real, real_y, syn, syn_y = _toy()
    params = list(net.parameters())
    naive_real = [torch.autograd.grad(F.cross_entropy(net(real[c]), real_y[c]), params)
                  for c in range(len(real))]  # fmt: skip
    naive_syn = [torch.autograd.grad(F.cross_entropy(net(syn[c]), syn_y[c]), params,
                                     create_graph=True) for c in range(len(syn))]  # fmt: skip
    g_real = class_gradients(net, real, real_y, mode=mode)
    g_syn = class_gradients(net, syn, syn_y, create_graph=True, mode=mode)
    for k in range(len(params)):
        for c in range(len(real)):
            torch.testing.assert_close(g_real[k][c], naive_real[c][k], atol=1e-6, rtol=1e-5)
    dc = dc_loss(g_syn, g_real)
    naive_dc = sum(_naive_distance(list(naive_syn[c]), list(naive_real[c])) for c in range(3))
    assert float(dc.detach()) == pytest.approx(naive_dc, rel=1e-4)
    # the loss reaches the images with the naive loop's gradient
    (mine,) = torch.autograd.grad(dc, syn)
    ref = sum(gradient_distance(list(naive_syn[c]), [g.detach() for g in naive_real[c]])
              for c in range(3))  # fmt: skip
    (theirs,) = torch.autograd.grad(ref, syn)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    # DCC: the official accumulation (sum_c g_c / C) vs one backward of the averaged loss
    official_real = [sum(naive_real[c][k] / 3 for c in range(3)) for k in range(len(params))]
    one_pass = mean_gradient(net, real.flatten(0, 1), real_y.flatten())
    for a, b in zip(official_real, one_pass, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    g_all = torch.autograd.grad(F.cross_entropy(net(syn.flatten(0, 1)), syn_y.flatten()), params,
                                create_graph=True)  # fmt: skip
    dcc = dcc_loss(mean_gradient(net, syn.flatten(0, 1), syn_y.flatten(), True), g_real)
    naive_dcc = _naive_distance(list(g_all), official_real)
    assert float(dcc.detach()) == pytest.approx(naive_dcc, rel=1e-4)


def test_dcc_differs_from_dc_only_when_class_gradients_differ_in_direction() -> None:
    real = [torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])]  # 2 classes, one (1, 2) weight
    syn = [torch.tensor([[[2.0, 0.0]], [[0.0, 0.5]]])]  # each class parallel, other scales
    assert float(dc_loss(syn, real)) == pytest.approx(0.0, abs=1e-5)
    syn_mean = [syn[0].mean(0)]  # the gradient of the mean CE is the mean of class gradients
    dcc = float(dcc_loss(syn_mean, real))
    cos = (1 * 0.5 + 0.25 * 0.5) / (math.hypot(1, 0.25) * math.hypot(0.5, 0.5))
    assert dcc == pytest.approx(1 - cos, rel=1e-5) and dcc > 0.1
    # classes sharing one direction: scale differences no longer matter, DCC = DC = 0
    real_shared = [torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]]])]
    syn_shared = [torch.tensor([[[3.0, 3.0]], [[0.5, 0.5]]])]
    assert float(dc_loss(syn_shared, real_shared)) == pytest.approx(0.0, abs=1e-5)
    assert float(dcc_loss([syn_shared[0].mean(0)], real_shared)) == pytest.approx(0.0, abs=1e-5)


def test_warmup_switch_at_the_official_thresholds_and_loop_counts() -> None:
    task = DatasetCondensation(method="dcc", ipc=1, num_classes=3, image_size=8, net_width=4)
    assert task.hparams.outer_warmup == 250 and task.hparams.inner_warmup == 10
    assert not task.use_contrast(249, 9)
    assert task.use_contrast(250, 0) and task.use_contrast(0, 10) and task.use_contrast(999, 9)
    dc = DatasetCondensation(method="dc", ipc=1, num_classes=3, image_size=8, net_width=4)
    assert not dc.use_contrast(1000, 50)
    assert [official_loops(i) for i in (1, 10, 50)] == [(10, 5), (10, 50), (50, 10)]
    with pytest.raises(ValueError, match="no official loop counts"):
        DatasetCondensation(ipc=3, num_classes=3, image_size=8)
    with pytest.raises(ValueError, match="model.method"):
        DatasetCondensation(method="dm", ipc=1, num_classes=3, image_size=8)


def test_dsa_same_draw_gives_equal_transforms_per_class() -> None:
    dsa = SiameseAugment()
    x = torch.randn(6, 3, 16, 16)
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    a = dsa.apply(x, dsa.sample(3, (16, 16), generator=torch.Generator().manual_seed(5)), group)
    b = dsa.apply(x, dsa.sample(3, (16, 16), generator=torch.Generator().manual_seed(5)), group)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # siamese: a real batch and a synthetic batch of a class share the class's parameters
    for seed in range(20):
        params = dsa.sample(2, (16, 16), generator=torch.Generator().manual_seed(seed))
        img = torch.randn(1, 3, 16, 16)
        real = dsa.apply(img.expand(4, -1, -1, -1), params, torch.tensor([1, 1, 1, 1]))
        syn = dsa.apply(img, params, torch.tensor([1]))
        torch.testing.assert_close(real, syn.expand(4, -1, -1, -1), rtol=0, atol=1e-6)
    # differentiable into the images
    y = x.clone().requires_grad_(True)
    dsa.apply(y, dsa.sample(3, (16, 16)), group).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_dsa_families_follow_the_official_definitions() -> None:
    x = torch.randn(2, 3, 16, 16)
    params = SiameseAugment("crop").sample(2, (16, 16), generator=torch.Generator().manual_seed(0))
    params = params._replace(shift=torch.tensor([[2, -3], [0, 0]]))
    out = SiameseAugment("crop").apply(x, params)
    ref = torch.zeros_like(x[0])
    ref[:, :14, 3:] = x[0, :, 2:, :13]  # out[i, j] = x[i + 2, j - 3], zeros outside
    torch.testing.assert_close(out[0], ref)
    torch.testing.assert_close(out[1], x[1])
    cut = SiameseAugment("cutout")
    p = cut.sample(1, (16, 16))._replace(cutout=torch.tensor([[8, 8]]))
    zeros = (cut.apply(torch.ones(1, 1, 16, 16), p) == 0).sum()
    assert int(zeros) == 64  # an 8 x 8 hole (half the side)
    flip = SiameseAugment("flip")
    p = flip.sample(1, (16, 16))._replace(flip=torch.tensor([0.1]))
    torch.testing.assert_close(flip.apply(x[:1], p), x[:1].flip(3))
    color = SiameseAugment("color")
    p = color.sample(1, (16, 16))._replace(brightness=torch.tensor([0.75]),
                                           saturation=torch.tensor([0.5]),
                                           contrast=torch.tensor([0.5]))  # fmt: skip
    torch.testing.assert_close(color.apply(x[:1], p), x[:1] + 0.25)  # saturation 1, contrast 1
    with pytest.raises(ValueError, match="unknown families"):
        SiameseAugment("color_blur")


def test_class_bank_draws_distinct_images_of_each_class() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0, 0])
    images = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 2, 2).clone()
    bank = ClassBank(images, labels, 3)
    x, y = bank.per_class(5, torch.Generator().manual_seed(0))
    assert x.shape == (3, 2, 1, 2, 2) and torch.equal(y, torch.arange(3).view(3, 1).expand(3, 2))
    for c in range(3):
        picked = x[c, :, 0, 0, 0].long()
        assert (labels[picked] == c).all() and len(set(picked.tolist())) == 2
    with pytest.raises(ValueError, match="no training image"):
        ClassBank(images, labels.clamp(max=1), 3)
    with pytest.raises(ValueError, match="labels in 0..2"):
        ClassBank(images, labels - 1, 3)


def test_herding_matches_a_brute_force_greedy_reference() -> None:
    torch.manual_seed(0)
    f = torch.randn(30, 5)
    mine = herding(f, 6).tolist()
    f64 = f.double()
    mu, chosen = f64.mean(0), []
    for t in range(1, 7):
        best = min((i for i in range(30) if i not in chosen),
                   key=lambda i: float((mu - (f64[chosen].sum(0) + f64[i]) / t).norm()))
        chosen.append(best)
    assert mine == chosen
    with pytest.raises(ValueError, match="cannot select"):
        herding(f, 31)


def test_empirical_ntk_and_kernel_velocity_against_explicit_jacobians() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = torch.randn(5, 3)
    kernel = empirical_ntk(net, probe)
    jac = []
    for i in range(5):
        rows = []
        for k in range(2):
            g = torch.autograd.grad(net(probe[i : i + 1])[0, k], list(net.parameters()))
            rows.append(torch.cat([t.flatten() for t in g]))
        jac.append(torch.stack(rows))
    jac_t = torch.stack(jac).double()  # (N, K, P)
    ref = torch.einsum("nkp,mkp->nm", jac_t, jac_t)
    torch.testing.assert_close(kernel, ref, rtol=1e-5, atol=1e-8)
    assert float(kernel_distance(kernel, 3 * kernel)) == pytest.approx(0.0, abs=1e-12)
    other = kernel + torch.eye(5, dtype=torch.float64)
    d = float(kernel_distance(kernel, other))
    assert d > 0 and kernel_velocity(kernel, other, 4) == pytest.approx(d / 4)
    with pytest.raises(ValueError, match="dt > 0"):
        kernel_velocity(kernel, other, 0)


def test_convnet_matches_the_official_layout() -> None:
    net = ConvNet(3, 10, 32)
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2d"] * 3
    assert net.features[1].num_groups == 128 and net.features[1].affine
    assert net.classifier.in_features == 128 * 4 * 4
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    before = net.classifier.weight.clone()
    reset_parameters(net)
    assert not torch.equal(before, net.classifier.weight)
    with pytest.raises(ValueError, match="norm"):
        ConvNet(norm="weird")


def test_condensed_set_file_round_trips_through_a_datamodule(tmp_path: Path) -> None:
    from contraseg.datamodules import DigitsDataModule
    from contraseg.datamodules.transforms import ViewAugmentation

    images = torch.randn(20, 1, 32, 32)
    path = tmp_path / "set.pt"
    torch.save({"images": images, "labels": torch.arange(10).repeat_interleave(2),
                "mean": [0.3057], "std": [0.3240], "num_classes": 10}, path)  # fmt: skip
    aug = ViewAugmentation(size=32, mean=[0.3057], std=[0.3240])
    dm = DigitsDataModule(train_set=str(path), augment=aug, num_workers=0, batch_size=4)
    dm.setup("fit")
    train = dm.eval_dataset("train")
    assert len(train) == 20 and len(dm.eval_dataset("val")) == 539
    item = train[3]
    assert item["label"] == 1
    torch.testing.assert_close(item["image"], images[3], atol=1e-5, rtol=1e-5)
    torch.save({"images": images}, tmp_path / "bad.pt")
    with pytest.raises(DataFormatError, match="bad.pt is not a condensed set"):
        CondensedSet(tmp_path / "bad.pt")
    wrong = DigitsDataModule(train_set=str(path), augment=ViewAugmentation(size=32),
                             num_workers=0)  # 3-channel statistics  # fmt: skip
    with pytest.raises(DataFormatError, match="1 channels"):
        wrong.setup("fit")


def _fit(tmp: Path, out: str, kill: int, extra: list[str], fresh: bool = False):
    """A DSAC run through the kill harness (forked from its server unless ``fresh``)."""
    args = ["--config", str(REPO / "experiments/configs/dcc_digits.yaml"),
            "--trainer.accelerator", "cpu", "--trainer.max_epochs", "3",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", "csv", "--model.init_args.net_width", "8",
            "--model.init_args.ipc", "1", "--model.init_args.inner_loop", "4",
            "--model.init_args.net_steps", "2", "--model.init_args.batch_real", "8",
            "--model.init_args.outer_warmup", "1", "--model.init_args.eval_iterations", "[0, 3]",
            "--model.init_args.eval_nets", "2", "--model.init_args.eval_epochs", "4",
            "--model.init_args.dsa", "true", "--model.init_args.velocity_every", "2",
            "--model.init_args.velocity_probe", "4", *extra]  # fmt: skip
    return (fresh_run if fresh else served_run)(tmp, out, kill, args, timeout=600)


@pytest.mark.slow
def test_killed_condensation_resumes_to_the_uninterrupted_set(tmp_path: Path) -> None:
    ref = _fit(tmp_path, "ref.pt", 0, ["--run_name", "ref"], fresh=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _fit(tmp_path, "killed.pt", 8, ["--run_name", "cut"])  # before outer iteration 2
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = torch.load(tmp_path / "outputs/cut/checkpoints/last.ckpt", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 8
    assert list(saved["task_state"]["eval_history"]) == [0]
    resumed = _fit(tmp_path, "resumed.pt", 0, ["--run_name", "cut", "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert a["step"] == b["step"] == 12
    assert torch.equal(a["state"]["images"], b["state"]["images"])
    assert not torch.equal(a["state"]["images"], saved["state_dict"]["images"])  # it moved
    ha, hb = a["task_state"]["eval_history"], b["task_state"]["eval_history"]
    assert sorted(ha) == sorted(hb) == [0, 3]
    assert ha[3]["accuracies"] == hb[3]["accuracies"] and len(ha[3]["velocity"]) == 2
    assert a["metrics"]["val/accuracy"] == b["metrics"]["val/accuracy"]
    # the resumed run reports the evaluation made before the kill too (the table runner reads it)
    val_a = {k: v for k, v in a["metrics"].items() if k.startswith("val/")}
    val_b = {k: v for k, v in b["metrics"].items() if k.startswith("val/")}
    assert "val/accuracy@0" in val_a and val_a == val_b
    files = sorted(p.name for p in (tmp_path / "outputs/ref/condensed").iterdir())
    assert files == ["iter_00000.pt", "iter_00003.pt", "last.pt"]
    final = CondensedSet(tmp_path / "outputs/ref/condensed/last.pt")
    assert len(final) == 10 and final.num_classes == 10
    grids = list(tmp_path.rglob("condensed_images/epoch_0000.png"))  # under the CSV log dir
    assert grids, "the initial image grid was not written"
    assert list(tmp_path.rglob("kernel_velocity/epoch_*.png")), "no kernel-velocity curve"


def test_evaluation_schedule_is_the_official_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """E + 1 epochs, lr / 10 (a new optimiser) after epoch E // 2 + 1, momentum .9, wd 5e-4."""
    from contraseg.lightning_modules.evaluators import synthetic_set

    steps: list[tuple[float, float, float]] = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):  # noqa: ANN001, ANN202
            g = self.param_groups[0]
            steps.append((g["lr"], g["momentum"], g["weight_decay"]))
            return super().step(closure)

    monkeypatch.setattr(synthetic_set.torch.optim, "SGD", Recorder)
    net = ConvNet(1, 2, 8, width=4, depth=1)
    images, labels = torch.randn(6, 1, 8, 8), torch.tensor([0, 1] * 3)
    out = synthetic_set.train_on_set(net, images, labels, epochs=4, batch_size=4)
    assert [s[0] for s in steps] == pytest.approx([0.01] * 8 + [0.001] * 2)  # 2 batches / epoch
    assert all(s[1:] == (0.9, 5e-4) for s in steps)
    assert 0 <= out["train_acc"] <= 1 and out["velocity"] == []


def test_digits_over_class_irrelevant_backgrounds() -> None:
    from contraseg.datamodules.datasets.digits import DigitsDataset

    plain = DigitsDataset("train")
    bg = DigitsDataset("train", background=0.8)
    again = DigitsDataset("train", background=0.8)
    test = DigitsDataset("test", background=0.8)
    assert plain.targets == bg.targets and len(test) == 539 and len(plain) == 1258
    assert torch.equal(bg.images, again.images)  # deterministic by seed
    assert (bg.images >= plain.images).all()  # the digit is kept (pixel-wise maximum)
    added = bg.images.float() - plain.images.float()
    assert float(added.mean()) > 40  # most of the energy is background
    # backgrounds do not depend on the class: their mean per class is the same within noise
    means = torch.stack([added[torch.tensor(bg.targets) == c].mean() for c in range(10)])
    assert float(means.std() / means.mean()) < 0.15
    with pytest.raises(ValueError, match="background"):
        DigitsDataset("train", background=-1)
