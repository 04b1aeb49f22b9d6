"""Retrieval metrics: the counting fast path against the per-query sort loop, hand-computed ties and folds."""

import math

import numpy as np
import pytest
import torch

from core.errors import UserError
from core.metrics import kfold, kfold_recall, metrics_from_ranks, retrieval_ranks, retrieval_recall
from harness.bench.reference import reference_kfold_recall, reference_ranks, reference_recall


def _random_sims(txt2img: np.ndarray, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Cosine similarities of random unit embeddings, texts noisy copies of their image (non-trivial recalls)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(int(txt2img.max()) + 1, dim, generator=g)
    texts = images[torch.as_tensor(txt2img)] + 1.5 * torch.randn(len(txt2img), dim, generator=g)
    images, texts = (torch.nn.functional.normalize(x, dim=1) for x in (images, texts))
    return images @ texts.T  # (N, T)


def _five_per_image(n_images: int) -> np.ndarray:
    return np.repeat(np.arange(n_images), 5)


def _variable_per_image(n_images: int, seed: int = 0) -> np.ndarray:
    """1 to 7 texts per image (both extremes present), in shuffled order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 8, size=n_images)
    counts[:2] = (1, 7)
    return rng.permutation(np.repeat(np.arange(n_images), counts))


def _assert_ranks_equal_reference(sims: torch.Tensor, txt2img: np.ndarray, **kwargs) -> None:
    i2t, t2i = retrieval_ranks(sims, txt2img, **kwargs)
    ref_i2t, ref_t2i = reference_ranks(sims.numpy(), txt2img)
    np.testing.assert_array_equal(i2t.numpy(), ref_i2t)
    np.testing.assert_array_equal(t2i.numpy(), ref_t2i)


@pytest.mark.parametrize("txt2img", [_five_per_image(40), _variable_per_image(40)], ids=["five", "variable"])
def test_ranks_and_metrics_match_per_query_loop(txt2img):
    sims = _random_sims(txt2img)
    _assert_ranks_equal_reference(sims, txt2img)
    metrics = retrieval_recall(sims, txt2img)
    assert metrics == reference_recall(sims.numpy(), txt2img)
    assert 0 < metrics["i2t_r1"] < 100 and 0 < metrics["t2i_r1"] < 100  # the comparison is not vacuous


def test_ranks_match_per_query_loop_on_heavily_tied_scores():
    txt2img = _variable_per_image(30, seed=1)
    sims = torch.randint(0, 3, (30, len(txt2img)), generator=torch.Generator().manual_seed(1)).float()
    _assert_ranks_equal_reference(sims, txt2img)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_ranks_match_unchunked(chunk_size):
    txt2img = _variable_per_image(20)
    sims = _random_sims(txt2img)
    full_i2t, full_t2i = retrieval_ranks(sims, txt2img, chunk_size=len(sims))
    i2t, t2i = retrieval_ranks(sims, txt2img, chunk_size=chunk_size)
    assert torch.equal(i2t, full_i2t) and torch.equal(t2i, full_t2i)


# Hand-made: images 0, 1, 2; texts 0 and 1 belong to image 0, text 2 to image 1, text 3 to image 2.
TIED_TXT2IMG = [0, 0, 1, 2]
TIED_SIMS = [
    [0.5, 0.5, 0.5, 0.1],  # best gt 0.5 (texts 0, 1 tie each other: no penalty); negative text 2 ties it -> 1
    [0.3, 0.3, 0.3, 0.9],  # gt 0.3; negatives 0, 1 tie it, 3 beats it -> 3
    [0.5, 0.0, 0.2, 0.4],  # gt 0.4; negative text 0 beats it -> 1
]
# T2I columns: text 0 [0.5, 0.3, 0.5]: image 2 ties its image 0 -> 1; text 1 [0.5, 0.3, 0.0] -> 0;
# text 2 [0.5, 0.3, 0.2]: image 0 beats image 1 -> 1; text 3 [0.1, 0.9, 0.4]: image 1 beats image 2 -> 1.


def _core_ranks(sims, txt2img):
    i2t, t2i = retrieval_ranks(torch.tensor(sims), txt2img)
    return i2t.tolist(), t2i.tolist()


def _reference_ranks(sims, txt2img):
    i2t, t2i = reference_ranks(np.array(sims), np.array(txt2img))
    return i2t.tolist(), t2i.tolist()


@pytest.mark.parametrize("ranks_fn", [_core_ranks, _reference_ranks], ids=["core", "reference"])
def test_tie_with_a_negative_counts_against_the_query(ranks_fn):
    assert ranks_fn(TIED_SIMS, TIED_TXT2IMG) == ([1, 3, 1], [1, 0, 1, 1])


def test_constant_similarities_give_worst_ranks_not_perfect_recall():
    i2t, t2i = retrieval_ranks(torch.zeros(3, 4), TIED_TXT2IMG)
    assert i2t.tolist() == [2, 3, 3]  # every negative text
    assert t2i.tolist() == [2, 2, 2, 2]  # every other image


def test_nan_ground_truth_ranks_last():
    sims = torch.tensor([[float("nan"), 0.1], [0.2, 0.3]])
    i2t, t2i = retrieval_ranks(sims, [0, 1])
    assert i2t.tolist() == [1, 0]
    assert t2i.tolist() == [1, 0]


def test_metrics_from_ranks_hand_computed():
    metrics = metrics_from_ranks(torch.tensor([0, 1, 6, 12]), np.array([0, 0, 2, 3, 9, 10]))
    assert list(metrics) == [
        "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
        "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr",
    ]  # fmt: skip
    assert metrics == pytest.approx({
        "i2t_r1": 25.0, "i2t_r5": 50.0, "i2t_r10": 75.0,
        "t2i_r1": 100 * 2 / 6, "t2i_r5": 100 * 4 / 6, "t2i_r10": 100 * 5 / 6,
        "rsum": 150.0 + 100 * 11 / 6,
        "i2t_medr": 4.0,  # median 3.5 -> floor 3 -> 1-based 4
        "i2t_meanr": 5.75,
        "t2i_medr": 3.0,  # median 2.5 -> floor 2 -> 1-based 3
        "t2i_meanr": 5.0,
    })  # fmt: skip


def test_other_cutoffs_name_their_keys():
    metrics = metrics_from_ranks([0, 3], [1, 2, 7], ks=(2, 50))
    assert list(metrics)[:5] == ["i2t_r2", "i2t_r50", "t2i_r2", "t2i_r50", "rsum"]
    assert metrics["rsum"] == pytest.approx(50.0 + 100.0 + 100 / 3 + 100.0)


# Hand-made 4 images x 5 texts; image 1 has two texts. Folds of 2: images {0, 1} with texts {0, 1, 2},
# images {2, 3} with texts {3, 4}. Text 3 outscoring image 0's own text only matters in the full matrix.
FOLD_TXT2IMG = [0, 1, 1, 2, 3]
FOLD_SIMS = [
    [0.9, 0.1, 0.2, 0.95, 0.0],
    [0.8, 0.3, 0.7, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.6, 0.7],
    [0.0, 0.9, 0.0, 0.5, 0.4],
]


def test_kfold_recall_averages_hand_computed_folds():
    # fold 0: i2t [0, 1] (image 1's best text 0.7 < text 0's 0.8), t2i [0, 0, 0]
    # fold 1: i2t [1, 1], t2i [0, 1] (text 4: image 2 scores 0.7 > image 3's 0.4)
    metrics = kfold_recall(torch.tensor(FOLD_SIMS), FOLD_TXT2IMG, fold_size=2, ks=(1,))
    assert metrics == pytest.approx({
        "i2t_r1": (50.0 + 0.0) / 2, "t2i_r1": (100.0 + 50.0) / 2, "rsum": (150.0 + 50.0) / 2,
        "i2t_medr": (1.0 + 2.0) / 2, "i2t_meanr": (1.5 + 2.0) / 2,
        "t2i_medr": (1.0 + 1.0) / 2, "t2i_meanr": (1.0 + 1.5) / 2,
    })  # fmt: skip
    assert retrieval_recall(torch.tensor(FOLD_SIMS), FOLD_TXT2IMG, ks=(1,))["i2t_r1"] == 0.0  # folds differ from full


def test_kfold_recall_matches_per_query_loop():
    txt2img = _variable_per_image(30, seed=2)
    sims = _random_sims(txt2img, seed=2)
    assert kfold_recall(sims, txt2img, fold_size=10) == reference_kfold_recall(sims.numpy(), txt2img, fold_size=10)


def test_kfold_ranks_are_each_querys_rank_within_its_fold_and_pool_to_the_fold_mean():
    _, i2t, t2i = kfold(torch.tensor(FOLD_SIMS), FOLD_TXT2IMG, fold_size=2)
    assert (i2t.tolist(), t2i.tolist()) == ([0, 1, 1, 1], [0, 0, 0, 0, 1])  # the hand-computed folds above
    txt2img = _five_per_image(30)  # equal texts per fold: pooled ranks give the fold means
    sims = _random_sims(txt2img, seed=4)
    means, *ranks = kfold(sims, txt2img, fold_size=10)
    pooled = metrics_from_ranks(*ranks)
    assert means == kfold_recall(sims, txt2img, fold_size=10)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "i2t_meanr", "t2i_meanr"):
        assert pooled[key] == pytest.approx(means[key]), key  # medians do not pool; means and recalls do


def test_kfold_recall_with_one_fold_is_the_full_matrix():
    txt2img = _five_per_image(12)
    sims = _random_sims(txt2img, seed=3)
    assert kfold_recall(sims, txt2img, fold_size=12) == retrieval_recall(sims, txt2img)


def test_ranks_stay_on_the_device_of_sims_and_accept_numpy_indices():
    i2t, t2i = retrieval_ranks(torch.tensor(TIED_SIMS, dtype=torch.float64), np.array(TIED_TXT2IMG, dtype=np.int32))
    assert i2t.dtype == t2i.dtype == torch.int64 and i2t.device == torch.device("cpu")
    assert (i2t.tolist(), t2i.tolist()) == ([1, 3, 1], [1, 0, 1, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ranks_on_cuda_equal_ranks_on_cpu():
    txt2img = _variable_per_image(50)
    sims = _random_sims(txt2img)
    i2t, t2i = retrieval_ranks(sims.cuda(), torch.as_tensor(txt2img).cuda(), chunk_size=7)
    assert i2t.is_cuda
    ref_i2t, ref_t2i = reference_ranks(sims.numpy(), txt2img)
    np.testing.assert_array_equal(i2t.cpu().numpy(), ref_i2t)
    np.testing.assert_array_equal(t2i.cpu().numpy(), ref_t2i)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: retrieval_ranks(torch.zeros(2, 4), [0, 1, 1]), r"sims has 4 texts \(shape \(2, 4\)\) but txt2img has 3"),
        (lambda: retrieval_ranks(torch.zeros(4), [0, 1, 1, 0]), r"2-D floating-point .* shape \(4,\)"),
        (lambda: retrieval_ranks(torch.zeros(2, 3, dtype=torch.long), [0, 1, 1]), r"floating-point .* torch\.int64"),
        (lambda: retrieval_ranks(torch.zeros(0, 3), [0, 0, 0]), r"sims is empty"),
        (lambda: retrieval_ranks(torch.zeros(2, 3), [0.0, 1.0, 1.0]), r"txt2img must be a 1-D integer .*torch\.float32"),
        (lambda: retrieval_ranks(torch.zeros(2, 3), [0, 2, 1]), r"image index 2 outside 0\.\.1"),
        (lambda: retrieval_ranks(torch.zeros(2, 3), [0, -1, 1]), r"image index -1 outside"),
        (lambda: retrieval_ranks(torch.zeros(3, 3), [0, 0, 2]), r"1 images have no text \(first: \[1\]\)"),
        (lambda: retrieval_ranks(torch.zeros(2, 3), [0, 1, 1], chunk_size=0), r"chunk_size .* got 0"),
        (lambda: metrics_from_ranks([0, 1], [0], ks=()), r"ks must be positive"),
        (lambda: metrics_from_ranks([0, 1], [0], ks=(0, 5)), r"ks must be positive"),
        (lambda: metrics_from_ranks([0, 1], [0], ks=(5, 5)), r"repeated cut-off"),
        (lambda: metrics_from_ranks([], [0]), r"i2t_ranks must be a non-empty"),
        (lambda: kfold_recall(torch.zeros(4, 5), FOLD_TXT2IMG, fold_size=3), r"4 images do not split into folds of fold_size=3"),
        (lambda: kfold_recall(torch.zeros(4, 5), FOLD_TXT2IMG, fold_size=0), r"fold_size=0"),
        (lambda: kfold_recall(torch.zeros(4, 3), [0, 1, 1], fold_size=2), r"fold 1 \(images 2\.\.3\) has no texts"),
        (lambda: kfold_recall(torch.zeros(4, 3), [0, 2, 3], fold_size=2), r"1 images have no text \(first: \[1\]\)"),
    ],
)
def test_bad_input_raises_user_error_naming_the_cause(call, message):
    with pytest.raises(UserError, match=message):
        call()


def test_metric_values_are_python_floats():
    txt2img = _five_per_image(10)
    metrics = retrieval_recall(_random_sims(txt2img), txt2img)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
