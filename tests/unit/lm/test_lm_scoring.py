"""Scoring: exact against a plain forward pass, independent of chunking and of padding in a batch."""

from __future__ import annotations

import math

import pytest
import torch

from lm.model import LSTMLanguageModel, ModelConfig
from lm.scoring import final_states, next_from_states, next_token_logprobs, score_tokens, stream_nll, token_logprobs


def reference_logprobs(model, seq: list[int]) -> torch.Tensor:
    """log p(seq[t+1] | seq[:t+1]) from one plain forward pass of the whole sequence."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq]))
    lp = torch.log_softmax(logits[0].double(), dim=-1)
    return lp[torch.arange(len(seq) - 1), torch.tensor(seq[1:])]


@pytest.fixture
def sequences() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    lengths = [9, 1, 23, 2, 14, 5]
    return [torch.randint(0, 12, (n,), generator=g).tolist() for n in lengths]


def test_token_logprobs_matches_a_plain_forward_pass(make_model, sequences) -> None:
    model = make_model()
    got = token_logprobs(model, sequences)
    assert len(got) == len(sequences)
    for seq, lp in zip(sequences, got, strict=True):
        assert lp.dtype == torch.float32
        assert lp.shape == (len(seq) - 1,)
        if len(seq) > 1:
            torch.testing.assert_close(lp.double(), reference_logprobs(model, seq), rtol=0, atol=1e-5)
        assert (lp <= 0).all()


@pytest.mark.parametrize("max_chunk_tokens", [1, 2, 3, 7, 20])
def test_small_chunks_equal_one_pass(make_model, sequences, max_chunk_tokens: int) -> None:
    model = make_model()
    one_pass = token_logprobs(model, sequences, max_chunk_tokens=10_000)
    chunked = token_logprobs(model, sequences, max_chunk_tokens=max_chunk_tokens)
    for a, b in zip(one_pass, chunked, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_single_long_sequence_in_chunks(make_model) -> None:
    model = make_model()
    seq = torch.randint(0, 12, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    reference = reference_logprobs(model, seq)
    for chunk in (1, 4, 49, 50, 51):
        (lp,) = token_logprobs(model, [seq], max_chunk_tokens=chunk)
        torch.testing.assert_close(lp.double(), reference, rtol=0, atol=1e-5)


def test_padding_in_a_batch_equals_each_scored_alone(make_model, sequences) -> None:
    model = make_model()
    together = token_logprobs(model, sequences)
    for seq, lp in zip(sequences, together, strict=True):
        (alone,) = token_logprobs(model, [seq])
        assert lp.shape == alone.shape
        torch.testing.assert_close(lp, alone, rtol=0, atol=1e-5)
    # The same with chunks small enough that rows leave the batch between chunks.
    for seq, lp in zip(sequences, token_logprobs(model, sequences, max_chunk_tokens=5), strict=True):
        torch.testing.assert_close(lp, token_logprobs(model, [seq])[0], rtol=0, atol=1e-5)


def test_a_bfloat16_model_is_scored_with_a_float32_log_softmax(make_model, sequences) -> None:
    """The network runs in bfloat16, the log-softmax in float32: each answer is the float32 log-softmax of the
    bfloat16 logits the decoder produced, which a bfloat16 log-softmax (8 bits of mantissa) misses by ~1e-2."""
    model = make_model().to(torch.bfloat16)
    seen: list[torch.Tensor] = []
    hook = model.decoder.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        for seq in (s for s in sequences if len(s) >= 2):
            seen.clear()
            (sc,) = score_tokens(model, [seq])
            (logits,) = seen  # (n, V): one row per prediction, one chunk
            assert logits.dtype == torch.bfloat16
            assert sc.logprobs.dtype == torch.float32
            expected = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(seq) - 1), seq[1:]]
            torch.testing.assert_close(sc.logprobs, expected, rtol=0, atol=1e-6)
    finally:
        hook.remove()


def test_results_come_back_in_input_order(make_model) -> None:
    model = make_model()
    short, long = [1, 2, 3], [4, 5, 6, 7, 8, 9, 10]
    a = token_logprobs(model, [short, long])
    b = token_logprobs(model, [long, short])
    torch.testing.assert_close(a[0], b[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=1e-6)


def test_empty_inputs(make_model) -> None:
    model = make_model()
    assert token_logprobs(model, []) == []
    with pytest.raises(ValueError):
        token_logprobs(model, [[1, 2], []])
    with pytest.raises(ValueError):
        next_token_logprobs(model, [[]])


def test_next_token_logprobs_is_the_last_position_of_the_forward_pass(make_model, sequences) -> None:
    model = make_model()
    got = next_token_logprobs(model, sequences)
    assert got.shape == (len(sequences), model.config.vocab_size)
    assert got.dtype == torch.float32
    for row, seq in zip(got, sequences, strict=True):
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq]))
        torch.testing.assert_close(row, torch.log_softmax(logits[0, -1], dim=-1), rtol=0, atol=1e-5)
        assert abs(row.double().exp().sum().item() - 1.0) < 1e-5
    torch.testing.assert_close(next_token_logprobs(model, sequences, max_chunk_tokens=3), got, rtol=0, atol=1e-5)


def test_next_token_consistent_with_token_logprobs(make_model) -> None:
    model = make_model()
    seq = [1, 2, 3, 4, 5, 6]
    (lp,) = token_logprobs(model, [seq])
    dist = next_token_logprobs(model, [seq[:-1]])[0]
    assert abs(dist[seq[-1]].item() - lp[-1].item()) < 1e-5


def test_stream_nll_sums_the_token_logprobs(make_model) -> None:
    model = make_model()
    ids = torch.randint(0, 12, (40,), generator=torch.Generator().manual_seed(5))
    nll, n = stream_nll(model, ids, max_chunk_tokens=6)
    assert n == 39
    assert math.isclose(nll, -reference_logprobs(model, ids.tolist()).sum().item(), rel_tol=1e-6)
    nll_list, n_list = stream_nll(model, ids.tolist())
    assert n_list == n
    assert math.isclose(nll_list, nll, rel_tol=1e-6)


def test_uniform_model_gives_perplexity_equal_to_vocabulary_size(make_model) -> None:
    model = make_model(vocab_size=37)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    ids = torch.randint(0, 37, (101,), generator=torch.Generator().manual_seed(0))
    nll, n = stream_nll(model, ids, max_chunk_tokens=16)
    assert n == 100
    assert abs(math.exp(nll / n) - 37) < 1e-4


def test_ranks_count_the_strictly_more_probable_words() -> None:
    torch.manual_seed(0)
    model = LSTMLanguageModel(ModelConfig(20, 6, 6, 1))
    model.init_weights(0.5)
    model.eval()
    seqs = [[1, 4, 7, 2, 9], [1, 3]]
    scores = score_tokens(model, seqs, max_chunk_tokens=3, ranks=True)
    for seq, sc in zip(seqs, scores, strict=True):
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[:-1]]))
        for t, target in enumerate(seq[1:]):
            row = logits[0, t]
            assert sc.ranks[t].item() == int((row > row[target]).sum()) + 1
    assert score_tokens(model, seqs)[0].ranks is None


def reference_state(model, seq: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c), each (L, H), after one plain forward pass over the whole sequence."""
    with torch.no_grad():
        _, (h, c) = model(torch.tensor([seq]))
    return h[:, 0], c[:, 0]


@pytest.mark.parametrize("max_chunk_tokens", [8192, 3])
def test_final_states_are_each_sequences_own_not_the_paddings(make_model, sequences, max_chunk_tokens) -> None:
    model = make_model()
    h, c = final_states(model, sequences, max_chunk_tokens=max_chunk_tokens)
    assert h.shape == c.shape == (model.config.num_layers, len(sequences), model.config.hidden_size)
    for i, seq in enumerate(sequences):
        ref_h, ref_c = reference_state(model, seq)
        torch.testing.assert_close(h[:, i], ref_h, rtol=0, atol=1e-5)
        torch.testing.assert_close(c[:, i], ref_c, rtol=0, atol=1e-5)


def test_final_states_continue_from_a_given_state(make_model, sequences) -> None:
    """Running a prefix, then the rest from the prefix's state, ends where running the whole sequence ends;
    an empty rest returns the given state; rows without a state start from zeros."""
    model = make_model()
    whole = sequences[2]  # 23 tokens
    split = [1, 10, 22, 23]
    prefix_states = final_states(model, [whole[:n] for n in split])
    initial = [(prefix_states[0][:, i], prefix_states[1][:, i]) for i in range(len(split))]
    rests = [whole[n:] for n in split]
    h, c = final_states(model, [*rests, sequences[0]], [*initial, None])
    ref_h, ref_c = reference_state(model, whole)
    for i in range(len(split)):
        torch.testing.assert_close(h[:, i], ref_h, rtol=0, atol=1e-5)
        torch.testing.assert_close(c[:, i], ref_c, rtol=0, atol=1e-5)
    torch.testing.assert_close(h[:, -1], reference_state(model, sequences[0])[0], rtol=0, atol=1e-5)
    # The distribution after the whole sequence, from its state alone.
    with torch.no_grad():
        logits, _ = model(torch.tensor([whole]))
    expected = torch.log_softmax(logits[0, -1].float(), -1)
    torch.testing.assert_close(next_from_states(model, h[:, :1])[0], expected, rtol=0, atol=1e-5)


def test_final_states_refuses_an_empty_sequence_without_a_state(make_model) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="initial state"):
        final_states(model, [[1, 2], []])
    with pytest.raises(ValueError, match="2 sequences but 1"):
        final_states(model, [[1], [2]], [None])


def test_one_more_token_for_every_row_takes_the_cell_path_and_agrees(make_model, sequences) -> None:
    """Type-ahead: each row a cached prefix plus one word (the LSTM cells run directly, not nn.LSTM)."""
    model = make_model()
    rows = [s for s in sequences if len(s) >= 2]
    h0, c0 = final_states(model, [s[:-1] for s in rows])
    h, c = final_states(model, [s[-1:] for s in rows], [(h0[:, i], c0[:, i]) for i in range(len(rows))])
    for i, seq in enumerate(rows):
        ref_h, ref_c = reference_state(model, seq)
        torch.testing.assert_close(h[:, i], ref_h, rtol=0, atol=1e-5)
        torch.testing.assert_close(c[:, i], ref_c, rtol=0, atol=1e-5)


def test_top_words_come_from_the_same_row_as_the_token(make_model, sequences) -> None:
    model = make_model()
    plain = score_tokens(model, sequences)
    scored = score_tokens(model, sequences, top=3, max_chunk_tokens=7)
    for seq, p, s in zip(sequences, plain, scored, strict=True):
        assert s.top_logprobs.shape == (len(seq) - 1, 3) and s.top_ids.shape == (len(seq) - 1, 3)
        torch.testing.assert_close(s.logprobs, p.logprobs, rtol=0, atol=1e-5)
        for t in range(len(seq) - 1):
            reference = torch.log_softmax(reference_dist_logits(model, seq[: t + 1]), dim=-1)
            assert s.top_ids[t].tolist() == torch.topk(reference, 3).indices.tolist()
            row = dict(zip(s.top_ids[t].tolist(), s.top_logprobs[t].tolist(), strict=True))
            if seq[t + 1] in row:  # the token is among the top: the very same float
                assert row[seq[t + 1]] == s.logprobs[t].item()
            assert (s.top_logprobs[t][:-1] >= s.top_logprobs[t][1:]).all()


def reference_dist_logits(model, prefix: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = model(torch.tensor([prefix]))
    return logits[0, -1].double()
