"""Bad input fails before training, with an error that names the field, the value and what is allowed."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from data import (
    DataConfig,
    PackedLoader,
    build_tokenizer,
    build_train_loader,
    check_vocab_fits,
    open_source,
    prepare_corpus,
)


def test_missing_path(tmp_path):
    missing = str(tmp_path / "no" / "such.txt")
    with pytest.raises(FileNotFoundError, match=r"data\.source = .*such\.txt.*no such file"):
        DataConfig(source=missing).validate()


def test_missing_hf_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.source = 'hf:.*saved' .*no such folder"):
        DataConfig(source=f"hf:{tmp_path / 'saved'}").validate()


def test_glob_matching_nothing(tmp_path):
    pattern = str(tmp_path / "*.jsonl")
    with pytest.raises(FileNotFoundError, match=r"data\.source = .*\*\.jsonl"):
        DataConfig(source=pattern).validate()


def test_empty_corpus(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "empty.txt").write_text("")
    (folder / "blank.txt").write_text("  \n\n")
    cfg = DataConfig(source=str(folder), cache_dir=str(tmp_path / "cache"), seq_len=64)
    cfg.validate()
    with pytest.raises(ValueError, match=rf"data\.source = '{folder}' .*no non-empty documents"):
        prepare_corpus(cfg, tokenizer)


def test_directory_without_text_files(tmp_path):
    (tmp_path / "notes.md").write_text("not a corpus file type")
    with pytest.raises(ValueError, match=rf"data\.source = '{tmp_path}' .*no \.txt/\.jsonl/\.parquet files"):
        open_source(DataConfig(source=str(tmp_path)))


def test_missing_text_field_jsonl(tmp_path, tokenizer):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"content": f"document {i}"}) + "\n" for i in range(5)))
    cfg = DataConfig(source=str(path), text_field="text", cache_dir=str(tmp_path / "cache"), seq_len=8)
    with pytest.raises(ValueError, match=r"data\.text_field = 'text' .*corpus\.jsonl:1 has \['content'\]"):
        prepare_corpus(cfg, tokenizer)


def test_missing_text_field_hf(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"body": ["a", "b"]}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match=r"data\.text_field = 'text' .*columns are \['body'\]"):
        open_source(DataConfig(source=f"hf:{folder}"))


def test_seq_len_not_multiple_of_chunk_size():
    with pytest.raises(ValueError, match=r"data\.seq_len = 100 .*multiple of the model's chunk_size = 32"):
        DataConfig(seq_len=100).validate(chunk_size=32)


def test_tokenizer_larger_than_model_vocab(tokenizer):
    check_vocab_fits(tokenizer, 400)
    with pytest.raises(ValueError, match=r"model vocab_size = 300 .*has 400 tokens"):
        check_vocab_fits(tokenizer, 300)


def test_bpe_vocab_larger_than_model_vocab():
    with pytest.raises(ValueError, match=r"data\.vocab_size = 8192 .*model's vocab_size = 4096"):
        DataConfig(vocab_size=8192).validate(model_vocab_size=4096)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")], ids=["negative", "above-one", "nan"])
def test_mix_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=rf"data\.synthetic_fraction = {fraction!r} .*\[0, 1\]"):
        DataConfig(synthetic_fraction=fraction).validate()


@pytest.mark.parametrize("weight", [-0.1, 1.5, "half"], ids=["negative", "above-one", "text"])
def test_synthetic_loss_weight_outside_unit_interval(weight):
    with pytest.raises(
        ValueError, match=rf"data\.synthetic_loss_weight = {weight!r} .*a fraction in \[0, 1\].*or null"
    ):
        DataConfig(synthetic_fraction=0.5, synthetic_loss_weight=weight).validate()
    DataConfig(synthetic_fraction=0.5, synthetic_loss_weight=0.5).validate()  # a fraction or null is fine


@pytest.mark.parametrize("fraction", [-0.5, 1.0], ids=["negative", "everything"])
def test_validation_fraction_outside_range(fraction):
    with pytest.raises(ValueError, match=rf"data\.validation_fraction = {fraction!r} .*\[0, 1\)"):
        DataConfig(validation_fraction=fraction).validate()


def test_unknown_synthetic_task():
    with pytest.raises(
        ValueError, match=r"data\.synthetic_tasks = \['sort'\] .*'passkey', 'mqar', 'text_mqar', 'copy'"
    ):
        DataConfig(synthetic_tasks=["sort"]).validate()


def test_bpe_vocab_too_small():
    with pytest.raises(ValueError, match=r"data\.vocab_size = 100 .*>= 257"):
        DataConfig(vocab_size=100).validate()


def test_missing_gguf_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.tokenizer = .*model\.gguf"):
        DataConfig(tokenizer=str(tmp_path / "model.gguf")).validate()


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"data\.source = .*corpus\.csv.*\.txt"):
        DataConfig(source=str(path)).validate()


def test_mqar_does_not_fit_seq_len():
    with pytest.raises(ValueError, match=r"data\.mqar_num_pairs = 16 .*seq_len = 32"):
        DataConfig(seq_len=32, synthetic_fraction=0.1).validate()


def test_passkey_does_not_fit_seq_len(small_cfg, tokenizer, corpus):
    cfg = small_cfg.replace(synthetic_fraction=0.5, synthetic_tasks=["passkey"])
    with pytest.raises(ValueError, match=r"data\.seq_len = 64 .*passkey"):
        build_train_loader(cfg, corpus, tokenizer, batch_size=2, seed=0, rank=0, world_size=1)


def test_text_mqar_does_not_fit_seq_len(small_cfg, tokenizer, corpus):
    cfg = small_cfg.replace(
        synthetic_fraction=0.5, synthetic_tasks=["text_mqar"], mqar_num_pairs=4, mqar_num_queries=2
    )
    with pytest.raises(ValueError, match=r"data\.seq_len = 64 .*text_mqar example of mqar_num_pairs = 4"):
        build_train_loader(cfg, corpus, tokenizer, batch_size=2, seed=0, rank=0, world_size=1)


def test_text_mqar_has_64_key_words(small_cfg, tokenizer, corpus):
    cfg = small_cfg.replace(
        seq_len=4096, synthetic_fraction=0.5, synthetic_tasks=["text_mqar"], mqar_num_pairs=65
    )
    with pytest.raises(ValueError, match=r"data\.mqar_num_pairs = 65 .*at most 64"):
        build_train_loader(cfg, corpus, tokenizer, batch_size=2, seed=0, rank=0, world_size=1)


def test_single_document_cannot_be_split(tmp_path, texts, tokenizer):
    path = tmp_path / "one.txt"
    path.write_text("".join(texts))
    cfg = DataConfig(
        source=str(path),
        cache_dir=str(tmp_path / "cache"),
        seq_len=32,
        validation_fraction=0.1,
        piece_chars=None,  # the file stays one document
    )
    with pytest.raises(ValueError, match=r"data\.validation_fraction = 0\.1 .*1 document\(s\) would all go"):
        prepare_corpus(cfg, tokenizer)
    assert prepare_corpus(cfg.replace(validation_fraction=0.0), tokenizer).validation.shape == (0, 32)


def test_seq_len_longer_than_corpus(tmp_path, text_dir, tokenizer):
    cfg = DataConfig(source=str(text_dir), cache_dir=str(tmp_path / "cache"), seq_len=1_000_000)
    with pytest.raises(ValueError, match=r"data\.seq_len = 1000000 .*train split's \d+ tokens"):
        prepare_corpus(cfg, tokenizer)


def test_global_batch_larger_than_corpus():
    rows = torch.zeros(10, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"batch_size = 4 .*3 rank\(s\).*10 train rows.*global batch of 12"):
        PackedLoader(rows, batch_size=4, seed=0, rank=0, world_size=3)


def test_rank_outside_world(small_cfg, tokenizer, corpus):
    with pytest.raises(ValueError, match=r"rank = 2 .*world_size = 2"):
        build_train_loader(small_cfg, corpus, tokenizer, batch_size=2, seed=0, rank=2, world_size=2)


def test_resume_with_other_seed():
    rows = torch.zeros(16, 8, dtype=torch.int32)
    state = PackedLoader(rows, batch_size=2, seed=1, rank=0, world_size=1).state_dict()
    with pytest.raises(ValueError, match=r"loader state seed = 1 .*this loader has 2"):
        PackedLoader(rows, batch_size=2, seed=2, rank=0, world_size=1).load_state_dict(state)


def test_tokenizer_folder_without_eos(tmp_path, tokenizer):
    folder = tmp_path / "no-eos"
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("eos_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"data\.tokenizer = .*no-eos.*eos token"):
        build_tokenizer(DataConfig(tokenizer=str(folder)))


def test_induction_rows_need_one_segment_of_a_span_and_its_repeat():
    tasks = {"source": "stdlib", "synthetic_fraction": 0.5, "synthetic_tasks": ["induction"]}
    with pytest.raises(ValueError, match=r"data.induction_segment = 32 is not allowed: .*and seq_len = 16"):
        DataConfig(seq_len=16, **tasks)
    with pytest.raises(ValueError, match=r"data.induction_segment = 8 is not allowed: expected between 16"):
        DataConfig(seq_len=64, induction_segment=8, **tasks)


def test_induction_lookback_must_fit_a_span_inside_the_row():
    tasks = {"source": "stdlib", "synthetic_fraction": 0.5, "synthetic_tasks": ["induction"]}
    with pytest.raises(
        ValueError, match=r"data.induction_lookback = 128 is not allowed: expected null, or between 8"
    ):
        DataConfig(seq_len=128, induction_lookback=128, **tasks)
    with pytest.raises(ValueError, match=r"data.induction_lookback = 4 is not allowed"):
        DataConfig(seq_len=128, induction_lookback=4, **tasks)
    assert DataConfig(seq_len=128, induction_lookback=120, **tasks).induction_lookback == 120


def test_copy_span_longer_than_half_a_row_is_refused():
    with pytest.raises(ValueError, match=r"data.copy_span = 200 is not allowed: .*at most seq_len / 2 = 64"):
        DataConfig(
            source="stdlib", seq_len=128, synthetic_fraction=0.5, synthetic_tasks=["copy"], copy_span=200
        )
