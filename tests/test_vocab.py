"""The character vocabulary: reserved ids, round-trips, unknown characters, growing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tweetgen.vocab import EOS, PAD, RESERVED, UNK, Vocab, count_chars


def test_reserved_ids_come_first() -> None:
    vocab = Vocab.build(["ab"])
    assert (PAD, EOS, UNK) == (0, 1, 2)
    assert RESERVED == ("<pad>", "<eos>", "<unk>")
    assert vocab.size == 3 + 2
    ids, _ = vocab.encode("ab")
    assert all(i >= len(RESERVED) for i in ids)


def test_build_orders_by_frequency_then_code_point_and_drops_rare() -> None:
    vocab = Vocab.build(["aab", "bcc", "cz"], min_count=2)
    # counts: a2 b2 c3 z1 -> c first, then a and b by code point; z is too rare.
    assert vocab.chars == ("c", "a", "b")
    assert "z" not in vocab
    assert count_chars(["aab", "b"]) == {"a": 2, "b": 2}


def test_round_trip_of_known_text() -> None:
    text = "Hello, wörld! 🙂 tabs\tand spaces"
    vocab = Vocab.build([text])
    ids, unknown = vocab.encode(text)
    assert unknown == 0
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert vocab.decode(ids) == text


def test_unknown_characters_map_to_unk_and_are_counted() -> None:
    vocab = Vocab.build(["abc"])
    ids, unknown = vocab.encode("axbyyc")
    assert unknown == 3
    assert list(ids).count(UNK) == 3
    assert vocab.decode(ids) == "a\ufffdb\ufffd\ufffdc"
    assert vocab.unknown_chars("axbyyc") == {"x": 1, "y": 2}


def test_encode_empty_text() -> None:
    ids, unknown = Vocab.build(["a"]).encode("")
    assert ids.shape == (0,) and unknown == 0


def test_decode_drops_padding_eos_and_out_of_range_ids() -> None:
    vocab = Vocab.build(["ab"])
    a, b = vocab.encode("ab")[0]
    assert vocab.decode([EOS, a, PAD, b, EOS, 999, -5]) == "ab"
    assert vocab.decode(np.array([a, UNK], np.int64)) == "a\ufffd"


def test_json_round_trip_and_stable_hash() -> None:
    vocab = Vocab.build(["héllo wörld", "日本"])
    again = Vocab.from_json(vocab.to_json())
    assert again == vocab
    assert again.hash == vocab.hash
    assert Vocab.build(["hello"]).hash != vocab.hash
    assert again.encode("hé日")[0].tolist() == vocab.encode("hé日")[0].tolist()


def test_json_with_other_reserved_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Vocab.from_json('{"reserved": ["<pad>", "<unk>"], "chars": ["a"]}')


def test_grown_keeps_every_old_id() -> None:
    vocab = Vocab.build(["hello world"])
    grown = vocab.grown("wxyz€")  # w is known already
    assert grown.chars[: len(vocab.chars)] == vocab.chars
    assert set(grown.chars[len(vocab.chars):]) == {"x", "y", "z", "€"}
    text = "hello world"
    assert grown.encode(text)[0].tolist() == vocab.encode(text)[0].tolist()
    assert grown.encode("x")[1] == 0
    assert vocab.grown("hello").chars == vocab.chars  # nothing new: unchanged
    assert vocab.grown(["ab", "q"]).chars == vocab.chars + ("q",)  # multi-character items ignored


# ---------------------------------------------------------------- never raises (property tests)


@settings(max_examples=300, deadline=None)
@given(corpus_text=st.text(max_size=50), text=st.text(max_size=200))
def test_encode_decode_never_raise(corpus_text: str, text: str) -> None:
    vocab = Vocab.build([corpus_text])
    ids, unknown = vocab.encode(text)
    assert len(ids) == len(text)
    assert unknown == sum(1 for c in text if c not in vocab)
    assert vocab.decode(ids) == "".join(c if c in vocab else "\ufffd" for c in text)


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=50))
def test_decode_never_raises_on_any_ids(ids: list[int]) -> None:
    vocab = Vocab.build(["abc"])
    assert isinstance(vocab.decode(ids), str)


# ---------------------------------------------------------------- growing the model


def _grow_and_compare(input_mode: str) -> None:
    from tweetgen.model import build_model, grow_model

    vocab = Vocab.build(["abcdef"])
    grown_vocab = vocab.grown("xyz")
    config = {"input_mode": input_mode, "embedding_dim": 8, "gru_sizes": [16, 24], "dropout": 0.0}
    model = build_model(vocab.size, config)
    grown = grow_model(model, grown_vocab.size, config)
    old, new = vocab.size, grown_vocab.size
    assert grown.vocab_size == new

    if input_mode == "embedding":
        emb_old, emb_new = model.embed.embeddings.numpy(), grown.embed.embeddings.numpy()
        assert emb_new.shape == (new, 8)
        np.testing.assert_array_equal(emb_new[:old], emb_old)
        first_old, first_new = model.grus[0].cell.kernel.numpy(), grown.grus[0].cell.kernel.numpy()
        np.testing.assert_array_equal(first_new, first_old)
    else:
        # One-hot input: the first GRU's input kernel has one row per id.
        first_old, first_new = model.grus[0].cell.kernel.numpy(), grown.grus[0].cell.kernel.numpy()
        assert first_new.shape == (new, 3 * 16)
        np.testing.assert_array_equal(first_new[:old], first_old)
    # A new id starts as input like <unk>, which is what the model saw for it until now.
    from tweetgen.vocab import UNK

    for row in range(old, new):
        np.testing.assert_array_equal(first_new[row] if input_mode == "onehot"
                                      else grown.embed.embeddings.numpy()[row],
                                      first_old[UNK] if input_mode == "onehot" else emb_old[UNK])

    for gru_old, gru_new in zip(model.grus, grown.grus, strict=True):
        np.testing.assert_array_equal(gru_new.cell.recurrent_kernel.numpy(),
                                      gru_old.cell.recurrent_kernel.numpy())
        np.testing.assert_array_equal(gru_new.cell.bias.numpy(), gru_old.cell.bias.numpy())
    np.testing.assert_array_equal(grown.grus[1].cell.kernel.numpy(), model.grus[1].cell.kernel.numpy())

    kernel_old, kernel_new = model.head.kernel.numpy(), grown.head.kernel.numpy()
    assert kernel_new.shape == (24, new)
    np.testing.assert_array_equal(kernel_new[:, :old], kernel_old)
    np.testing.assert_array_equal(grown.head.bias.numpy()[:old], model.head.bias.numpy())
    # New outputs: a zero kernel column and a bias far below the old ones.
    np.testing.assert_array_equal(kernel_new[:, old:], 0.0)
    assert grown.head.bias.numpy()[old:].max() <= model.head.bias.numpy().min() - 8.0

    # The old characters' logits are unchanged on any input made of old ids.
    import tensorflow as tf

    ids = tf.constant([vocab.encode("abcfed")[0]])
    np.testing.assert_allclose(grown(ids).numpy()[..., :old], model(ids).numpy(), atol=1e-6)


def test_grow_model_keeps_old_rows_embedding() -> None:
    _grow_and_compare("embedding")


def test_grow_model_keeps_old_rows_onehot() -> None:
    _grow_and_compare("onehot")


def test_grow_model_refuses_to_shrink() -> None:
    from tweetgen.model import build_model, grow_model

    config = {"input_mode": "embedding", "embedding_dim": 4, "gru_sizes": [8], "dropout": 0.0}
    with pytest.raises(ValueError, match="only grow"):
        grow_model(build_model(10, config), 9, config)


def test_trainer_grow_vocab_trains_saves_and_reloads(tmp_path, make_settings) -> None:
    from conftest import write_corpus

    from tweetgen import corpus
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.trainer import Trainer, TrainJob, build_data

    settings = make_settings(tmp_path)
    write_corpus(settings.corpus_file, ["abc abc", "cab cab", "bca"] * 4)
    vocab = Vocab.build(corpus.read_lines(settings.corpus_file).lines)
    trainer = Trainer.fresh(settings, vocab)
    manager = CheckpointManager(settings.checkpoints)
    end = corpus.complete_end(settings.corpus_file)
    trainer.run(TrainJob("train", 1, 0, end, 3), build_data(settings, vocab, TrainJob("train", 1, 0, end, 3)),
                manager)
    before = trainer.model.embed.embeddings.numpy()

    corpus.append_lines(settings.corpus_file, ["cab\u00e9 \u00e9ba"] * 4)
    trainer.grow_vocab(["\u00e9", "a"])
    assert trainer.vocab.size == vocab.size + 1
    np.testing.assert_array_equal(trainer.model.embed.embeddings.numpy()[: vocab.size], before)
    assert int(trainer.optimizer.iterations.numpy()) == 3
    # Adam's moments are kept for the old rows (zeros for the new ones), not restarted.
    slots = [v.numpy() for v in trainer.optimizer.variables]
    assert sum(float(np.abs(v).sum()) for v in slots[2:]) > 0

    end = corpus.complete_end(settings.corpus_file)
    job = TrainJob("train", 1, 0, end, 6)
    data = build_data(settings, trainer.vocab, job)
    assert data.unknown_chars == 0
    result = trainer.run(job, data, manager)
    assert result.steps == 3 and np.isfinite(result.train_loss)

    reloaded = Trainer.from_checkpoint(settings, manager.load_latest())
    assert reloaded.vocab == trainer.vocab and reloaded.step == 6
    assert reloaded.model.vocab_size == trainer.vocab.size


def test_growing_the_vocabulary_alone_leaves_old_validation_unchanged(tmp_path, make_settings) -> None:
    """Growing costs nothing: bits/char on the old validation lines moves by less than 0.005."""
    from conftest import write_corpus

    from tweetgen import corpus
    from tweetgen.checkpoints import CheckpointManager
    from tweetgen.train import bits_per_char, encode_lines
    from tweetgen.trainer import Trainer, TrainJob, build_data

    settings = make_settings(tmp_path)
    lines = [f"the cat {w} on the mat {i}" for i, w in enumerate(["sat", "ran", "lay", "hid"] * 10)]
    write_corpus(settings.corpus_file, lines)
    vocab = Vocab.build(corpus.read_lines(settings.corpus_file).lines)
    trainer = Trainer.fresh(settings, vocab)
    end = corpus.complete_end(settings.corpus_file)
    job = TrainJob("train", 1, 0, end, 40)
    trainer.run(job, build_data(settings, vocab, job), CheckpointManager(settings.checkpoints))
    old_lines, _ = encode_lines(lines[:20], vocab, 280)
    before = bits_per_char(trainer.model, old_lines)

    trainer.grow_vocab(["ü", "é", "ß"])
    grown_lines, _ = encode_lines(lines[:20], trainer.vocab, 280)
    after = bits_per_char(trainer.model, grown_lines)
    assert before < 4.0  # it learned something, so the comparison means something
    assert abs(after - before) < 0.005, (before, after)


def test_the_vocabulary_counts_training_lines_only(make_settings, tmp_path) -> None:
    from conftest import write_corpus

    from tweetgen import corpus
    from tweetgen.engine import build_vocab

    settings = make_settings(tmp_path, vocab_min_count=1, validation_fraction=0.2)
    held_out = next(f"only here {c}" for c in "§¶†‡◊∆Ω≈√∫µ≤≥÷" if corpus.is_validation(f"only here {c}", 0.2))
    trained = next(f"trained {c}" for c in "àáâãäåæçèéêë" if not corpus.is_validation(f"trained {c}", 0.2))
    write_corpus(settings.corpus_file, ["plain words", held_out, trained])
    vocab = build_vocab(settings)
    assert held_out[-1] not in vocab and trained[-1] in vocab and "w" in vocab
