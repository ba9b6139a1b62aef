"""Models in object storage, through a real S3 API (moto's server on 127.0.0.1): no Ray."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.fs
import pytest

from raytune_st.errors import ModelError
from raytune_st.models import load_bi_encoder, resolve_model
from raytune_st.models import remote
from raytune_st.models.remote import COMPLETE_MARKER, fetch_model_dir, list_model_files
from raytune_st.outputs import filesystem


def upload_dir(local: str, uri: str) -> None:
    fs, root = filesystem(uri)
    pyarrow.fs.copy_files(local, root, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "model-cache")
    monkeypatch.setenv("RAYTUNE_ST_MODEL_CACHE", path)
    return path


@pytest.fixture
def model_uri(tiny_bert_dir, bucket) -> str:
    uri = f"{bucket}/models/tiny"
    upload_dir(tiny_bert_dir, uri)
    return uri


def test_a_model_in_a_bucket_loads_and_embeds_like_the_local_copy(model_uri, tiny_bert_dir, cache):
    texts = ["apt package manager", "a tiny text editor"]
    remote_model = load_bi_encoder(model_uri, device="cpu")
    local_model = load_bi_encoder(tiny_bert_dir, device="cpu")
    np.testing.assert_array_equal(remote_model.encode(texts), local_model.encode(texts))
    # The copy lives in the node's cache, marked complete.
    (entry,) = [e for e in os.listdir(cache) if not e.endswith(".lock")]
    assert os.path.isfile(os.path.join(cache, entry, COMPLETE_MARKER))
    assert resolve_model(model_uri) == os.path.join(cache, entry)


def test_the_second_resolve_reuses_the_copy_without_downloading(model_uri, cache, monkeypatch):
    first = resolve_model(model_uri)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(remote, "_download", no_download)
    assert resolve_model(model_uri) == first


def test_a_model_overwritten_in_the_bucket_gets_a_new_copy(model_uri, tiny_bert_dir, cache, tmp_path):
    first = resolve_model(model_uri)
    from raytune_st.testing import save_tiny_bi_encoder

    other = save_tiny_bi_encoder(str(tmp_path / "other"), seed=7)
    upload_dir(other, model_uri)
    second = resolve_model(model_uri)
    assert second != first
    texts = ["a tiny text editor"]
    np.testing.assert_array_equal(
        load_bi_encoder(second, device="cpu").encode(texts), load_bi_encoder(other, device="cpu").encode(texts)
    )


def test_an_interrupted_download_leaves_nothing_a_later_run_trusts(model_uri, cache, monkeypatch):
    real_copy = remote.shutil.copyfileobj
    calls = []

    def failing_copy(source, sink, length=0):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("connection reset by peer")
        real_copy(source, sink, length)

    monkeypatch.setattr(remote.shutil, "copyfileobj", failing_copy)
    with pytest.raises(ModelError, match="failed .*connection reset by peer.*rerun"):
        resolve_model(model_uri)
    assert [e for e in os.listdir(cache) if not e.endswith(".lock")] == []
    monkeypatch.setattr(remote.shutil, "copyfileobj", real_copy)
    path = resolve_model(model_uri)
    assert os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def test_a_killed_downloads_staging_directory_is_cleared_by_the_next_download(model_uri, cache):
    path = resolve_model(model_uri)
    shutil.rmtree(path)
    os.makedirs(f"{path}.tmp-0123abcd/1_Pooling")  # what a SIGKILLed download leaves
    assert resolve_model(model_uri) == path
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(path), os.path.basename(path) + ".lock"])


def test_a_copy_without_its_completion_marker_is_downloaded_again(model_uri, cache):
    path = resolve_model(model_uri)
    os.remove(os.path.join(path, COMPLETE_MARKER))
    with open(os.path.join(path, "config.json"), "w") as handle:
        handle.write("half a file")
    assert resolve_model(model_uri) == path
    assert os.path.isfile(os.path.join(path, COMPLETE_MARKER))
    assert open(os.path.join(path, "config.json")).read() != "half a file"


def test_remote_model_errors_name_the_problem(bucket, cache, s3_server):
    with pytest.raises(ModelError, match="does not exist or is empty"):
        resolve_model(f"{bucket}/no-such-model")
    fs, root = filesystem(f"{bucket}/notes/readme.txt")
    with fs.open_output_stream(root) as handle:
        handle.write(b"not a model")
    with pytest.raises(ModelError, match="holds no model: none of modules.json, config.json"):
        resolve_model(f"{bucket}/notes")
    with pytest.raises(ModelError, match="is a file; point it at the model's directory"):
        resolve_model(f"{bucket}/notes/readme.txt")
    with pytest.raises(ModelError, match="cannot list the model directory 's3://no-such-bucket-rtst/m'.*bucket exists"):
        resolve_model("s3://no-such-bucket-rtst/m")


def test_credentials_in_a_uri_are_refused_without_being_repeated(cache):
    with pytest.raises(ModelError, match="carries credentials") as caught:
        list_model_files("s3://AKIAEXAMPLE:verysecret@bucket/model")
    assert "verysecret" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


def test_an_empty_local_directory_is_no_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no model"):
        resolve_model(str(tmp_path / "empty"))


def test_concurrent_resolves_share_one_download(model_uri, cache, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    downloads = []
    real = remote._download

    def counting(*args):
        downloads.append(1)
        real(*args)

    monkeypatch.setattr(remote, "_download", counting)
    with ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(lambda _: fetch_model_dir(model_uri), range(4)))
    assert len(paths) == 1 and len(downloads) == 1


def test_checking_a_model_in_a_bucket_lists_it_without_downloading(model_uri, bucket, cache):
    from raytune_st.models import check_model

    check_model(model_uri)
    assert not os.path.exists(cache) or os.listdir(cache) == []  # the weights are fetched where the model loads
    upload_dir(os.path.join(os.path.dirname(__file__)), f"{bucket}/not-a-model")  # files, but no model marker
    with pytest.raises(ModelError, match="not-a-model"):
        check_model(f"{bucket}/not-a-model")
    with pytest.raises(ModelError, match="does not exist or is empty"):
        check_model(f"{bucket}/models/missing")
