"""The promotion rule: candidates are judged against the served model, on the same lines."""

from __future__ import annotations

import math

import pytest
from conftest import varied_lines, write_corpus

from tweetgen.promotion import Figures, decide

TOL = 0.02


def test_a_better_or_equal_fine_tune_is_promoted() -> None:
    assert decide("finetune", Figures(2.00, 3.0), Figures(2.01, 2.5), TOL).promote
    assert decide("finetune", Figures(2.00, 3.0), Figures(1.90, 2.9), TOL).promote


def test_worse_old_validation_or_no_gain_on_new_lines_is_rejected() -> None:
    worse_old = decide("finetune", Figures(2.00, 3.0), Figures(2.03, 2.5), TOL)
    assert not worse_old.promote and "old validation" in worse_old.reason
    no_gain = decide("finetune", Figures(2.00, 3.0), Figures(1.95, 3.0), TOL)
    assert not no_gain.promote and "new lines" in no_gain.reason


def test_reject_then_better_is_judged_against_the_served_model_not_the_rejected_one() -> None:
    served = Figures(2.00)
    assert not decide("finetune", served, Figures(2.10), TOL).promote
    # The next run is 2.11: within tolerance of the rejected 2.10, but not of what is served.
    assert not decide("finetune", served, Figures(2.11), TOL).promote
    assert decide("finetune", served, Figures(1.99), TOL).promote


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_an_unknown_candidate_figure_counts_as_worse(bad) -> None:
    assert not decide("finetune", Figures(2.0), Figures(bad), TOL).promote
    assert not decide("idle", Figures(2.0), Figures(bad), TOL).promote
    assert not decide("finetune", Figures(2.0, 3.0), Figures(1.9, bad), TOL).promote
    assert not decide("finetune", None, Figures(bad), TOL).promote


def test_nothing_served_promotes_a_known_candidate() -> None:
    assert decide("initial", None, Figures(2.5), TOL).promote
    assert decide("finetune", None, Figures(2.5, 3.0), TOL).promote


def test_idle_training_must_be_strictly_better() -> None:
    assert decide("idle", Figures(2.00), Figures(1.99), TOL).promote
    assert not decide("idle", Figures(2.00), Figures(2.00), TOL).promote
    assert not decide("idle", Figures(2.00), Figures(2.01), TOL).promote


def test_fine_tunes_within_tolerance_one_by_one_cannot_add_up() -> None:
    """Each fine-tune +0.015 on the old validation: the first is promoted, the second would make
    it +0.03 in all and is not; idle training that improves the old lines pays the drift back."""
    served = Figures(2.000, 3.0)
    first = decide("finetune", served, Figures(2.015, 2.9), TOL)
    assert first.promote and first.drift == pytest.approx(0.015)
    served = Figures(2.015, 2.9, first.drift)
    second = decide("finetune", served, Figures(2.030, 2.8), TOL)
    assert not second.promote and "earlier fine-tunes" in second.reason
    idle = decide("idle", Figures(2.015, None, first.drift), Figures(2.005), TOL)
    assert idle.promote and idle.drift == pytest.approx(0.005)
    assert decide("finetune", Figures(2.005, 2.8, idle.drift), Figures(2.020, 2.7), TOL).promote
    # Better than the served model: the drift falls, never below 0.
    assert decide("idle", Figures(2.005, None, idle.drift), Figures(1.9), TOL).drift == 0.0
    assert decide("finetune", Figures(2.0, 3.0, 0.0), Figures(1.99, 2.9), TOL).drift == 0.0


def test_the_drift_survives_a_restart_in_the_store(make_settings, tmp_path) -> None:
    from tweetgen.promotion import DRIFT_KEY, read_drift
    from tweetgen.store import Store

    settings = make_settings(tmp_path)
    with Store(settings.db_file) as store:
        assert read_drift(store.get_meta(DRIFT_KEY)) == 0.0
        store.set_meta(DRIFT_KEY, "0.0125")
    with Store(settings.db_file) as store:
        assert read_drift(store.get_meta(DRIFT_KEY)) == 0.0125
    assert read_drift("garbage") == 0.0 and read_drift("-1") == 0.0


# ---------------------------------------------------------------- end to end: real fine-tunes


def _initial(settings, store):
    from tweetgen import engine
    from tweetgen.engine import checkpoint_manager

    outcome = engine.train(settings, 60, store=store)
    manager = checkpoint_manager(settings)
    manager.promote(outcome.result.checkpoint)
    return manager


def test_a_rejected_fine_tune_never_becomes_the_next_ones_baseline(make_settings, tmp_path) -> None:
    """Run 1 is wrecked (a huge learning rate) and rejected; run 2 continues from its weights but
    is judged against the served model: its 'before' is the served model's figure."""
    from tweetgen import corpus
    from tweetgen.finetune import run_finetune
    from tweetgen.promotion import ServedModel
    from tweetgen.store import Store
    from tweetgen.trainer import TrainJob, build_data

    lines = varied_lines(260)
    settings = make_settings(tmp_path, finetune_learning_rate=3.0, finetune_min_steps=15,
                             validation_fraction=0.1)
    write_corpus(settings.corpus_file, lines[:200])
    with Store(settings.db_file) as store:
        manager = _initial(settings, store)
        served_path = manager.promoted_path()
        corpus.append_lines(settings.corpus_file, lines[200:230])
        first = run_finetune(settings, store)
        assert first["status"] == "completed" and not first["promoted"], first
        assert manager.promoted_path() == served_path
        wrecked = first["after"]

        calm = make_settings(tmp_path, finetune_learning_rate=1e-4, finetune_min_steps=5,
                             validation_fraction=0.1)
        corpus.append_lines(calm.corpus_file, lines[230:])
        second = run_finetune(calm, store)
        run = store.get_run(second["run"])
        # Its baseline is the served model on the run's own validation lines, not the wreck.
        latest = manager.paths()[-1]
        from tweetgen.checkpoints import load_checkpoint

        job = TrainJob.from_dict(load_checkpoint(latest).meta["job"])
        from tweetgen.vocab import Vocab

        vocab = Vocab.from_json(load_checkpoint(latest).meta["vocab"])
        data = build_data(calm, vocab, job)
        served = ServedModel().figures_on(manager, vocab, data.validation, data.new_validation)
        assert run["val_bpc_before"] == pytest.approx(served.old_bpc, abs=1e-6)
        assert run["val_bpc_before"] < wrecked - 0.2
        assert run["promotion"]
        if not second["promoted"]:
            assert manager.promoted_path() == served_path


def test_a_fine_tune_that_grows_the_vocabulary_is_judged_fairly(make_settings, tmp_path) -> None:
    """After growth the served model is measured in the grown vocabulary; growth alone costs
    nothing, so the 'before' figure is the served model's old figure."""
    from tweetgen import corpus
    from tweetgen.checkpoints import read_meta
    from tweetgen.finetune import run_finetune
    from tweetgen.store import Store

    lines = varied_lines(200)
    settings = make_settings(tmp_path, vocab_grow_min_count=3, finetune_min_steps=10,
                             finetune_learning_rate=1e-3, validation_fraction=0.1)
    write_corpus(settings.corpus_file, lines)
    with Store(settings.db_file) as store:
        manager = _initial(settings, store)
        served_bpc = read_meta(manager.promoted_path())["val_bpc"]
        corpus.append_lines(settings.corpus_file, [f"\u00fcber {line}" for line in varied_lines(60)])
        result = run_finetune(settings, store)
        run = store.get_run(result["run"])
        assert read_meta(manager.paths()[-1])["vocab_size"] > read_meta(manager.paths()[0])["vocab_size"]
        assert run["val_bpc_before"] == pytest.approx(served_bpc, abs=0.005)
        assert run["new_val_lines"] > 0 and run["val_new_bpc_before"] is not None
        assert run["val_new_bpc_after"] is not None
        if result["promoted"]:
            assert run["val_new_bpc_after"] < run["val_new_bpc_before"]


def test_a_corpus_replaced_during_a_fine_tune_is_noticed_by_the_next_one(make_settings, tmp_path,
                                                                         monkeypatch) -> None:
    """The corpus identity is taken when the lines are read, not when the checkpoint is saved:
    a file replaced while the job trains makes the next job re-read it from 0, not mid-line."""
    from tweetgen import corpus
    from tweetgen.finetune import run_finetune
    from tweetgen.store import Store
    from tweetgen.trainer import Trainer

    lines = varied_lines(200)
    settings = make_settings(tmp_path, finetune_min_steps=3, validation_fraction=0.1)
    write_corpus(settings.corpus_file, lines[:150])
    real_run = Trainer.run

    def replacing_run(self, *args, **kwargs):
        write_corpus(settings.corpus_file, ["a whole new corpus line " + line for line in lines])
        return real_run(self, *args, **kwargs)

    with Store(settings.db_file) as store:
        _initial(settings, store)
        corpus.append_lines(settings.corpus_file, lines[150:170])
        monkeypatch.setattr(Trainer, "run", replacing_run)
        assert run_finetune(settings, store)["status"] == "completed"
        monkeypatch.setattr(Trainer, "run", real_run)
        result = run_finetune(settings, store)
        events = store.list_job_events()
    assert any("replaced" in (e["error"] or "") for e in events), events
    ingest = store_ingests(settings)[-1]
    assert ingest["start_offset"] == 0 and result["status"] == "completed"


def store_ingests(settings) -> list[dict]:
    from tweetgen.store import Store

    with Store(settings.db_file) as store:
        return list(reversed(store.list_ingests()))
