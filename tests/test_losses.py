"""Losses: each against a plain reference, gradient paths, bounded parameters, the builder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from core.config import AlignConfig, DistillConfig, FinetuneConfig, PretrainConfig, StructureConfig
from core.errors import UserError
from core.losses import (
    DISTILL_METRICS,
    STRUCTURE_METRICS,
    AlignmentLoss,
    DenseDistillLoss,
    StructureLoss,
    build_losses,
)

# pairs 0, 2 and 5 show image 7; pairs 1 and 4 image 3: several captions of one image per batch
IDS = torch.tensor([7, 3, 7, 1, 3, 7])


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _triplet_reference(image, text, ids, margin: float, hardest: bool) -> float:
    """VSE++ by loops: for each anchor, hinge against every caption/image of another image."""
    n = len(ids)
    s = [[float(image[i] @ text[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for a in range(n):
        negatives = [j for j in range(n) if ids[j] != ids[a]]
        i2t = [max(0.0, margin + s[a][j] - s[a][a]) for j in negatives]  # anchor image a
        t2i = [max(0.0, margin + s[j][a] - s[a][a]) for j in negatives]  # anchor text a
        if hardest:
            total += max(i2t, default=0.0) + max(t2i, default=0.0)
        else:
            total += sum(i2t) + sum(t2i)
    return total


# ---------------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("epoch, hardest", [(0, False), (1, True), (5, True)])
def test_triplet_matches_loop_reference_with_repeated_image_ids(epoch, hardest):
    image, text = _unit(6, 8, seed=1), _unit(6, 8, seed=2)
    cfg = AlignConfig(loss="triplet", margin=0.2, hardest_after_epoch=1, weight=1.0)
    got = AlignmentLoss(cfg)(image, text, IDS, epoch)["align_loss"]
    assert got.item() == pytest.approx(_triplet_reference(image, text, IDS.tolist(), 0.2, hardest), rel=1e-9)


def test_triplet_never_uses_captions_of_the_same_image_as_negatives():
    # every pair shows the same image: no negatives at all, so no loss however bad the scores
    image, text = _unit(4, 8, seed=3), _unit(4, 8, seed=4)
    loss = AlignmentLoss(AlignConfig(loss="triplet"))(image, text, torch.zeros(4, dtype=torch.long), 3)
    assert loss["align_loss"].item() == 0.0


def test_align_weight_scales_the_term():
    image, text = _unit(6, 8, seed=1), _unit(6, 8, seed=2)
    one = AlignmentLoss(AlignConfig(weight=1.0))(image, text, IDS, 0)["align_loss"]
    three = AlignmentLoss(AlignConfig(weight=3.0))(image, text, IDS, 0)["align_loss"]
    assert three.item() == pytest.approx(3 * one.item())


def test_infonce_matches_cross_entropy_with_unique_ids():
    image, text = _unit(5, 8, seed=5).float(), _unit(5, 8, seed=6).float()
    loss = AlignmentLoss(AlignConfig(loss="infonce", temperature=0.07))
    got = loss(image, text, torch.arange(5), 0)["align_loss"]
    logits = image @ text.T / 0.07
    target = torch.arange(5)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_infonce_repeated_ids_average_the_cross_entropy_over_all_positives():
    image, text = _unit(6, 8, seed=7).float(), _unit(6, 8, seed=8).float()
    loss = AlignmentLoss(AlignConfig(loss="infonce", temperature=0.1))
    got = loss(image, text, IDS, 0)["align_loss"]
    logits = image @ text.T / 0.1
    terms = []
    for scores in (logits, logits.T):
        for a in range(6):
            positives = [j for j in range(6) if IDS[j] == IDS[a]]
            ce = [F.cross_entropy(scores[a : a + 1], torch.tensor([j])) for j in positives]
            terms.append(sum(ce) / len(ce))
    assert got.item() == pytest.approx((sum(terms) / 12).item(), rel=1e-5)


def test_infonce_temperature_is_learnable_and_never_below_its_floor():
    cfg = AlignConfig(loss="infonce", temperature=0.05, min_temperature=0.02)
    loss = AlignmentLoss(cfg)
    params = list(loss.parameters())
    assert len(params) == 1 and params[0].requires_grad
    assert loss.criterion.temperature.item() == pytest.approx(0.05)
    image, text = _unit(6, 8, seed=9).float(), _unit(6, 8, seed=10).float()
    optimizer = torch.optim.Adam(params, lr=0.5)
    for _ in range(200):  # sharper logits lower the loss of well-separated pairs: push tau down
        optimizer.zero_grad()
        loss(image, image, torch.arange(6), 0)["align_loss"].backward()
        optimizer.step()
    assert loss.criterion.temperature.item() >= 0.02
    assert loss.criterion.temperature.item() < 0.025  # driven to the floor (the loss underflows there)
    with torch.no_grad():
        params[0].fill_(-1e4)
    assert loss.criterion.temperature.item() == pytest.approx(0.02)
    # the gradient is alive at the floor, so the temperature can rise again
    loss(image, text, torch.arange(6), 0)["align_loss"].backward()
    assert params[0].grad is not None


def test_infonce_starting_temperature_must_exceed_the_floor():
    with pytest.raises(ValidationError, match="min_temperature"):
        AlignConfig(loss="infonce", temperature=0.01, min_temperature=0.01)


# ------------------------------------------------------------------------------- distillation
@pytest.mark.parametrize("metric", sorted(DISTILL_METRICS))
def test_distill_metric_is_zero_for_identical_student_and_teacher(metric):
    x = _unit(6, 8, seed=11).float()
    loss = DenseDistillLoss(DistillConfig(metric=metric))(text=x, dense=x.clone())["distill_loss"]
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("metric", sorted(DISTILL_METRICS))
def test_distill_metric_is_positive_and_reaches_the_student_only(metric):
    student = _unit(6, 8, seed=12).float().requires_grad_(True)
    teacher = _unit(6, 8, seed=13).float().requires_grad_(True)
    loss = DenseDistillLoss(DistillConfig(metric=metric, weight=2.0))(student, teacher)["distill_loss"]
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_distill_metrics_match_their_formulas():
    s, t = _unit(5, 8, seed=14), _unit(5, 8, seed=15)
    run = lambda metric: DenseDistillLoss(DistillConfig(metric=metric, temperature=0.5))(s, t)["distill_loss"].item()  # noqa: E731
    assert run("cosine") == pytest.approx(sum(1 - float(s[i] @ t[i]) for i in range(5)) / 5)
    # l2 / l1 compare the unit vectors at RMS scale (norm sqrt(D)), the scale of the released
    # code's LayerNorm outputs
    assert run("l2") == pytest.approx(8 * float(((s - t) ** 2).mean()))
    assert run("l1") == pytest.approx(math.sqrt(8) * float((s - t).abs().mean()))
    kl = 0.0
    for i in range(5):
        others = [j for j in range(5) if j != i]
        p = torch.softmax(torch.stack([t[i] @ t[j] for j in others]) / 0.5, 0)
        q = torch.softmax(torch.stack([s[i] @ s[j] for j in others]) / 0.5, 0)
        kl += float((p * (p / q).log()).sum())
    assert run("kl") == pytest.approx(kl / 5)


def test_every_distill_metric_has_a_loss_and_gradient_of_the_same_order():
    """B=128, D=512, cos(student, teacher) = 0.5 for every pair: a metric study compares losses
    of comparable strength, not cosine against a distillation that is nearly off."""
    B, D = 128, 512
    teacher = _unit(B, D, seed=21)
    noise = F.normalize(torch.randn(B, D, generator=torch.Generator().manual_seed(22)), dim=1)
    noise = F.normalize(noise - (noise * teacher).sum(1, keepdim=True) * teacher, dim=1)
    base = 0.5 * teacher + math.sqrt(0.75) * noise
    losses, grads = {}, {}
    for metric in sorted(DISTILL_METRICS):
        student = base.clone().requires_grad_(True)
        loss = DenseDistillLoss(DistillConfig(metric=metric))(student, teacher)["distill_loss"]
        loss.backward()
        losses[metric], grads[metric] = loss.item(), student.grad.norm().item()
    assert max(losses.values()) / min(losses.values()) < 10, losses
    assert max(grads.values()) / min(grads.values()) < 10, grads
    assert losses["l2"] == pytest.approx(2 * losses["cosine"], rel=1e-4)  # 2 (1 - cos) at RMS scale


def test_alignment_weight_ramps_from_zero_over_ramp_epochs_then_stays_whole():
    image, text, ids = _unit(6, 8, seed=31), _unit(6, 8, seed=32), torch.arange(6)
    ramped = AlignmentLoss(AlignConfig(loss="infonce", ramp_epochs=1.0))
    plain = AlignmentLoss(AlignConfig(loss="infonce"))
    full = plain(image, text, ids, 0.0)["align_loss"]
    assert ramped(image, text, ids, 0.0)["align_loss"].item() == 0.0
    assert ramped(image, text, ids, 0.25)["align_loss"].item() == pytest.approx(0.25 * full.item())
    assert ramped(image, text, ids, 1.5)["align_loss"].item() == pytest.approx(plain(image, text, ids, 1.5)["align_loss"].item())


# ---------------------------------------------------------------------------------- structure
def _relations(x: torch.Tensor, temperature: float) -> torch.Tensor:
    x = F.normalize(x, dim=1)
    n = len(x)
    sims = x @ x.T / temperature
    return torch.stack([torch.cat([sims[i, :i], sims[i, i + 1 :]]) for i in range(n)])


@pytest.mark.parametrize("metric", sorted(STRUCTURE_METRICS))
def test_structure_loss_is_zero_when_student_relations_equal_the_teacher_target(metric):
    x = _unit(6, 8, seed=16).float()
    loss = StructureLoss(StructureConfig(enabled=True, metric=metric, mix_init=0.3))
    # image = text = both teachers: pair embeddings and either teacher share one structure
    assert loss(x, x, x.clone(), x.clone())["structure_loss"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("metric", sorted(STRUCTURE_METRICS))
def test_structure_loss_matches_the_mixed_teacher_target_and_spares_the_teachers(metric):
    image, text = _unit(6, 8, seed=17).requires_grad_(True), _unit(6, 8, seed=18).requires_grad_(True)
    image_t, text_t = _unit(6, 12, seed=19).requires_grad_(True), _unit(6, 10, seed=20).requires_grad_(True)
    loss = StructureLoss(StructureConfig(enabled=True, metric=metric, mix_init=0.3, temperature=0.2, weight=2.0))
    loss.double()
    got = loss(image, text, image_t, text_t)["structure_loss"]
    lam = loss.mix.item()
    assert lam == pytest.approx(0.3)
    target = lam * _relations(text_t, 0.2) + (1 - lam) * _relations(image_t, 0.2)
    student = _relations(image + text, 0.2)
    expected = {
        "mae": (student - target).abs().mean(),
        "mse": ((student - target) ** 2).mean(),
        "kl": (target.softmax(1) * (target.log_softmax(1) - student.log_softmax(1))).sum(1).mean(),
    }[metric]
    assert got.item() == pytest.approx(2.0 * expected.item(), rel=1e-9)
    got.backward()
    assert image.grad is not None and text.grad is not None
    assert image_t.grad is None and text_t.grad is None
    assert loss.mix_logit.grad is not None  # lambda learns through the target


def test_structure_mix_stays_in_unit_interval_under_optimisation_pushing_it_out():
    for direction in (1.0, -1.0):  # push lambda up past 1, or down past 0
        loss = StructureLoss(StructureConfig(enabled=True, metric="mse", mix_init=0.5))
        optimizer = torch.optim.Adam(loss.parameters(), lr=1.0)
        for _ in range(300):
            optimizer.zero_grad()
            (-direction * loss.mix).backward()
            optimizer.step()
            assert 0.0 <= loss.mix.item() <= 1.0
        assert loss.mix.item() == pytest.approx((1 + direction) / 2, abs=1e-3)


def test_structure_temperature_is_fixed_not_a_parameter():
    loss = StructureLoss(StructureConfig(enabled=True, temperature=0.1))
    assert [name for name, _ in loss.named_parameters()] == ["mix_logit"]
    fixed = StructureLoss(StructureConfig(enabled=True, learn_mix=False, mix_init=1.0))
    assert list(fixed.parameters()) == [] and fixed.mix.item() == 1.0


def test_structure_learnable_mix_cannot_start_at_a_bound():
    with pytest.raises(ValidationError, match="mix_init"):
        StructureConfig(enabled=True, learn_mix=True, mix_init=0.0)


# ------------------------------------------------------------------------------------ builder
def test_build_losses_returns_the_enabled_set():
    assert set(build_losses(PretrainConfig())) == {"align"}
    assert set(build_losses(PretrainConfig(structure=StructureConfig(enabled=True)))) == {"align", "structure"}
    assert set(build_losses(FinetuneConfig())) == {"align", "distill"}
    off = FinetuneConfig(distill=DistillConfig(enabled=False), structure=StructureConfig(enabled=True))
    assert set(build_losses(off)) == {"align", "structure"}
    learnable = build_losses(FinetuneConfig(align=AlignConfig(loss="infonce"), structure=StructureConfig(enabled=True)))
    assert sorted(n for n, p in learnable.named_parameters() if p.requires_grad) == [
        "align.criterion.theta",
        "structure.mix_logit",
    ]


def test_unknown_metric_is_rejected_by_the_config():
    with pytest.raises(ValidationError, match="metric"):
        DistillConfig(metric="huber")
    with pytest.raises(ValidationError, match="metric"):
        StructureConfig(metric="wasserstein")


@pytest.mark.parametrize(
    "build, valid",
    [
        (lambda: DenseDistillLoss(DistillConfig.model_construct(metric="huber")), "cosine, l2, l1, kl"),
        (lambda: StructureLoss(StructureConfig.model_construct(metric="wd")), "mae, mse, kl"),
        (lambda: AlignmentLoss(AlignConfig.model_construct(loss="hinge")), "triplet, infonce"),
    ],
)
def test_unknown_name_lookup_error_lists_the_valid_names(build, valid):
    with pytest.raises(UserError, match=valid):
        build()


def test_loss_values_are_finite_for_a_batch_of_two():
    # the smallest batch the config allows: one off-diagonal relation per row
    x, y = _unit(2, 8, seed=21).float(), _unit(2, 8, seed=22).float()
    for name, loss in build_losses(
        FinetuneConfig(align=AlignConfig(loss="infonce"), structure=StructureConfig(enabled=True, metric="kl"))
    ).items():
        args = {"align": (x, y, torch.arange(2), 0), "distill": (x, y), "structure": (x, y, x, y)}[name]
        assert all(math.isfinite(v.item()) for v in loss(*args).values())


def test_losses_take_their_named_inputs_from_one_dict_and_name_what_is_missing():
    losses = build_losses(FinetuneConfig(align=AlignConfig(loss="infonce")))
    image, text, dense = _unit(4, 8, seed=41), _unit(4, 8, seed=42), _unit(4, 8, seed=43)
    terms = losses(image=image, text=text, image_ids=torch.arange(4), progress=0.0, dense=dense, image_teacher=image)
    assert set(terms) == {"align_loss", "distill_loss"}  # unread inputs (image_teacher) are ignored
    assert terms["distill_loss"].item() == pytest.approx(losses["distill"](text=text, dense=dense)["distill_loss"].item())
    with pytest.raises(KeyError, match="the distill loss needs dense"):
        losses(image=image, text=text, image_ids=torch.arange(4), progress=0.0)
