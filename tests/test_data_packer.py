"""Packer: exact token stream, splitting, determinism, epochs and exact resume."""

import numpy as np
import pytest
import torch

from distca.data import Packer, Sample


class ListDocuments:
    """Documents held in memory; document i is ids (i * 1000 + k) so every token is traceable."""

    def __init__(self, lengths, eos=-1):
        self.docs = [np.append(np.arange(n - 1, dtype=np.int64) + i * 1000, eos) for i, n in enumerate(lengths)]
        self.reads = set()

    def __len__(self):
        return len(self.docs)

    def tokens(self, index):
        self.reads.add(index)
        return self.docs[index]


def take(packer, n):
    return [packer.next_sample() for _ in range(n)]


def stream(samples):
    return np.concatenate([s.tokens.numpy() for s in samples])


def test_samples_are_the_shuffled_documents_back_to_back():
    lengths = [5, 17, 3, 40, 1, 9, 12]
    docs = ListDocuments(lengths)
    packer = Packer(docs, seq_len=8, seed=3)
    order = np.random.default_rng([3, 0]).permutation(len(lengths))
    expected = np.concatenate([docs.docs[i] for i in order])
    samples = take(packer, len(expected) // 8)
    for s in samples:
        assert isinstance(s, Sample)
        assert s.tokens.dtype == torch.int64 and s.tokens.shape == (8,)
        assert sum(s.doc_lens) == 8 and all(n > 0 for n in s.doc_lens)
    np.testing.assert_array_equal(stream(samples), expected[:len(samples) * 8])


def test_doc_lens_mark_every_piece_boundary():
    docs = ListDocuments([3, 6, 2, 30])
    packer = Packer(docs, seq_len=10, seed=0, shuffle=False)
    s = [packer.next_sample() for _ in range(4)]
    # 3 + 6 + first 1 of the 2-token doc; then its last token + 9 of the 30-token doc; ...
    assert [x.doc_lens for x in s] == [[3, 6, 1], [1, 9], [10], [10]]
    # the long document continues across samples from where it stopped
    np.testing.assert_array_equal(s[1].tokens[1:].numpy(), docs.docs[3][:9])
    np.testing.assert_array_equal(s[2].tokens.numpy(), docs.docs[3][9:19])
    # next epoch starts after the 30-token document's last piece ([1] left) in sample 5
    assert packer.next_sample().doc_lens[0] == 1


def test_long_document_spans_several_samples():
    docs = ListDocuments([25])
    packer = Packer(docs, seq_len=10, seed=0)
    s = take(packer, 5)
    # 25 tokens: 10 | 10 | 5 + next epoch's first 5 | ...
    assert [x.doc_lens for x in s] == [[10], [10], [5, 5], [10], [10]]
    np.testing.assert_array_equal(stream(s), np.concatenate([docs.docs[0]] * 2)[:50])


def test_same_seed_same_samples_other_seed_other_order():
    lengths = list(range(2, 60))
    a = stream(take(Packer(ListDocuments(lengths), 16, seed=7), 50))
    b = stream(take(Packer(ListDocuments(lengths), 16, seed=7), 50))
    c = stream(take(Packer(ListDocuments(lengths), 16, seed=8), 50))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_epoch_covers_each_document_once_in_a_new_order():
    lengths = [4] * 20  # 4-token docs, seq_len 4: one document per sample
    packer = Packer(ListDocuments(lengths), seq_len=4, seed=1)
    epochs = [[int(s.tokens[0]) // 1000 for s in take(packer, 20)] for _ in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(20))
    assert epochs[0] != epochs[1] != epochs[2]
    assert packer.epoch == 3 and packer.position == 0


@pytest.mark.parametrize("consumed", [0, 1, 7, 23, 64])
def test_restored_packer_yields_exactly_the_next_samples(consumed):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 70, size=30).tolist()
    original = Packer(ListDocuments(lengths), seq_len=32, seed=11)
    take(original, consumed)
    state = original.state_dict()
    expected = take(original, 40)  # crosses at least one epoch boundary

    restored = Packer(ListDocuments(lengths), seq_len=32, seed=11)
    restored.load_state_dict(state)
    got = take(restored, 40)
    assert [s.doc_lens for s in got] == [s.doc_lens for s in expected]
    np.testing.assert_array_equal(stream(got), stream(expected))
    assert restored.state_dict() == original.state_dict()


def test_state_dict_is_plain_ints_that_survive_torch_save(tmp_path):
    packer = Packer(ListDocuments([50, 3, 9]), seq_len=16, seed=2)
    take(packer, 2)
    torch.save(packer.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt")
    assert all(type(v) in (int, bool) for v in state.values())
    clone = Packer(ListDocuments([50, 3, 9]), seq_len=16, seed=2)
    clone.load_state_dict(state)
    np.testing.assert_array_equal(clone.next_sample().tokens, packer.next_sample().tokens)


def test_restore_rejects_a_different_seed_or_corpus():
    packer = Packer(ListDocuments([5, 5]), seq_len=4, seed=1)
    packer.next_sample()
    state = packer.state_dict()
    with pytest.raises(ValueError, match="seed"):
        Packer(ListDocuments([5, 5]), seq_len=4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_documents"):
        Packer(ListDocuments([5, 5, 5]), seq_len=4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="corpus changed"):
        Packer(ListDocuments([2, 2]), seq_len=4, seed=1).load_state_dict(state)


def test_documents_are_read_lazily():
    docs = ListDocuments([100] * 1000)
    packer = Packer(docs, seq_len=64, seed=0)
    assert not docs.reads
    take(packer, 3)  # 192 tokens: 2 documents (this source has no lengths: reading tells them)
    assert len(docs.reads) == 2


def test_negative_seed_is_accepted_and_deterministic():
    a = stream(take(Packer(ListDocuments([3, 4, 5, 6]), 5, seed=-1), 6))
    b = stream(take(Packer(ListDocuments([3, 4, 5, 6]), 5, seed=-1), 6))
    np.testing.assert_array_equal(a, b)
