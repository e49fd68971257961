"""load_task on the built-in corpus: what the trainer gets (shapes, labels, collate, caches, errors); and
on every source, the corpus's record handed over before any feature is computed."""

import pytest
import torch
from torch.utils.data import DataLoader

from trainer.data import KEYWORDS, TASKS, load_task


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("corpora")


def test_keywords_give_32x32_log_mels_and_class_indices(cache):
    splits = load_task("keywords", size="tiny", cache_dir=cache)
    assert splits.kind == "classification" and splits.labels == list(KEYWORDS) and splits.num_classes == 10
    assert splits.n_mels == 32
    x, y = next(iter(DataLoader(splits.train, batch_size=8, shuffle=True, collate_fn=splits.collate)))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    counts = splits.info["counts"]
    assert counts == {s: 10 * len(v) for s, v in splits.info["voices"].items()}
    assert set(splits.info["voices"]["train"]).isdisjoint(splits.info["voices"]["test"])
    # every class appears in every split (each speaker says every word)
    for split in (splits.train, splits.val, splits.test):
        assert sorted({int(split[i][1]) for i in range(len(split))}) == list(range(10))


def test_digits_give_variable_length_sequences_and_ctc_batches(cache):
    splits = load_task("digits", size="tiny", cache_dir=cache, n_mels=64)
    assert splits.kind == "sequence" and splits.labels[0] == "<blank>" and splits.num_classes == 11
    lengths = {splits.train[i][0].shape[-1] for i in range(len(splits.train))}
    assert len(lengths) > 1 and all(x > 50 for x in lengths)  # 10 ms frames, at least half a second
    x, y, x_lens, y_lens = next(iter(DataLoader(splits.train, batch_size=4, collate_fn=splits.collate)))
    assert x.shape[:3] == (4, 1, 64) and x.shape[3] == int(x_lens.max())
    assert ((2 <= y_lens) & (y_lens <= 5)).all() and y.shape[1] == int(y_lens.max())
    text = splits.vocabulary.decode(y[0, : y_lens[0]])
    assert text.isdigit() and len(text) == int(y_lens[0])


def test_specaugment_only_touches_the_training_split(cache):
    splits = load_task("keywords", size="tiny", cache_dir=cache, specaugment=True)
    plain = load_task("keywords", size="tiny", cache_dir=cache)
    torch.manual_seed(0)
    assert any(not torch.equal(splits.train[i][0], plain.train[i][0]) for i in range(10))
    for i in range(len(plain.val)):
        assert torch.equal(splits.val[i][0], plain.val[i][0]) and torch.equal(
            splits.test[i][0], plain.test[i][0]
        )
    assert splits.info["specaugment"] == "freq_mask=4, time_mask=4, n_masks=2"


def test_second_load_hits_both_caches_and_returns_the_same_features(tmp_path):
    first = load_task("keywords", size="tiny", cache_dir=tmp_path, seed=3)
    second = load_task("keywords", size="tiny", cache_dir=tmp_path, seed=3)
    assert (first.info["cache_hit"], first.info["feature_cache_hit"]) == (False, False)
    assert (second.info["cache_hit"], second.info["feature_cache_hit"]) == (True, True)
    assert torch.equal(first.train.features, second.train.features)
    other_features = load_task("keywords", size="tiny", cache_dir=tmp_path, seed=3, n_mels=40, frames=50)
    assert other_features.info["cache_hit"] and not other_features.info["feature_cache_hit"]
    assert other_features.train[0][0].shape == (1, 40, 50)


def test_loading_leaves_torch_threads_as_they_were(cache):
    before = torch.get_num_threads()
    load_task("keywords", size="tiny", cache_dir=cache)
    assert torch.get_num_threads() == before


def test_bad_options_name_the_accepted_values(tmp_path):
    assert set(TASKS) == {"keywords", "digits", "characters"}
    with pytest.raises(ValueError, match="'words'.*characters.*digits.*keywords"):
        load_task("words")
    with pytest.raises(ValueError, match="'youtube'.*builtin"):
        load_task("keywords", "youtube")
    with pytest.raises(ValueError, match="'keywords' cannot be loaded from 'transcripts'"):
        load_task("keywords", "transcripts", tmp_path)
    with pytest.raises(ValueError, match="'characters' cannot be loaded from 'builtin'"):
        load_task("characters")
    with pytest.raises(ValueError, match="needs path="):
        load_task("keywords", "speech_commands")
    with pytest.raises(ValueError, match="size='huge'"):
        load_task("keywords", size="huge", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("task", "source", "corpus"),
    [("keywords", "builtin", None), ("keywords", "speech_commands", "speech_commands_dir"),
     ("digits", "transcripts", "transcripts_dir")],
)  # fmt: skip
def test_before_features_gets_the_corpus_record_before_any_feature(
    task, source, corpus, tmp_path, monkeypatch, request
):
    # The trainer refuses a checkpoint's changed corpus there, without waiting for the features. Oracle for
    # the record: the info of the same load.
    import trainer.data.speech_commands
    import trainer.data.tasks
    import trainer.data.transcripts

    events = []
    for module in (trainer.data.tasks, trainer.data.speech_commands, trainer.data.transcripts):
        real = module.cached_features
        monkeypatch.setattr(
            module, "cached_features", lambda *a, real=real, **k: events.append("features") or real(*a, **k)
        )
    path = None if corpus is None else request.getfixturevalue(corpus)
    size = {"size": "tiny"} if source == "builtin" else {}
    splits = load_task(task, source, path, cache_dir=tmp_path, before_features=events.append, **size)
    [record, features] = events
    assert features == "features"
    assert record == {k: splits.info[k] for k in ("fingerprint", "counts", "path") if k in splits.info}
    assert ("path" in record) == (source != "builtin")

    class Refused(Exception):
        pass

    def refuse(record):
        raise Refused

    events.clear()
    with pytest.raises(Refused):
        load_task(task, source, path, cache_dir=tmp_path, before_features=refuse, **size)
    assert events == []
