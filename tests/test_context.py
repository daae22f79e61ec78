"""Context training: pair lines, context sequences and their loss weights, <sep> growth, reply
validation, and reply generation feeding exactly the trained context."""

from __future__ import annotations

import random

import numpy as np
import pytest
import tensorflow as tf
from conftest import greedy_reference, write_corpus

from tweetgen import context, corpus
from tweetgen.checkpoints import CheckpointManager
from tweetgen.context import Example, encode_example, reply_prefix, with_context_share
from tweetgen.generate import Generator
from tweetgen.model import build_model
from tweetgen.train import bits_per_char, loss_weights, masked_loss_sum, model_inputs, pad_batch
from tweetgen.trainer import Trainer, TrainJob, build_data
from tweetgen.vocab import EOS, NO_LOSS, SEP, Vocab

CONFIG = {"input_mode": "embedding", "embedding_dim": 8, "gru_sizes": [16], "dropout": 0.0}
QUESTIONS = ["how are you", "what is your name", "do you like tea", "where do you live",
             "is it raining", "what time is it", "can you sing", "who made you"]
ANSWERS = ["fine thanks", "i am tweetgen", "yes with milk", "in a database", "no it is sunny",
           "time for tea", "la la la", "a person"]


def pair_lines(count: int) -> list[str]:
    """Distinct pair lines (numbered, so some land in the validation split)."""
    return [f"{QUESTIONS[i % 8]} {i}\t{ANSWERS[i % 8]} {i}" for i in range(count)]


# ---------------------------------------------------------------- pair lines in the corpus


def test_a_pair_keeps_its_first_tab_and_other_tabs_are_spaces(tmp_path) -> None:
    assert corpus.clean_pair_text(" hi \t\tthere \t you ") == "hi\tthere you"
    assert corpus.clean_pair_text("\tonly a reply") == "only a reply"  # an empty side: no pair
    assert corpus.clean_pair_text("a \n b") == "a b"
    assert corpus.plain_text("hi\tthere") == "hi there"
    path = write_corpus(tmp_path / "c.txt", [])
    corpus.append_lines(path, ["hello\tworld", "no pair\t", "one\ttwo\tthree"])
    assert corpus.read_lines(path).lines == ["hello\tworld", "no pair", "one\ttwo three"]


def test_examples_by_mode() -> None:
    lines = ["hello\tworld", "single line", "next"]
    assert context.examples(lines, "none") == [Example("hello world"), Example("single line"),
                                               Example("next")]
    assert context.examples(lines, "pairs") == [Example("world", "hello"), Example("single line"),
                                                Example("next")]
    assert context.examples(lines, "previous-line") == [
        Example("hello world"), Example("single line", "hello world"), Example("next", "single line")]
    # A sample of lines is not a conversation: no line answers another.
    assert context.replies(context.examples(lines, "previous-line", consecutive=False)) == []


# ---------------------------------------------------------------- sequences and the loss mask


VOCAB = Vocab.build(["hello there", "hi you"], reserve_sep=True)


def test_a_context_sequence_flags_the_message_and_sep_as_read_only() -> None:
    sequence, unknown = encode_example(Example("hi", "hello"), VOCAB, 280)
    message = VOCAB.encode("hello")[0]
    reply = VOCAB.encode("hi")[0]
    expected = [EOS, *(message + NO_LOSS), VOCAB.sep_id + NO_LOSS, *reply, EOS]
    assert sequence.tolist() == expected and unknown == 0
    single, _ = encode_example(Example("hi"), VOCAB, 280)
    assert single.tolist() == [EOS, *reply, EOS]
    # Unknown characters of the message are counted too.
    assert encode_example(Example("hi", "hello Z"), VOCAB, 280)[1] == 1


def test_loss_weights_train_the_reply_and_its_end_only() -> None:
    with_message, _ = encode_example(Example("hi", "hello"), VOCAB, 280)
    single, _ = encode_example(Example("you"), VOCAB, 280)
    batch = tf.constant(pad_batch([with_message, single]))
    weights = loss_weights(batch[:, 1:]).numpy()
    # Targets of row 0: h e l l o <sep> (read only), then h i <eos> (trained).
    assert weights[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert weights[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]  # "you" <eos>, then padding
    inputs = model_inputs(batch).numpy()
    assert inputs.max() < VOCAB.size  # the model never sees a flag
    assert inputs[0].tolist() == [EOS, *VOCAB.encode("hello")[0], VOCAB.sep_id, *VOCAB.encode("hi")[0]]

    model = build_model(VOCAB.size, CONFIG)
    logits = model(model_inputs(batch))
    total, count = masked_loss_sum(batch[:, 1:], logits)
    labels = tf.bitwise.bitwise_and(batch[:, 1:], NO_LOSS - 1)
    each = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits).numpy()
    assert float(count) == 3 + 4
    assert float(total) == pytest.approx(float(each[0, 6:].sum() + each[1, :4].sum()), rel=1e-5)


def test_a_long_message_is_cut_from_the_left_to_fit_max_line_chars() -> None:
    sequence, _ = encode_example(Example("hi", "hello there"), VOCAB, 8)
    # room for the message: 8 - len("hi") - 1 (<sep>) = 5 characters, its end: "there".
    assert len(sequence) == 8 + 2
    assert (sequence[1:6] - NO_LOSS).tolist() == VOCAB.encode("there")[0].tolist()
    # A reply that fills the whole length leaves no room: trained alone, cut, without its end.
    long_reply, _ = encode_example(Example("hello there", "hi"), VOCAB, 8)
    assert long_reply.tolist() == [EOS, *VOCAB.encode("hello th")[0]]
    # A vocabulary without <sep> (made before it existed) trains single lines only.
    old = Vocab.build(["hello there", "hi you"])
    assert encode_example(Example("hi", "hello"), old, 280)[0].tolist() == [EOS, *old.encode("hi")[0], EOS]


def test_the_context_share_is_drawn_with_the_seed() -> None:
    items = [Example(f"reply {i}", f"message {i}") for i in range(1000)]
    first = with_context_share(items, 0.3, random.Random("7-context"))
    assert first == with_context_share(items, 0.3, random.Random("7-context"))
    assert first != with_context_share(items, 0.3, random.Random("8-context"))
    assert 250 < len(context.replies(first)) < 350
    assert context.replies(with_context_share(items, 0.0, random.Random(1))) == []
    assert with_context_share(items, 1.0, random.Random(1)) == items


# ---------------------------------------------------------------- training with context


def test_pairs_training_data_and_reply_validation(make_settings, tmp_path) -> None:
    settings = make_settings(tmp_path, context_mode="pairs", context_share=1.0)
    lines = pair_lines(120) + ["a single line of text"] * 4
    write_corpus(settings.corpus_file, lines)
    vocab = Vocab.build([corpus.plain_text(line) for line in lines], reserve_sep=True)
    end = corpus.complete_end(settings.corpus_file)
    data = build_data(settings, vocab, TrainJob("train", 3, 0, end, 10))
    held_out = [line for line in pair_lines(120) if corpus.is_validation(line, settings.validation_fraction)]
    assert held_out, "the split holds some pairs out"
    assert len(data.reply_validation) == len(held_out) and len(data.validation) == len(held_out)
    # Validation (continue mode) reads the held-out replies alone; reply validation after their message.
    reply = held_out[0].split("\t")[1]
    assert data.validation[0].tolist() == [EOS, *vocab.encode(reply)[0], EOS]
    assert (data.reply_validation[0] >= NO_LOSS).any()
    # With a share of 1 every training pair has its message; the single lines stay single.
    flagged = sum(int((seq >= NO_LOSS).any()) for seq in data.train)
    assert flagged == 120 - len(held_out) and len(data.train) == 124 - len(held_out)


def test_an_old_vocabulary_grows_sep_at_no_cost_and_trains_replies(make_settings, tmp_path) -> None:
    plain = make_settings(tmp_path, context_mode="none")
    lines = pair_lines(80)
    write_corpus(plain.corpus_file, lines)
    old_vocab = Vocab.build(corpus.plain_text(line) for line in lines)  # made before <sep> existed
    assert old_vocab.sep_id is None
    end = corpus.complete_end(plain.corpus_file)
    trainer = Trainer.fresh(plain, old_vocab)
    assert trainer.vocab.sep_id is None  # context off: the vocabulary is left alone
    manager = CheckpointManager(tmp_path / "ckpts")
    job = TrainJob("train", 5, 0, end, 20)
    result = trainer.run(job, build_data(plain, old_vocab, job), manager)
    ckpt = manager.load_latest()
    assert ckpt.meta["context_mode"] == "none" and ckpt.meta["val_reply_bpc"] is None

    paired = make_settings(tmp_path, context_mode="pairs")
    grown = Trainer.from_checkpoint(paired, ckpt)
    assert grown.vocab.sep_id == old_vocab.size and grown.vocab.size == old_vocab.size + 1
    np.testing.assert_array_equal(grown.model.embed.embeddings.numpy()[: old_vocab.size],
                                  trainer.model.embed.embeddings.numpy())
    # Cost-free: the old characters' probabilities barely move (validation as before).
    data = build_data(paired, grown.vocab, TrainJob("train", 5, 0, end, 40))
    assert data.reply_validation
    singles = build_data(plain, old_vocab, job).validation
    assert bits_per_char(grown.model, singles) == pytest.approx(result.val_bpc, abs=1e-3)

    job2 = TrainJob("train", 5, 0, end, 40)
    job2.new_plan(grown.step, steps=20)
    grown.run(job2, data, manager)
    meta = manager.load_latest().meta
    assert meta["context_mode"] == "pairs" and meta["val_reply_bpc"] > 0
    assert Vocab.from_json(meta["vocab"]).sep_id is not None


# ---------------------------------------------------------------- reply generation


def test_reply_prefix_is_the_trained_context() -> None:
    ids = VOCAB.encode("hello")[0].tolist()
    assert reply_prefix("hello", VOCAB, "pairs", 280, 140)[0].tolist() == [EOS, *ids, VOCAB.sep_id]
    assert reply_prefix("hello", VOCAB, "previous-line", 280, 140)[0].tolist() == [EOS, *ids, VOCAB.sep_id]
    assert reply_prefix("hello", VOCAB, "none", 280, 140)[0].tolist() == [EOS, *ids, EOS]
    old = Vocab.build(["hello"])
    assert reply_prefix("hello", old, "pairs", 280, 140)[0].tolist() == [EOS, *old.encode("hello")[0], EOS]
    # The message is cut from the left as in training: room for max_line_chars - reply - <sep>.
    assert reply_prefix("hello there", VOCAB, "pairs", 8, 2)[0].tolist() == [
        EOS, *VOCAB.encode("there")[0], VOCAB.sep_id]


def test_a_context_trained_generator_feeds_message_then_sep() -> None:
    tf.keras.utils.set_random_seed(3)
    model = build_model(VOCAB.size, CONFIG)
    message_ids = VOCAB.encode("hello")[0].tolist()
    for mode, end in (("pairs", VOCAB.sep_id), ("none", EOS)):
        generator = Generator(model, VOCAB, 40, context_mode=mode, jit_compile=False)
        [reply] = generator.generate(["hello"], top_k=1, random_seed=0, mode="reply")
        assert reply.text == greedy_reference(model, VOCAB, [EOS, *message_ids, end], 40)


def test_sep_is_never_sampled(fixed_model) -> None:
    # <sep> is the likeliest id at every step: greedy decoding would pick it (and decode drops
    # it) unless it is banned; banned, the next likeliest character fills the tweet.
    model = fixed_model(VOCAB, {SEP: 50.0, "h": 30.0})
    [sample] = Generator(model, VOCAB, 20, context_mode="pairs").generate(["hi"], mode="reply", top_k=1,
                                                                          random_seed=1)
    assert sample.text == "h" * 20


def test_a_model_trained_with_context_uses_the_message(make_settings, tmp_path) -> None:
    """Each reply follows from its message alone: given the message its bits/char fall far below
    the same replies given nothing (the loss reached the reply through the message's inputs)."""
    colours = {"red": "apple", "yellow": "banana", "green": "pear", "purple": "plum"}
    lines = [f"{colour} {i % 3}\t{fruit}" for i in range(30) for colour, fruit in colours.items()]
    settings = make_settings(tmp_path, context_mode="pairs", context_share=1.0, learning_rate=0.01,
                             lr_warmup_steps=0, validation_fraction=0.01)
    write_corpus(settings.corpus_file, lines)
    vocab = Vocab.build([corpus.plain_text(line) for line in lines], reserve_sep=True)
    job = TrainJob("train", 1, 0, corpus.complete_end(settings.corpus_file), 0)
    job.new_plan(0, steps=150)
    trainer = Trainer.fresh(settings, vocab)
    trainer.run(job, build_data(settings, vocab, job), CheckpointManager(tmp_path / "ckpts"))
    pairs = context.examples([f"{colour} 9\t{fruit}" for colour, fruit in colours.items()], "pairs")
    given, _ = context.encode_examples(pairs, vocab, 280)
    alone, _ = context.encode_examples([item.single() for item in pairs], vocab, 280)
    with_message, without = bits_per_char(trainer.model, given), bits_per_char(trainer.model, alone)
    assert with_message < 0.5 < without - 0.3, (with_message, without)


def test_a_finetune_trains_new_and_replayed_pairs_with_context(make_settings, tmp_path) -> None:
    settings = make_settings(tmp_path, context_mode="pairs", context_share=1.0)
    old, new = pair_lines(200)[:120], pair_lines(200)[120:]
    write_corpus(settings.corpus_file, old)
    start = corpus.complete_end(settings.corpus_file)
    corpus.append_lines(settings.corpus_file, new)
    vocab = Vocab.build([corpus.plain_text(line) for line in old + new], reserve_sep=True)
    job = TrainJob("finetune", 9, start, corpus.complete_end(settings.corpus_file), 0, replay_ratio=1.0,
                   validation_base=[line for line in old if corpus.is_validation(line)])
    data = build_data(settings, vocab, job)
    assert data.new_lines and data.replay_lines
    # Every new and replayed pair is trained after its message (a share of 1).
    assert all((seq >= NO_LOSS).any() for seq in data.train)
    # Reply validation: the old held-out pairs and the new ones, never trained by this job.
    new_held_out = [line for line in new if corpus.is_validation(line, settings.new_validation_fraction)]
    assert len(data.reply_validation) == len(job.validation_base) + len(new_held_out)
    assert len(data.new_validation) == len(new_held_out)
    assert build_data(settings, vocab, job).train[5].tolist() == data.train[5].tolist()  # rebuilt alike
