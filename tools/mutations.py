"""The one-line breaks that `tools/mutate.py` applies, one at a time, to the rules the project rests on.

Each names the file, an exact snippet of it (which must occur there exactly once), what replaces it, and the
tests that must fail when it is replaced. When the code moves, `tests/unit/test_mutation_list.py` fails on the
snippet that is no longer there: update the entry to the code as it now is, then run `make mutate`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    """One break of one rule, and the pytest selection (files or node ids) that must notice it."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    description: str


NORMALIZE = "lm/normalize.py"
NORMALIZE_TESTS = ("tests/unit/lm/test_normalize.py",)
SCORING = "lm/scoring.py"
SCORING_TESTS = ("tests/unit/lm/test_lm_scoring.py",)
TRAIN_STEP_TESTS = ("tests/unit/trainer/test_trainer_step.py",)
ENGINE = "service/engine.py"
ENGINE_TESTS = "tests/unit/service/test_service_engine.py"
RUNNER = "service/runner.py"
LIMITS = "service/limits.py"
LIMITS_TESTS = "tests/unit/service/test_service_limits.py"
SCORE_TESTS = "tests/unit/service/test_service_score.py"

MUTATIONS: tuple[Mutation, ...] = (
    # --- normalisation: each rule of lm/normalize.py ------------------------------------------------------------
    Mutation(
        "pct-alone",
        NORMALIZE,
        'if hi - lo == 1 and w[lo] == "%":',
        "if False:",
        NORMALIZE_TESTS,
        'a standalone "%" is dropped instead of becoming N ("rose 5 % to")',
    ),
    Mutation(
        "pct-suffix",
        NORMALIZE,
        'if w[hi - 1] == "%" and hi - lo > 1:',
        "if False:",
        NORMALIZE_TESTS,
        'the "%" of "5%" is dropped instead of becoming N',
    ),
    Mutation(
        "lower-case",
        NORMALIZE,
        "word = word.lower()",
        "word = word",
        NORMALIZE_TESTS,
        "text is not lower-cased",
    ),
    Mutation(
        "curly-quotes",
        NORMALIZE,
        ".translate(_TRANSLATE)",
        "",
        NORMALIZE_TESTS,
        "curly quotes and apostrophes are not made straight",
    ),
    Mutation(
        "number",
        NORMALIZE,
        "if self.all_number_chars(lo, hi) and _NUMBER.match(w[lo:hi]):",
        "if False:",
        NORMALIZE_TESTS,
        "numbers are not written N",
    ),
    Mutation(
        "currency",
        NORMALIZE,
        "                return sign\n",
        "                return None\n",
        NORMALIZE_TESTS,
        "a currency sign is not split off its amount",
    ),
    Mutation(
        "nt-clitic",
        NORMALIZE,
        'if w.endswith("n\'t", lo, hi) and hi - lo > 3:',
        "if False:",
        NORMALIZE_TESTS,
        "n't is not split off (didn't -> did n't)",
    ),
    Mutation(
        "clitics",
        NORMALIZE,
        '_CLITICS = ("\'s", "\'re", "\'ve", "\'ll", "\'d", "\'m")',
        "_CLITICS = ()",
        NORMALIZE_TESTS,
        "'s 're 've 'll 'd 'm are not split off",
    ),
    Mutation(
        "plural-possessive",
        NORMALIZE,
        '        if self.possessive_end(lo, hi):\n            return "\'"\n',
        "",
        NORMALIZE_TESTS,
        "a plural possessive loses its apostrophe token (funds' -> funds)",
    ),
    Mutation(
        "slash-escape",
        NORMALIZE,
        'escaped = w[lo:hi].replace("/", "\\\\/").replace("*", "\\\\*")',
        "escaped = w[lo:hi]",
        NORMALIZE_TESTS,
        "/ is not written \\/ as in the corpus",
    ),
    Mutation(
        "trailing-punctuation",
        NORMALIZE,
        '_TRAILING = set("\\"\')]}>,.;:!?")',
        '_TRAILING = set("\\"\')]}>")',
        NORMALIZE_TESTS,
        "a trailing comma, period, colon, ... stays on the word",
    ),
    Mutation(
        "known-abbreviation",
        NORMALIZE,
        "                if self.known(i, j):\n                    return i, j\n",
        "                pass\n",
        NORMALIZE_TESTS,
        "an abbreviation the vocabulary holds loses its period (corp. -> corp)",
    ),
    Mutation(
        "ptb-n",
        NORMALIZE,
        "if word == NUM:",
        "if False:",
        NORMALIZE_TESTS,
        "PTB's own N is lower-cased (normalising PTB text changes it)",
    ),
    Mutation(
        "emoji-dropped",
        NORMALIZE,
        "accumulate(map(_is_punct, self.w), initial=0)",
        "accumulate(map(lambda c: not c.isalnum(), self.w), initial=0)",
        (
            "tests/unit/service/test_service_reliability.py::test_emoji_right_to_left_and_control_characters_are_scored_as_unk",
        ),
        "a word of symbols (an emoji) is dropped like punctuation instead of being scored as <unk>",
    ),
    # --- the vocabulary and the checkpoint ------------------------------------------------------------------------
    Mutation(
        "oov-to-unk",
        "lm/vocab.py",
        "return [self.stoi.get(t, self.unk_id) for t in tokens]",
        "return [self.stoi.get(t, self.eos_id) for t in tokens]",
        ("tests/unit/lm/test_lm_vocab.py",),
        "a word outside the vocabulary is encoded as <eos>, not <unk>",
    ),
    Mutation(
        "vocab-order",
        "lm/vocab.py",
        "return -counts.get(w, 0), w",
        "return counts.get(w, 0), w",
        ("tests/unit/lm/test_lm_vocab.py",),
        "the vocabulary is ordered rarest first (ids differ from the tutorial's)",
    ),
    Mutation(
        "checkpoint-checksum",
        "lm/checkpoint.py",
        'if digest != meta.get("weights_sha256"):',
        "if False:",
        ("tests/unit/lm/test_lm_checkpoint.py",),
        "the weights' sha256 is not checked against config.json",
    ),
    # --- scoring ----------------------------------------------------------------------------------------------------
    Mutation(
        "ranks-strict",
        SCORING,
        "(logdist > lp_target).sum(-1)",
        "(logdist >= lp_target).sum(-1)",
        ("tests/unit/lm/test_lm_scoring.py::test_ranks_count_the_strictly_more_probable_words",),
        "a token's rank counts the words at least as probable (itself included), not the strictly more probable",
    ),
    Mutation(
        "chunk-state",
        SCORING,
        "feats, state = model.features(ids[:active, start : start + step], state)",
        "feats, state = model.features(ids[:active, start : start + step], None)",
        SCORING_TESTS,
        "the LSTM state is not carried from one chunk of time steps to the next",
    ),
    Mutation(
        "float32-log-softmax",
        "lm/model.py",
        "return torch.log_softmax(self.decoder(features), dim=-1, dtype=torch.float32)",
        "return torch.log_softmax(self.decoder(features), dim=-1)",
        SCORING_TESTS,
        "the log-softmax runs in the model's dtype (bfloat16) instead of float32",
    ),
    Mutation(
        "stream-predictions",
        SCORING,
        "return -scores.total, scores.logprobs.numel()",
        "return -scores.total, scores.logprobs.numel() + 1",
        (
            "tests/unit/lm/test_lm_scoring.py::test_stream_nll_sums_the_token_logprobs",
            "tests/unit/lm/test_lm_scoring.py::test_uniform_model_gives_perplexity_equal_to_vocabulary_size",
            "tests/unit/trainer/test_trainer_evaluate.py::test_uniform_model_perplexity_is_the_vocabulary_size",
        ),
        "the first token of a stream is counted as a prediction (perplexity over one token too many)",
    ),
    # --- training ---------------------------------------------------------------------------------------------------
    Mutation(
        "eos-per-line",
        "trainer/data.py",
        "        words.append(EOS)\n",
        "",
        ("tests/unit/trainer/test_trainer_data.py",),
        "the reader does not append <eos> to each line",
    ),
    Mutation(
        "targets-shift",
        "trainer/data.py",
        "batched[:, s + 1 : s + num_steps + 1]",
        "batched[:, s : s + num_steps]",
        ("tests/unit/trainer/test_trainer_data.py",),
        "targets are the inputs, not the inputs shifted by one token",
    ),
    Mutation(
        "lr-schedule",
        "trainer/configs.py",
        "max(epoch - config.decay_after, 0)",
        "max(epoch - config.decay_after + 1, 0)",
        ("tests/unit/trainer/test_trainer_configs.py",),
        "the learning rate decays one epoch early",
    ),
    Mutation(
        "bptt-detach",
        "trainer/train.py",
        "hidden = detach_state(hidden)  # truncated BPTT",
        "hidden = hidden  # truncated BPTT",
        TRAIN_STEP_TESTS,
        "the carried state is not detached at a window boundary (backpropagation into the previous window)",
    ),
    Mutation(
        "loss-times-steps",
        "trainer/train.py",
        "(loss * config.num_steps).backward()",
        "loss.backward()",
        TRAIN_STEP_TESTS,
        "the per-token loss is not scaled by num_steps (lr and the clipping norm lose the paper's meaning)",
    ),
    Mutation(
        "grad-clip",
        "trainer/train.py",
        "    nn.utils.clip_grad_norm_(objective.parameters(), config.max_grad_norm)\n",
        "",
        TRAIN_STEP_TESTS,
        "the gradient's global norm is not clipped",
    ),
    # --- the service: encoding, engine, runner, limits, responses, metrics ---------------------------------------
    Mutation(
        "priming-eos",
        "lm/encoding.py",
        "tokens, oov, ids = [], [], [vocab.eos_id]",
        "tokens, oov, ids = [], [], []",
        (
            f"{SCORE_TESTS}::test_score_equals_a_plain_forward_pass",
            "tests/unit/trainer/test_trainer_evaluate.py::test_score_lines_primes_with_eos_and_predicts_the_final_eos",
        ),
        "a sentence is not primed with <eos> (its first word is never predicted)",
    ),
    Mutation(
        "perplexity",
        SCORING,
        "return math.exp(-logprob / num_tokens)",
        "return math.exp(-logprob / (num_tokens + 1))",
        (f"{SCORE_TESTS}::test_score_equals_a_plain_forward_pass",),
        "a sentence's perplexity divides by one prediction too many",
    ),
    Mutation(
        "queue-bound",
        ENGINE,
        "return self._live + n <= self.max_queue",
        "return True",
        (f"{ENGINE_TESTS}::test_queue_full_is_all_or_nothing",),
        "the queue takes work past max_queue",
    ),
    Mutation(
        "max-wait-units",
        ENGINE,
        "self.max_wait = settings.max_wait_ms / 1000.0",
        "self.max_wait = settings.max_wait_ms / 100.0",
        (f"{ENGINE_TESTS}::test_a_lone_item_waits_max_wait_ms_for_company_then_runs",),
        "the oldest item waits 10 x max_wait_ms",
    ),
    Mutation(
        "max-wait-ignored",
        ENGINE,
        "self._gather(oldest + self.max_wait)",
        "self._gather(oldest + 0.1)",
        (f"{ENGINE_TESTS}::test_a_lone_item_waits_max_wait_ms_for_company_then_runs",),
        "the oldest item waits a fixed 100 ms, whatever max_wait_ms says",
    ),
    Mutation(
        "batch-trigger",
        ENGINE,
        'return "timeout"',
        'return "full"',
        ("tests/unit/service/test_service_metrics.py::test_the_engine_really_batches_concurrent_requests",),
        "a batch closed by the wait is counted as closed because it was full",
    ),
    Mutation(
        "sparse-never",
        ENGINE,
        "if self._company >= COMPANY_LIKELY:",
        "if True:",
        (f"{ENGINE_TESTS}::test_calls_that_come_apart_stop_waiting_for_company",),
        "a lone client waits max_wait_ms for company on every call",
    ),
    Mutation(
        "sparse-always",
        ENGINE,
        "self._company += COMPANY_WEIGHT * (close - self._company)",
        "self._company = 0.0",
        (f"{ENGINE_TESTS}::test_calls_that_come_close_together_still_wait_for_company",),
        "a batch that is not full never waits for company",
    ),
    Mutation(
        "lanes-no-share",
        ENGINE,
        "batch = self._take(min(self.max_batch_sequences, share))",
        "batch = self._take(self.max_batch_sequences)",
        (f"{ENGINE_TESTS}::test_lanes_run_batches_side_by_side_and_share_the_queue",),
        "the first free lane takes the whole queue and leaves the others idle",
    ),
    Mutation(
        "lane-share-queue-only",
        ENGINE,
        "share = -(-self._in_hand() // self.lanes)",
        "share = -(-self._live // (self.lanes - len(self._passes)))",
        (f"{ENGINE_TESTS}::test_a_lane_that_comes_free_beside_a_small_pass_takes_its_share_not_the_whole_queue",),
        "a lane that comes free beside a running pass takes the whole queue (uneven batches, a p99 twice the p50)",
    ),
    Mutation(
        "lanes-wide-beside",
        ENGINE,
        "if self._wide or len(self._passes) >= self.lanes:",
        "if len(self._passes) >= self.lanes:",
        (f"{ENGINE_TESTS}::test_a_batch_with_nothing_else_queued_runs_alone_on_every_thread",),
        "a pass on every thread has other passes started beside it (more threads than cores)",
    ),
    Mutation(
        "length-sort",
        ENGINE,
        "batch.sort(key=lambda e: e.job.num_tokens, reverse=True)",
        "batch.sort(key=lambda e: e.job.num_tokens, reverse=False)",
        (f"{ENGINE_TESTS}::test_items_are_sorted_by_length_and_each_future_gets_its_own_result",),
        "a batch is not ordered longest first",
    ),
    Mutation(
        "cancelled-computed",
        ENGINE,
        "return self.queued and not self.future.done()",
        "return True",
        (f"{ENGINE_TESTS}::test_cancelled_items_are_not_computed",),
        "work nobody waits for any more (its client left) is computed anyway",
    ),
    Mutation(
        "dtype",
        RUNNER,
        "self.model = ckpt.model.to(self.device, self.dtype).eval()",
        "self.model = ckpt.model.to(self.device).eval()",
        ("tests/unit/service/test_service_ops.py::test_dtype_is_what_the_model_computes_in",),
        "LMSERVE_DTYPE is ignored: the weights stay float32",
    ),
    Mutation(
        "watch-ignores-gone",
        ENGINE,
        'call.end("gone")',
        "None",
        (f"{ENGINE_TESTS}::test_run_for_a_caller_that_went_away_drops_the_jobs",),
        "the engine asks a waiting call's client whether it went, and keeps its jobs queued when it did",
    ),
    Mutation(
        "probe-swallows-cancel",
        "service/http.py",
        "        step.throw(asyncio.CancelledError())",
        "        return None",
        ("tests/unit/service/test_service_disconnect.py",),
        "a receive channel that would wait is dropped, not cancelled: what it does on cancellation is skipped",
    ),
    Mutation(
        "heap-not-frozen",
        "service/memory.py",
        "    gc.freeze()\n",
        "",
        ("tests/unit/service/test_service_memory.py",),
        "the steady heap leaves what startup built in the garbage collector's reach (a full collection: ~170 ms)",
    ),
    Mutation(
        "sigint-not-remembered",
        "trainer/interrupt.py",
        "_requested.set()",
        "pass",
        ("tests/unit/trainer/test_trainer_interrupt.py",),
        "a Ctrl-C whose KeyboardInterrupt a finalizer dropped is forgotten: training runs on until killed",
    ),
    Mutation(
        "heap-threshold-ignored",
        "service/app.py",
        "with steady_heap(settings.gc_threshold):",
        "with steady_heap(0):",
        ("tests/unit/service/test_service_memory.py",),
        "the service never puts itself on the steady heap (LMSERVE_GC_THRESHOLD is ignored)",
    ),
    Mutation(
        "lane-threads",
        RUNNER,
        "torch.set_num_threads(self.wide_threads if wide else self.lane_threads)",
        "torch.set_num_threads(self.wide_threads)",
        ("tests/unit/service/test_service_lanes.py::test_a_lane_takes_its_share_of_the_threads_in_its_own_thread",),
        "a pass beside others takes every thread too",
    ),
    Mutation(
        "wide-every-thread",
        RUNNER,
        "return max(share, threads - (lanes - 1) * (share - 1))",
        "return threads",
        (
            "tests/unit/service/test_service_lanes.py::test_a_lane_takes_its_share_of_the_threads_in_its_own_thread",
            "tests/unit/service/test_service_threads.py",
        ),
        "a pass alone takes every thread, beside the teams the other lanes keep (more OpenMP threads than threads)",
    ),
    Mutation(
        "company-from-idle",
        ENGINE,
        "close = self._in_hand() > 0 and now - self._last_call < self.max_wait",
        "close = now - self._last_call < self.max_wait",
        (f"{ENGINE_TESTS}::test_a_client_alone_calling_again_at_once_is_no_company_to_itself",),
        "a call to an idle engine counts as company (a client alone with quick answers waits on every call)",
    ),
    Mutation(
        "non-finite",
        RUNNER,
        "if not finite:",
        "if False:",
        (
            "tests/unit/service/test_service_overload.py::test_non_finite_output_is_an_error_not_a_number",
            "tests/unit/service/test_runner_totals.py",
        ),
        "a NaN or infinite log-probability is returned as a number",
    ),
    Mutation(
        "oom-split",
        RUNNER,
        "return self.run(jobs[:half]) + self.run(jobs[half:])",
        "raise",
        ("tests/unit/service/test_service_reliability.py::test_out_of_memory_splits_the_batch_and_retries",),
        "a batch that runs out of device memory fails instead of being split and retried",
    ),
    Mutation(
        "max-chars",
        LIMITS,
        "if len(text) > self.max_chars:",
        "if len(text) > self.max_chars + 1:",
        (f"{LIMITS_TESTS}::test_max_chars",),
        "a sentence one character over max_chars is accepted",
    ),
    Mutation(
        "max-tokens",
        LIMITS,
        "if len(words) > self.max_tokens:",
        "if len(words) >= self.max_tokens:",
        (f"{LIMITS_TESTS}::test_max_tokens_counts_tokens_after_normalisation",),
        "a sentence of exactly max_tokens tokens is refused",
    ),
    Mutation(
        "max-sentences",
        LIMITS,
        "if n > self.max_sentences:",
        "if n > self.max_sentences + 1:",
        (f"{LIMITS_TESTS}::test_max_sentences",),
        "a request of max_sentences + 1 sentences is accepted",
    ),
    Mutation(
        "candidate-rank",
        "service/adapters/native.py",
        "rank = int((logdist > v).sum()) + 1",
        "rank = int((logdist >= v).sum()) + 1",
        (
            "tests/unit/service/test_service_next_word.py::"
            "test_candidates_get_their_prob_and_a_rank_consistent_with_the_top_k",
        ),
        "a candidate's rank counts itself among the more probable words",
    ),
    Mutation(
        "metric-renamed",
        "service/metrics.py",
        'p + "batch_size", "Sequences per forward pass"',
        'p + "batch_sequences", "Sequences per forward pass"',
        (
            "tests/unit/service/test_service_reliability.py::test_work_of_a_client_that_disconnects_is_dropped_not_computed",
        ),
        "lmserve_batch_size is renamed: a check that it is 0 must not pass on its absence",
    ),
)
