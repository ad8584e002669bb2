"""Document-length distributions: exact totals, determinism and the statistics they promise."""

from dataclasses import replace

import numpy as np
import pytest

from distca.data.distributions import LONGCTX, PRETRAIN, get_distribution, sample_doc_lengths


def long_token_share(lengths, threshold):
    lengths = np.asarray(lengths)
    return lengths[lengths >= threshold].sum() / lengths.sum()


@pytest.mark.parametrize("dist", ["pretrain", "longctx", PRETRAIN])
@pytest.mark.parametrize("total", [1, 17, 5000, 3_000_000])
def test_lengths_sum_exactly_to_the_total(dist, total):
    lengths = sample_doc_lengths(dist, total, np.random.default_rng(0))
    assert sum(lengths) == total
    assert all(isinstance(n, int) and n >= 1 for n in lengths)


def test_same_rng_seed_same_lengths():
    a = sample_doc_lengths("longctx", 1_000_000, np.random.default_rng(5))
    b = sample_doc_lengths("longctx", 1_000_000, np.random.default_rng(5))
    c = sample_doc_lengths("longctx", 1_000_000, np.random.default_rng(6))
    assert a == b and a != c


def test_pretrain_is_mostly_short_with_a_heavy_tail():
    lengths = np.array(sample_doc_lengths("pretrain", 100_000_000, np.random.default_rng(1))[:-1])
    # Shaped like the WLB-LLM trace: median ~3.1K, mean ~4K, ~2% of documents >= 8K
    # holding ~22% of the tokens, longest up to 128K.
    assert 2900 < np.median(lengths) < 3400
    assert 3700 < lengths.mean() < 4300
    assert abs(lengths.mean() - PRETRAIN.mean()) / PRETRAIN.mean() < 0.03
    assert 0.015 < (lengths >= 8192).mean() < 0.025
    assert 0.17 < long_token_share(lengths, 8192) < 0.27
    assert lengths.max() > 100_000 and lengths.max() <= 128 * 1024
    assert (lengths < 6251).mean() > 0.97


def test_longctx_has_many_long_documents_that_carry_most_tokens():
    lengths = np.array(sample_doc_lengths("longctx", 100_000_000, np.random.default_rng(2))[:-1])
    assert 1700 < np.median(lengths) < 2200
    assert 0.028 < (lengths == 64 * 1024).mean() < 0.036  # documents stretched to the context
    assert 0.07 < (lengths >= 8192).mean() < 0.10  # 6.4% tail + full, plus the body's upper end
    assert long_token_share(lengths, 8192) > 0.5
    # far more long-document tokens than the pretraining mix
    pre = sample_doc_lengths("pretrain", 100_000_000, np.random.default_rng(2))
    assert long_token_share(lengths, 8192) > 2 * long_token_share(pre, 8192)


def test_max_len_rescales_to_the_context_length():
    lengths = np.array(sample_doc_lengths("longctx", 20_000_000, np.random.default_rng(3), max_len=16384))
    assert lengths.max() == 16384
    assert (lengths == 16384).mean() > 0.03
    assert get_distribution("pretrain", 4096).max_len == 4096


def test_multiple_of_rounds_every_length_but_the_last():
    lengths = sample_doc_lengths("pretrain", 1_000_003, np.random.default_rng(4), multiple_of=16)
    assert sum(lengths) == 1_000_003
    assert all(n % 16 == 0 for n in lengths[:-1])


def test_custom_distribution_and_bad_parameters():
    uniform = replace(PRETRAIN, tail_fraction=0.0, body_a=100, body_b=200)
    lengths = np.array(sample_doc_lengths(uniform, 1_000_000, np.random.default_rng(0))[:-1])
    assert lengths.min() >= 100 and lengths.max() <= 200 and abs(lengths.mean() - 150) < 2
    with pytest.raises(ValueError, match="data.synthetic_dist"):
        sample_doc_lengths("zipf", 100, np.random.default_rng(0))
    with pytest.raises(ValueError):
        replace(LONGCTX, tail_fraction=0.7, full_fraction=0.5)
    with pytest.raises(ValueError):
        sample_doc_lengths("pretrain", 0, np.random.default_rng(0))
