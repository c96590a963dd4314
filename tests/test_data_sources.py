"""The five data sources, the text-column and split rules, bad inputs, and the token cache.

Every file is written by the test in tmp_path; nothing touches the network (the Hub probe is
pointed at a closed local port or a local HTTP server).
"""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
import types
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from utils.training.data import (
    DataError,
    HFTokenizer,
    IdentityTokenizer,
    hub_reachable,
    load_text_data,
    load_token_data,
)
from utils.training.data import loaders as loaders_module
from utils.training.data import sources as sources_module
from utils.training.training_config import TrainingConfig


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    """datasets writes Arrow copies of the files it reads: keep them out of the home folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def cfg(**kw) -> TrainingConfig:
    base = dict(data_source="local", seed=3, val_fraction=0.25, tokenizer="byte",
                vocab_size=300, block_size=8)
    return TrainingConfig(**{**base, **kw})


def docs(n: int) -> list[str]:
    return [f"document number {i}: " + "words " * (i % 5 + 1) for i in range(n)]


def texts(dd: DatasetDict, split: str) -> list[str]:
    return list(dd[split]["text"])


def check_shape(dd: DatasetDict) -> None:
    assert set(dd) == {"train", "validation"}
    assert dd["train"].column_names == ["text"] == dd["validation"].column_names
    assert len(dd["train"]) > 0 and len(dd["validation"]) > 0


# --- each source on files the test writes ---------------------------------------------------


def test_local_text_folder_is_one_document_per_file(tmp_path):
    for i, d in enumerate(docs(8)):
        (tmp_path / f"d{i}.txt").write_text(d)
    dd = load_text_data(cfg(data_path=str(tmp_path)))
    check_shape(dd)
    assert sorted(texts(dd, "train") + texts(dd, "validation")) == sorted(docs(8))
    assert len(dd["validation"]) == 2  # 25% of 8, seeded split


def test_csv_jsonl_parquet_and_saved_dataset(tmp_path):
    rows = docs(12)
    frame = pd.DataFrame({"label": range(12), "text": rows})
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_json(tmp_path / "data.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "data.parquet")
    for name in ("data.csv", "data.jsonl", "data.parquet"):
        dd = load_text_data(cfg(data_path=str(tmp_path / name)))
        check_shape(dd)
        assert sorted(texts(dd, "train") + texts(dd, "validation")) == sorted(rows), name

    # A save_to_disk folder with its own "test" split: that split becomes validation.
    saved = tmp_path / "saved"
    DatasetDict(train=Dataset.from_dict({"body": rows[:9]}),
                test=Dataset.from_dict({"body": rows[9:]})).save_to_disk(str(saved))
    dd = load_text_data(cfg(data_path=str(saved)))
    assert texts(dd, "train") == rows[:9] and texts(dd, "validation") == rows[9:]


def test_huggingface_source_reads_a_local_path_without_the_hub(tmp_path, monkeypatch):
    pd.DataFrame({"text": docs(6)}).to_json(tmp_path / "d.json", orient="records")
    monkeypatch.setattr(sources_module, "hub_reachable", lambda *a, **k: pytest.fail("probed"))
    dd = load_text_data(cfg(data_source="huggingface", dataset_name=str(tmp_path / "d.json")))
    check_shape(dd)
    dd = load_text_data(cfg(data_source="huggingface", dataset_name="wikitext",
                            data_path=str(tmp_path / "d.json")))
    check_shape(dd)


def test_drive_glob_is_relative_to_the_workspace(workspace):
    corpus = workspace.root / "corpus"
    corpus.mkdir()
    for i, d in enumerate(docs(6)):
        (corpus / f"part{i}.md").write_text(d)
    (corpus / "notes.txt").write_text("not matched by the glob")
    dd = load_text_data(cfg(data_source="drive", data_path="corpus/*.md"), workspace)
    assert sorted(texts(dd, "train") + texts(dd, "validation")) == sorted(docs(6))
    with pytest.raises(DataError, match=str(workspace.root / "missing" / r"\*\.md")):
        load_text_data(cfg(data_source="drive", data_path="missing/*.md"), workspace)


def test_drive_paths_under_mydrive_and_absolute(workspace, tmp_path):
    assert sources_module._drive_path("MyDrive/data/*.txt", workspace) == str(
        sources_module.DRIVE_MOUNT_POINT / "MyDrive" / "data" / "*.txt")
    assert sources_module._drive_path(str(tmp_path / "x.csv"), workspace) == str(tmp_path / "x.csv")
    assert sources_module._drive_path("x.csv", None).startswith(str(Path.cwd()))


def test_synthetic_source_is_a_text_dataset_with_known_entropy():
    config = cfg(data_source="synthetic", vocab_size=32, synthetic_tokens=5000, val_fraction=0.2)
    dd = load_text_data(config)
    check_shape(dd)
    ids = IdentityTokenizer(32).encode(dd["train"][0]["text"])
    assert len(ids) == 1024 and max(ids) < 32
    data = load_token_data(config)
    assert data.train_ids.size == 4000 and data.val_ids.size == 1000
    assert data.known_entropy is not None and data.known_entropy > 0
    assert isinstance(data.tokenizer, IdentityTokenizer)
    capped = load_token_data(config.replace(max_samples=2))
    assert capped.train_ids.size == 2048 and np.array_equal(capped.train_ids, data.train_ids[:2048])


# --- shared rules: max_samples, splits, text column -----------------------------------------


def test_max_samples_caps_every_split(tmp_path):
    pd.DataFrame({"text": docs(40)}).to_csv(tmp_path / "d.csv", index=False)
    dd = load_text_data(cfg(data_path=str(tmp_path / "d.csv"), max_samples=3))
    assert len(dd["train"]) == 3 and len(dd["validation"]) == 3
    saved = tmp_path / "saved"
    DatasetDict(train=Dataset.from_dict({"text": docs(10)}),
                validation=Dataset.from_dict({"text": docs(5)})).save_to_disk(str(saved))
    dd = load_text_data(cfg(data_path=str(saved), max_samples=4))
    assert texts(dd, "train") == docs(4) and texts(dd, "validation") == docs(4)


def test_validation_split_is_seeded_and_deterministic(tmp_path):
    pd.DataFrame({"text": docs(40)}).to_csv(tmp_path / "d.csv", index=False)
    a = load_text_data(cfg(data_path=str(tmp_path / "d.csv"), seed=1))
    b = load_text_data(cfg(data_path=str(tmp_path / "d.csv"), seed=1))
    c = load_text_data(cfg(data_path=str(tmp_path / "d.csv"), seed=2))
    assert texts(a, "validation") == texts(b, "validation")
    assert texts(a, "validation") != texts(c, "validation")
    assert len(a["validation"]) == 10 and not set(texts(a, "train")) & set(texts(a, "validation"))


def test_text_column_choice_and_ambiguity(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"id": range(6), "content": docs(6)}).to_csv(path, index=False)
    assert len(load_text_data(cfg(data_path=str(path)))["train"]) > 0  # the only string column
    pd.DataFrame({"title": docs(6), "body": docs(6)[::-1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"several text columns \['title', 'body'\]; set "
                       r"text_column \(in the notebook: the field under data_source in cell 2\.1"):
        load_text_data(cfg(data_path=str(path)))
    dd = load_text_data(cfg(data_path=str(path), text_column="body"))
    assert sorted(texts(dd, "train") + texts(dd, "validation")) == sorted(docs(6))
    with pytest.raises(DataError, match=r"text_column='nope'.*\['title', 'body'\]"):
        load_text_data(cfg(data_path=str(path), text_column="nope"))
    pd.DataFrame({"text": docs(6), "n": range(6)}).to_csv(path, index=False)
    with pytest.raises(DataError, match="'n'.*not text"):
        load_text_data(cfg(data_path=str(path), text_column="n"))


def test_text_column_is_ignored_where_there_is_no_table(tmp_path):
    (tmp_path / "a.txt").write_text("alpha document")
    (tmp_path / "b.txt").write_text("beta document")
    dd = load_text_data(cfg(data_path=str(tmp_path), text_column="body"))  # left from a csv run
    assert sorted(texts(dd, "train") + texts(dd, "validation")) == ["alpha document",
                                                                    "beta document"]
    synthetic = cfg(data_source="synthetic", vocab_size=16, synthetic_tokens=2000,
                    text_column="body")
    assert load_token_data(synthetic).train_ids.size == 1500


def test_empty_rows_are_dropped_and_counted(tmp_path, capsys):
    pd.DataFrame({"text": ["", "real text one", "   ", "real text two", None, "three"]}).to_json(
        tmp_path / "d.jsonl", orient="records", lines=True)
    dd = load_text_data(cfg(data_path=str(tmp_path / "d.jsonl")))
    assert sorted(texts(dd, "train") + texts(dd, "validation")) == [
        "real text one", "real text two", "three"]
    assert "Skipped 3 of 6 rows" in capsys.readouterr().out  # never silently


def test_jsonl_rows_with_different_keys_are_refused_not_half_dropped(tmp_path):
    rows = [{"text": "first row"}, {"body": "second row"}, {"text": "third row"},
            {"body": "fourth row"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl keeps its text under different keys: "
                       r"'text' in 2 rows, 'body' in 2 rows.*rename 'body' to 'text'"):
        load_text_data(cfg(data_path=str(path)))
    with pytest.raises(DataError, match="different keys"):  # naming one column drops the rest too
        load_text_data(cfg(data_path=str(path), text_column="body"))


def test_a_text_column_empty_in_every_row_is_called_empty(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("text,n\n,1\n,2\n,3\n")  # read as an all-null float column
    with pytest.raises(DataError, match=r"blank\.csv has no text to train on: every row of "
                       r"column 'text' is empty") as info:
        load_text_data(cfg(data_path=str(path)))
    assert "no text column" not in str(info.value)
    with pytest.raises(DataError, match="Column 'text' of .*blank.csv is empty in every row"):
        load_text_data(cfg(data_path=str(path), text_column="text"))


# --- bad inputs -----------------------------------------------------------------------------


def test_bad_inputs_raise_errors_naming_the_problem(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        load_text_data(cfg(data_path=str(tmp_path / "empty.csv")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        load_text_data(cfg(data_path=str(tmp_path / "empty.txt")))
    (tmp_path / "blob.csv").write_bytes(b"text\n\x00\x01\x02\xff")
    with pytest.raises(DataError, match=r"blob\.csv looks like a binary file"):
        load_text_data(cfg(data_path=str(tmp_path / "blob.csv")))
    (tmp_path / "blob.txt").write_bytes(b"abc\x00def")
    with pytest.raises(DataError, match=r"blob\.txt looks like a binary file"):
        load_text_data(cfg(data_path=str(tmp_path / "blob.txt")))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"broken\.jsonl.*as json"):
        load_text_data(cfg(data_path=str(tmp_path / "broken.jsonl")))
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"sheet\.xlsx: \.xlsx files are not a supported format"):
        load_text_data(cfg(data_path=str(tmp_path / "sheet.xlsx")))
    pd.DataFrame({"text": ["", " ", "\n"]}).to_csv(tmp_path / "blank.csv", index=False)
    with pytest.raises(DataError, match="every row of column 'text' is empty"):
        load_text_data(cfg(data_path=str(tmp_path / "blank.csv")))
    with pytest.raises(DataError, match="data_path is empty"):
        load_text_data(cfg(data_path=""))
    with pytest.raises(DataError, match="huggingface, drive, upload, local, synthetic"):
        load_text_data(cfg(data_source="ftp"))


def test_a_folder_mixing_text_and_tables_asks_for_a_glob(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    pd.DataFrame({"text": ["x"]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match="different kinds.*glob"):
        load_text_data(cfg(data_path=str(tmp_path)))


# --- upload ---------------------------------------------------------------------------------


def fake_colab(monkeypatch, uploads: list[dict[str, bytes]]):
    """google.colab with a files.upload() that hands out `uploads` one call at a time."""
    calls = []

    def upload():
        calls.append(1)
        if not uploads:
            pytest.fail("files.upload() asked the person again")
        return uploads.pop(0)

    colab = types.ModuleType("google.colab")
    colab.files = types.SimpleNamespace(upload=upload)
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    return calls


def test_colab_upload_is_kept_and_reused_after_a_disconnect(workspace, monkeypatch):
    body = "\n".join(docs(10)).encode()
    calls = fake_colab(monkeypatch, [{"corpus.txt": body}])
    config = cfg(data_source="upload", data_path="")
    first = load_text_data(config, workspace)
    kept = workspace.datasets / "uploads" / "corpus.txt"
    assert kept.read_bytes() == body and len(calls) == 1
    again = load_text_data(config, workspace)  # the re-run: no second dialog
    assert len(calls) == 1 and texts(again, "train") == texts(first, "train")


def test_upload_outside_colab_copies_the_named_file(workspace, tmp_path, capsys):
    src = tmp_path / "mine.csv"
    pd.DataFrame({"text": docs(8)}).to_csv(src, index=False)
    load_text_data(cfg(data_source="upload", data_path=str(src)), workspace)
    kept = workspace.datasets / "uploads" / "mine.csv"
    assert kept.read_bytes() == src.read_bytes()
    mtime = kept.stat().st_mtime_ns
    load_text_data(cfg(data_source="upload", data_path=str(src)), workspace)
    assert kept.stat().st_mtime_ns == mtime  # unchanged file is not rewritten (cache key holds)
    load_text_data(cfg(data_source="upload", data_path=""), workspace)
    assert "Reusing the earlier upload" in capsys.readouterr().out
    with pytest.raises(DataError, match="pass a workspace"):
        load_text_data(cfg(data_source="upload", data_path=str(src)))


def test_upload_outside_colab_without_a_path_says_what_to_do(workspace):
    with pytest.raises(DataError, match="no upload dialog: set data_path"):
        load_text_data(cfg(data_source="upload", data_path=""), workspace)


def test_reusing_an_upload_is_said_once_not_at_every_load(workspace, tmp_path, capsys):
    src = tmp_path / "mine.txt"
    src.write_text("\n".join(docs(20)))
    load_text_data(cfg(data_source="upload", data_path=str(src)), workspace)
    capsys.readouterr()
    config = cfg(data_source="upload", data_path="")
    for _ in range(3):  # the preview, the time estimate and training each resolve the source
        load_token_data(config, workspace)
    out = capsys.readouterr().out
    assert out.count("Reusing the earlier upload") == 1
    assert "set data_path" in out  # the CLI's name for the field


def test_upload_cell_pins_its_file_and_names_its_own_fields(workspace, monkeypatch, capsys):
    from utils.training.notebook import DataChoice

    first, second = "\n".join(docs(10)).encode(), "\n".join(docs(12)[::-1]).encode()
    calls = fake_colab(monkeypatch, [{"first.txt": first}, {"second.txt": second}])
    data = DataChoice("upload")
    data.use("upload", data_path="", workspace=workspace)
    kept = workspace.datasets / "uploads" / "first.txt"
    assert len(calls) == 1 and data.settings["data_path"] == str(kept)
    # The later cells (estimate, training) read the pinned file: nothing is looked up again.
    capsys.readouterr()
    config = TrainingConfig(tokenizer="byte").replace(**data.settings)
    load_token_data(config, workspace)
    load_token_data(config, workspace)
    assert "Reusing" not in capsys.readouterr().out

    again = DataChoice("upload")  # Run all again, upload_new unticked: no dialog
    again.use("upload", data_path="", workspace=workspace)
    out = capsys.readouterr().out
    assert len(calls) == 1 and again.settings["data_path"] == str(kept)
    assert "Reusing the earlier upload" in out and "upload_new" in out and "upload_path" in out
    assert "data_path" not in out

    new = DataChoice("upload")  # upload_new ticked: the dialog opens again
    new.use("upload", data_path="", ask_again=True, workspace=workspace)
    assert len(calls) == 2
    assert new.settings["data_path"] == str(workspace.datasets / "uploads" / "second.txt")


def test_several_files_uploaded_at_once_are_reused_together(workspace, monkeypatch):
    from utils.training.data.uploads import find_upload

    calls = fake_colab(monkeypatch, [{"a.txt": b"alpha text here", "b.txt": b"beta text here"}])
    folder = find_upload(workspace)
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
    assert find_upload(workspace) == folder and len(calls) == 1  # the set, not its newest file
    dd = load_text_data(cfg(data_source="upload", data_path=""), workspace)
    assert sorted(texts(dd, "train") + texts(dd, "validation")) == ["alpha text here",
                                                                    "beta text here"]


def test_asking_for_a_new_upload_outside_colab_names_the_field(workspace):
    from utils.training.notebook import DataChoice

    with pytest.raises(DataError, match="no upload dialog outside Colab: set upload_path"):
        DataChoice("upload").use("upload", data_path="", ask_again=True, workspace=workspace)


# --- the Hub --------------------------------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch):
    """urllib honours *_proxy variables; a proxy would answer for the local ports we probe."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def test_unreachable_hub_is_a_prompt_error_naming_alternatives(monkeypatch, no_proxy):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources_module, "HUB_PROBE_URL", closed_port_url())
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("went online"))
    with pytest.raises(DataError, match="Cannot reach the Hugging Face Hub") as err:
        load_text_data(cfg(data_source="huggingface", dataset_name="someone/never-cached-data"))
    for alternative in ("'local'", "'drive'", "'upload'", "save_to_disk", "'synthetic'"):
        assert alternative in str(err.value)


def test_offline_mode_error_names_alternatives(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sources_module, "hub_reachable", lambda *a, **k: pytest.fail("probed"))
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set.*'synthetic'"):
        load_text_data(cfg(data_source="huggingface", dataset_name="someone/never-cached-data"))


def test_hub_probe_sees_a_server_that_answers(no_proxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (the stdlib's name)
            self.send_response(404)  # any answer means "reachable"
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert hub_reachable(f"http://127.0.0.1:{server.server_port}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert not hub_reachable(closed_port_url(), timeout=5)


# --- tokenizing and the cache ---------------------------------------------------------------


def write_corpus(folder, n=12) -> None:
    folder.mkdir(exist_ok=True)
    for i, d in enumerate(docs(n)):
        (folder / f"d{i:02d}.txt").write_text(d + "\nnaïve café 🚀\n")


def test_tokens_have_eos_after_each_document_and_decode_back(tmp_path):
    write_corpus(tmp_path / "c")
    data = load_token_data(cfg(data_path=str(tmp_path / "c"), tokenizer="bpe"))
    tok = data.tokenizer
    assert isinstance(tok, HFTokenizer) and data.train_ids.dtype == np.uint16
    assert int((data.train_ids == tok.eos_id).sum()) == 9 and int(data.train_ids[-1]) == tok.eos_id
    first_doc = data.train_ids[: int(np.flatnonzero(data.train_ids == tok.eos_id)[0])]
    assert tok.decode(first_doc.tolist()) in [d + "\nnaïve café 🚀\n" for d in docs(12)]
    assert data.cache_path is None and not data.from_cache


def test_second_load_uses_the_cache_without_tokenizing(workspace, tmp_path, monkeypatch, capsys):
    write_corpus(tmp_path / "c")
    config = cfg(data_path=str(tmp_path / "c"), tokenizer="bpe")
    first = load_token_data(config, workspace)
    assert "cached at" in capsys.readouterr().out and not first.from_cache
    folder = first.cache_path
    assert folder.parent == workspace.datasets
    assert {"train.bin", "validation.bin", "tokenizer.json", "meta.json"} <= {
        p.name for p in folder.iterdir()}
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["train_tokens"] == first.train_ids.size and meta["dtype"] == "uint16"
    assert (folder / "train.bin").stat().st_size == 2 * first.train_ids.size

    def boom(*args, **kwargs):
        raise AssertionError("tokenization ran on a cache hit")

    for name in ("build_tokenizer", "encode_split", "read_source"):
        monkeypatch.setattr(loaders_module, name, boom)
    # block_size is not part of the key: another context length reuses the same tokens.
    second = load_token_data(config.replace(block_size=64), workspace)
    assert second.from_cache and second.cache_path == folder
    assert "loaded cached tokens from" in capsys.readouterr().out
    assert np.array_equal(second.train_ids, first.train_ids)
    assert np.array_equal(second.val_ids, first.val_ids)
    assert second.tokenizer.encode("naïve café") == first.tokenizer.encode("naïve café")
    assert second.source == first.source

    # Cached local: the folder itself as data_path.
    direct = load_token_data(cfg(data_source="local", data_path=str(folder)))
    assert direct.from_cache and np.array_equal(direct.val_ids, first.val_ids)
    with pytest.raises(DataError, match="holds tokens cached"):
        load_text_data(cfg(data_source="local", data_path=str(folder)))


def test_a_cache_folder_named_directly_records_the_tokenizer_it_was_made_with(
        workspace, tmp_path, capsys):
    from utils.training.experiment_db import ExperimentDB
    from utils.training.notebook import DataChoice
    from utils.training.run import TrainingSession, prepare

    write_corpus(tmp_path / "c")
    made = load_token_data(cfg(data_path=str(tmp_path / "c"), tokenizer="bpe", vocab_size=300),
                           workspace)
    # The form still says byte / 8192, as the run did.
    config = TrainingConfig(run_name="cached", data_source="local", data_path=str(made.cache_path),
                            tokenizer="byte", vocab_size=8192, n_layers=1, n_heads=2, d_model=16,
                            block_size=8, batch_size=4, epochs=1)
    prepared = prepare(config, workspace)
    assert (prepared.config.tokenizer, prepared.config.vocab_size) == ("bpe", 300)
    assert "made with tokenizer='bpe', vocab_size=300" in capsys.readouterr().out
    saved = json.loads((workspace.configs / "cached.json").read_text())
    assert (saved["tokenizer"], saved["vocab_size"]) == ("bpe", 300)
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        session = TrainingSession.create(config, workspace, db=db, live_plot=False,
                                         progress=False, verbose=False)
        logged = db.get_run(session.tracker.run_id)["config"]
    assert (logged["tokenizer"], logged["vocab_size"]) == ("bpe", 300)
    assert session.config.tokenizer == "bpe"

    # The notebook's data cell says so before the configuration cell builds the config.
    data = DataChoice("local")
    data.use("local", data_path=str(made.cache_path), workspace=workspace)
    assert data.settings["tokenizer"] == "bpe" and data.settings["vocab_size"] == 300
    assert "cached tokens at" in capsys.readouterr().out


def test_cache_key_changes_with_what_changes_the_tokens(workspace, tmp_path):
    write_corpus(tmp_path / "c")
    config = cfg(data_path=str(tmp_path / "c"), tokenizer="bpe")
    base = load_token_data(config, workspace).cache_path
    assert load_token_data(config.replace(vocab_size=320), workspace).cache_path != base
    assert load_token_data(config.replace(seed=4), workspace).cache_path != base
    assert load_token_data(config.replace(tokenizer="char"), workspace).cache_path != base
    (tmp_path / "c" / "d00.txt").write_text("the file changed")
    changed = load_token_data(config, workspace)
    assert changed.cache_path != base and not changed.from_cache
    # Fields the source does not use leave the key alone.
    assert load_token_data(config.replace(dataset_name="other"), workspace).from_cache


def test_synthetic_cache_keeps_the_known_entropy(workspace):
    config = cfg(data_source="synthetic", vocab_size=16, synthetic_tokens=3000)
    first = load_token_data(config, workspace)
    second = load_token_data(config, workspace)
    assert second.from_cache and second.known_entropy == pytest.approx(first.known_entropy)
    assert isinstance(second.tokenizer, IdentityTokenizer) and second.tokenizer.vocab_size == 16


def test_max_samples_streams_only_the_head_of_a_hub_dataset(monkeypatch):
    """A quick run on a huge Hub dataset must not download all of it: with max_samples the
    loader streams the first rows of each split instead."""
    calls = []

    def fake_load_dataset(name, subset=None, streaming=False, **kwargs):
        calls.append(streaming)
        assert streaming, "with max_samples the Hub dataset must be streamed"
        train = Dataset.from_dict({"text": [f"doc {i}" for i in range(1000)]})
        return datasets.IterableDatasetDict(train=train.to_iterable_dataset())

    monkeypatch.setattr(sources_module, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_load_dataset)
    dd = load_text_data(cfg(data_source="huggingface", dataset_name="some/huge", max_samples=20))
    assert calls == [True]
    assert len(dd["train"]) == 20 and 1 <= len(dd["validation"]) <= 20


@pytest.mark.parametrize("content", [b"ok text\n" * 500 + b"\x00", b"caf\xc3\xa9 " * 400 + b"\xff",
                                     b"x " * 700 + "é".encode()[:1], b" \n\t" * 600])
def test_text_read_in_pieces_fails_as_text_read_whole(tmp_path, monkeypatch, content):
    """Binary, non-UTF-8 (the same byte position), cut-off or blank: the same DataError."""
    from utils.training.data import text as text_module

    (tmp_path / "a.txt").write_bytes(content)
    errors = []
    for big in (False, True):
        monkeypatch.setattr(text_module, "TEXT_IN_MEMORY_BYTES", 0 if big else 1 << 25)
        monkeypatch.setattr(text_module, "READ_BYTES", 1000)  # the problem is in a later read
        with pytest.raises(DataError) as caught:
            load_text_data(cfg(data_path=str(tmp_path / "a.txt")))
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert any(w in errors[0] for w in ("binary", "position", "No text found"))


def test_the_preview_of_text_in_pieces_counts_documents(tmp_path, monkeypatch, capsys):
    from utils.training.data import text as text_module
    from utils.training.notebook import DataChoice

    monkeypatch.setattr(text_module, "TEXT_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(text_module, "PIECE_CHARS", 40)
    for i, d in enumerate(docs(8)):
        (tmp_path / f"d{i}.txt").write_text(d + "\n" + "and then some more words\n" * 9)
    DataChoice("local").use("local", data_path=str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[-4].endswith("train: 7 documents (69 pieces), validation: 1 documents (9 pieces)")
    assert all(line.startswith("  | document number") for line in out[-3:])
