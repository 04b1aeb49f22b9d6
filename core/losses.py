"""Losses: alignment (hinge triplet | InfoNCE), dense-to-sparse distillation, structure-aware
relational distillation, and the cross-process gather they share.

Every loss is an ``nn.Module`` returning ``{name: weighted term}`` with keys ending in ``_loss``;
the trainer sums the terms and logs each. Inputs are named, and each loss declares the names it
reads (``inputs``): the trainer hands :class:`Losses` one dict (``image``, ``text``,
``image_ids``, ``progress`` and the teachers' ``dense``, ``image_teacher``, ``text_teacher``) and
each enabled loss takes its own arguments from it. Every loss sees the *global* batch: it gathers its
inputs with :func:`gather_features` first, so one process and N processes compute the same value.
Inputs are ``(B, D)`` embeddings (L2-normalised by the model) of B matched pairs, row i of every
argument belonging to pair i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import AlignConfig, DistillConfig, StageConfig, StructureConfig
from core.errors import UserError

__all__ = [
    "gather_features",
    "TripletLoss",
    "InfoNCELoss",
    "AlignmentLoss",
    "DenseDistillLoss",
    "StructureLoss",
    "Losses",
    "build_losses",
    "ALIGN_LOSSES",
    "DISTILL_METRICS",
    "STRUCTURE_METRICS",
]

V = TypeVar("V")


# ------------------------------------------------------------------------------- distributed
class _LocalSlot(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by the world size (see gather_features)."""

    @staticmethod
    def forward(ctx, x: Tensor, world: int) -> Tensor:
        ctx.world = world
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.world, None


def gather_features(x: Tensor) -> Tensor:
    """All-gather ``x`` along dim 0 across processes so a loss sees the global batch.

    Identity unless ``torch.distributed`` is initialised with world size > 1. Every process must
    pass the same shape (the trainer splits the global batch evenly).

    Gradient path and normalisation: the other processes' slots are constants; the local slot
    is ``x`` itself through an identity whose backward multiplies by the world size N. Every
    process therefore computes the same value L (the loss of the global batch, exactly as one
    process would) and receives ``N * dL/dx_local`` for its own rows. DDP *averages* parameter
    gradients over the N processes, so the parameters end up with
    ``(1/N) * sum_r N * dL/dx_r * dx_r/dθ = dL/dθ``: the one-process gradient on the global batch,
    with one all-gather in forward and no collective in backward. Parameters of the losses
    themselves (temperature, lambda) see the whole gathered batch on every process and get the
    full ``dL/dθ`` there, identical on all processes, so they need no averaging.

    Args:
        x: ``(B, ...)`` local tensor; integer tensors (image ids) are gathered without gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = _LocalSlot.apply(x, world) if x.requires_grad else x
    return torch.cat(parts)  # (N * B, ...)


# -------------------------------------------------------------------------------- internals
def _lookup(table: Mapping[str, V], name: str, what: str) -> V:
    """``table[name]``; an unknown name is a UserError listing the valid ones."""
    try:
        return table[name]
    except KeyError:
        raise UserError(f"unknown {what} '{name}'; valid: {', '.join(table)}") from None


def _same_id(image_ids: Tensor) -> Tensor:
    """``(B,)`` ids -> ``(B, B)`` bool, True where pairs i and j show the same image."""
    return image_ids[:, None] == image_ids[None, :]


def _off_diagonal(x: Tensor) -> Tensor:
    """``(B, B)`` -> ``(B, B - 1)``: each row without its diagonal entry."""
    n = x.shape[0]
    return x.masked_select(~torch.eye(n, dtype=torch.bool, device=x.device)).view(n, n - 1)


def _relations(x: Tensor, temperature: float) -> Tensor:
    """``(B, D)`` -> ``(B, B - 1)`` cosine similarities to the other samples, / temperature."""
    x = F.normalize(x, dim=1)
    return _off_diagonal(x @ x.T) / temperature


def _kl_rows(target_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over rows of KL(softmax(target) || softmax(student)), both ``(R, C)`` logits."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=1),
        F.log_softmax(target_logits, dim=1),
        log_target=True,
        reduction="batchmean",
    )


# -------------------------------------------------------------------------------- alignment
class TripletLoss(nn.Module):
    """VSE++ hinge triplet loss (Faghri et al. 2018; D2S-VSE paper-notes §1, released lib/loss.py).

    With ``S = image @ text.T`` (cosine; inputs are unit vectors), margin m and the negative set
    ``N(i) = {j : id_j != id_i}`` (captions of the anchor's own image are never negatives)::

        i2t(i, j) = [m + S[i, j] - S[i, i]]_+      (anchor image i, negative text j)
        t2i(i, j) = [m + S[j, i] - S[i, i]]_+      (anchor text i, negative image j)
        L = sum_i max_{j in N(i)} i2t(i, j) + max_{j in N(i)} t2i(i, j)     (epoch >= hardest_after_epoch)
        L = sum_i sum_{j in N(i)} i2t(i, j) + t2i(i, j)                     (before: all negatives)

    Summed over the batch, as the released code. An anchor without negatives contributes 0.
    """

    def __init__(self, cfg: AlignConfig):
        super().__init__()
        self.margin = cfg.margin
        self.hardest_after_epoch = cfg.hardest_after_epoch

    def forward(self, image: Tensor, text: Tensor, image_ids: Tensor, epoch: int) -> Tensor:
        scores = image @ text.T  # (B, B)
        positive = scores.diagonal()[:, None]  # (B, 1) score of each anchor's own pair
        positives = _same_id(image_ids)
        cost_i2t = (self.margin + scores - positive).clamp(min=0).masked_fill(positives, 0)
        cost_t2i = (self.margin + scores.T - positive).clamp(min=0).masked_fill(positives, 0)
        if epoch >= self.hardest_after_epoch:
            return cost_i2t.max(dim=1).values.sum() + cost_t2i.max(dim=1).values.sum()
        return cost_i2t.sum() + cost_t2i.sum()


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature (CLIP, Radford et al. 2021, §2.3).

    ``logits = image @ text.T / tau``. Multi-positive targets: when ids repeat, the target row of
    anchor i is uniform over the pairs sharing its image (``P[i, j] = [id_i = id_j] / #{k: id_k =
    id_i}``), so captions of the same image are never pushed apart as negatives::

        L = 1/2 * (mean_i CE(P[i], softmax(logits[i])) + mean_i CE(P[i], softmax(logits.T[i])))

    With unique ids this is the usual cross-entropy against the diagonal. The temperature is
    ``tau = min_temperature + exp(theta)``: it can never fall below the floor, and unlike a clamp
    its gradient never dies, so a temperature that touched the floor can come back up.
    """

    def __init__(self, cfg: AlignConfig):
        super().__init__()  # AlignConfig guarantees temperature > min_temperature
        self.min_temperature = cfg.min_temperature
        self.theta = nn.Parameter(torch.tensor(math.log(cfg.temperature - cfg.min_temperature)))

    @property
    def temperature(self) -> Tensor:
        return self.min_temperature + self.theta.exp()

    def forward(self, image: Tensor, text: Tensor, image_ids: Tensor, epoch: int) -> Tensor:
        logits = image @ text.T / self.temperature  # (B, B)
        same = _same_id(image_ids).float()
        targets = same / same.sum(dim=1, keepdim=True)  # (B, B); symmetric mask, so valid for t2i too
        i2t = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        t2i = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
        return (i2t + t2i) / 2


ALIGN_LOSSES: dict[str, type[nn.Module]] = {"triplet": TripletLoss, "infonce": InfoNCELoss}


class AlignmentLoss(nn.Module):
    """Cross-modal alignment of matched pairs on the global batch: ``align.loss`` picks the
    criterion (``triplet`` | ``infonce``); the result is multiplied by ``align.weight`` and, in the
    first ``align.ramp_epochs`` epochs, by ``progress / ramp_epochs`` (the released trainer ramps
    its alignment loss from 0 to 1 over epoch 0)."""

    inputs = ("image", "text", "image_ids", "progress")

    def __init__(self, cfg: AlignConfig):
        super().__init__()
        self.weight = cfg.weight
        self.ramp_epochs = cfg.ramp_epochs
        self.criterion = _lookup(ALIGN_LOSSES, cfg.loss, "align.loss")(cfg)

    def forward(self, image: Tensor, text: Tensor, image_ids: Tensor, progress: float) -> dict[str, Tensor]:
        """Args:
        image: ``(B, D)`` image embeddings. text: ``(B, D)`` embeddings of their captions.
        image_ids: ``(B,)`` image index of each pair (equal ids are positives of each other).
        progress: epochs completed, fractional (triplet: all negatives before
            ``hardest_after_epoch``; the weight ramp).
        """
        image, text, image_ids = gather_features(image), gather_features(text), gather_features(image_ids)
        ramp = min(1.0, progress / self.ramp_epochs) if self.ramp_epochs > 0 else 1.0
        loss = self.criterion(image, text, image_ids, int(progress))
        return {"align_loss": self.weight * ramp * loss}


# ----------------------------------------------------------------------------- distillation
def _cosine(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


def _unit_rms(x: Tensor) -> Tensor:
    """Unit vectors scaled to norm sqrt(D): every coordinate of RMS 1, the scale of the released
    code's LayerNorm output, where its MSE distillation acts."""
    return F.normalize(x, dim=1) * math.sqrt(x.shape[1])


def _l2(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    # at RMS scale the elementwise MSE is 2 (1 - cos): the cosine term's order, whatever D is
    return F.mse_loss(_unit_rms(student), _unit_rms(teacher))


def _l1(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    return F.l1_loss(_unit_rms(student), _unit_rms(teacher))


def _similarity_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    # self-similarity is a constant 1/temperature for unit vectors: it carries no information and
    # would dominate the softmax, so each row is a distribution over the *other* B - 1 samples
    return _kl_rows(_relations(teacher, temperature), _relations(student, temperature))


# metric(student (B, D), teacher (B, D), temperature) -> scalar, 0 iff the student matches
DISTILL_METRICS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "cosine": _cosine,
    "l2": _l2,
    "l1": _l1,
    "kl": _similarity_kl,
}


class DenseDistillLoss(nn.Module):
    """Dense-to-sparse feature distillation (D2S-VSE, arXiv 2503.14953, §3; paper-notes §1).

    The frozen dense-caption embedding t_d (teacher) supervises the sparse-caption embedding t_s
    (student), per ``distill.metric``, times ``distill.weight``:

    - ``cosine``: mean_i (1 - cos(t_s_i, t_d_i))  (the released default)
    - ``l2``: mean squared error over all elements of ``sqrt(D) * t / |t|`` (the released
      alternative acts on LayerNorm outputs, of norm about sqrt(D)); equals 2 (1 - cos) on average
    - ``l1``: mean absolute error over all elements, at the same scale
    - ``kl``: mean_i KL(P_d[i] || P_s[i]) with ``P[i] = softmax_{j != i}(t_i . t_j / temperature)``,
      the in-batch similarity distributions (CLIP-KD style; relations, not coordinates)

    The teacher is detached here: the gradient reaches the student only.
    """

    inputs = ("text", "dense")

    def __init__(self, cfg: DistillConfig):
        super().__init__()
        self.weight = cfg.weight
        self.temperature = cfg.temperature
        self.metric = _lookup(DISTILL_METRICS, cfg.metric, "distill.metric")

    def forward(self, text: Tensor, dense: Tensor) -> dict[str, Tensor]:
        """Args:
        text: ``(B, D)`` sparse-caption embeddings (student). dense: ``(B, D)`` the frozen
            teacher's dense-caption embeddings.
        """
        student, teacher = gather_features(text), gather_features(dense.detach())
        return {"distill_loss": self.weight * self.metric(student, teacher, self.temperature)}


# -------------------------------------------------------------------------------- structure
def _mae(student: Tensor, target: Tensor) -> Tensor:
    return (student - target).abs().mean()


def _mse(student: Tensor, target: Tensor) -> Tensor:
    return (student - target).pow(2).mean()


def _relation_kl(student: Tensor, target: Tensor) -> Tensor:
    return _kl_rows(target, student)


# metric(student (B, B - 1), target (B, B - 1)) -> scalar; relations are already / temperature
STRUCTURE_METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mae": _mae,
    "mse": _mse,
    "kl": _relation_kl,
}


class StructureLoss(nn.Module):
    """Structure-aware relational distillation (RVLR, Yang et al., IEEE TIP 2024, §III "relational
    matching"; paper-notes §2).

    Relations are in-batch cosine similarities divided by a FIXED temperature, diagonal removed
    (a learnable one would let the loss shrink itself). The target mixes the two frozen unimodal
    teachers' relations::

        R_target = lambda * R(text_teacher) + (1 - lambda) * R(image_teacher)

    The student relation is that of the matched pairs: RVLR relates the pairs' fused cross-encoder
    embeddings; in a dual encoder the pair's embedding is ``p_i = normalize(image_i + text_i)``
    (the midpoint of the matched pair on the sphere), so ``R_student = R(p)``. It moves both
    towers, and as alignment tightens (image_i ~ text_i) it tends to either modality's relations.
    ``L = weight * metric(R_student, R_target)`` with metric ``mae | mse | kl`` (row-wise
    KL(softmax(R_target) || softmax(R_student))).

    lambda = sigmoid(logit), initialised to ``mix_init``, learnable when ``learn_mix``: it stays in
    [0, 1] by construction. It gets its gradient from L through the target, i.e. it picks the mix
    of teacher structures closest to the student's current structure; the target can only move
    along the segment between the two teachers, so it cannot collapse onto the student. The
    released code adds two terms ``d(R_image_teacher, R_target) + d(R_text_teacher, R_target)``
    that only train lambda; with mae their sum is constant for lambda in [0, 1] (a soft range
    constraint, which the sigmoid makes exact), with mse they pull lambda to 1/2 whatever the
    student does; so they are left out.
    """

    inputs = ("image", "text", "image_teacher", "text_teacher")

    def __init__(self, cfg: StructureConfig):
        super().__init__()
        self.weight = cfg.weight
        self.temperature = cfg.temperature  # a plain float: fixed, never optimised
        self.metric = _lookup(STRUCTURE_METRICS, cfg.metric, "structure.metric")
        self.learn_mix = cfg.learn_mix
        if cfg.learn_mix:
            self.mix_logit = nn.Parameter(torch.logit(torch.tensor(cfg.mix_init, dtype=torch.float64)).float())
        else:  # a buffer: checkpointed with the loss, never optimised
            self.register_buffer("fixed_mix", torch.tensor(cfg.mix_init))

    @property
    def mix(self) -> Tensor:
        """lambda, the text teacher's share of the target relations, in [0, 1]."""
        return torch.sigmoid(self.mix_logit) if self.learn_mix else self.fixed_mix

    def forward(self, image: Tensor, text: Tensor, image_teacher: Tensor, text_teacher: Tensor) -> dict[str, Tensor]:
        """Args:
        image, text: ``(B, D)`` student embeddings of the matched pairs.
        image_teacher, text_teacher: ``(B, D_t)`` frozen unimodal teacher embeddings of the same pairs.
        """
        image, text = gather_features(image), gather_features(text)
        image_teacher = gather_features(image_teacher.detach())
        text_teacher = gather_features(text_teacher.detach())
        lam = self.mix
        text_rel, image_rel = _relations(text_teacher, self.temperature), _relations(image_teacher, self.temperature)
        target = lam * text_rel + (1 - lam) * image_rel  # (B, B - 1)
        student = _relations(image + text, self.temperature)  # (B, B - 1)
        return {"structure_loss": self.weight * self.metric(student, target)}


# ---------------------------------------------------------------------------------- builder
class Losses(nn.ModuleDict):
    """A stage's enabled losses by name; calling it with the step's named inputs gives every
    loss's terms, merged (the trainer's whole wiring of losses)."""

    def forward(self, **inputs: Tensor | float) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for name, loss in self.items():
            missing = [key for key in loss.inputs if key not in inputs]
            if missing:
                raise KeyError(f"the {name} loss needs {', '.join(missing)}; given: {', '.join(inputs)}")
            terms.update(loss(**{key: inputs[key] for key in loss.inputs}))
        return terms


def build_losses(stage: StageConfig) -> Losses:
    """The losses a stage enables: always ``align``; ``distill`` when the stage has an enabled
    ``distill`` section (fine-tuning); ``structure`` when ``structure.enabled``.

    Args:
        stage: the stage's config section (``config.pretrain`` or ``config.finetune``).
    """
    losses = Losses({"align": AlignmentLoss(stage.align)})
    distill: DistillConfig | None = getattr(stage, "distill", None)
    if distill is not None and distill.enabled:
        losses["distill"] = DenseDistillLoss(distill)
    if stage.structure.enabled:
        losses["structure"] = StructureLoss(stage.structure)
    return losses
