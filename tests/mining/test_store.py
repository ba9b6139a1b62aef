"""Tests for raytune_st.mining.store without Ray: digests recorded on write and checked on read."""

from __future__ import annotations

import numpy as np
import pytest

from raytune_st.mining import store


def test_digest_of_bytes_and_what_differs():
    digest = store.Digest.of(b"abc")
    assert digest.size == 3 and len(digest.sha256) == 64
    assert store.Digest.from_dict(digest.to_dict()) == digest
    assert digest.mismatch(b"abc") is None
    assert digest.mismatch(b"ab") == "2 bytes where 3 were written"
    assert digest.mismatch(b"abd") == "its sha256 differs from the one recorded when it was written"


def test_get_with_a_digest_refuses_other_bytes(tmp_path):
    path = str(tmp_path / "a" / "file.bin")
    digest = store.put(path, b"0123456789")
    assert store.get(path, digest) == b"0123456789"
    assert store.intact(path, digest) is None
    (tmp_path / "a" / "file.bin").write_bytes(b"01234")
    with pytest.raises(store.CorruptFile, match=r"is damaged \(5 bytes where 10 were written\)"):
        store.get(path, digest)
    (tmp_path / "a" / "file.bin").write_bytes(b"0123456780")
    assert "sha256 differs" in store.intact(path, digest)
    assert store.intact(str(tmp_path / "missing"), digest) == "it is missing"


def test_checked_file_truncated_is_not_complete_and_is_removed_on_read(tmp_path):
    path = str(tmp_path / "corpus-x.npz")
    store.put_checked(path, store.npz_bytes(ids=np.arange(4), embeddings=np.ones((4, 3), np.float32)))
    assert store.looks_complete(path)
    assert store.load_vectors(path).shape == (4, 3)
    data = (tmp_path / "corpus-x.npz").read_bytes()
    (tmp_path / "corpus-x.npz").write_bytes(data[: len(data) // 2])  # a truncated cache file
    assert not store.looks_complete(path)  # so the embedding stage embeds it again
    with pytest.raises(store.CorruptFile, match="is damaged"):  # not numpy's BadZipFile
        store.load_vectors(path)
    assert not (tmp_path / "corpus-x.npz").exists() and not (tmp_path / "corpus-x.npz.sha256.json").exists()


def test_checked_file_changed_in_place_fails_its_sha256(tmp_path):
    path = str(tmp_path / "query-x.npz")
    store.put_checked(path, store.npz_bytes(ids=np.arange(2), embeddings=np.zeros((2, 2), np.float32)))
    data = bytearray((tmp_path / "query-x.npz").read_bytes())
    data[-30] ^= 0xFF
    (tmp_path / "query-x.npz").write_bytes(bytes(data))
    assert store.looks_complete(path)  # same size: only reading finds it
    with pytest.raises(store.CorruptFile, match="sha256 differs"):
        store.load_vectors(path)
    assert not store.exists(path)


def test_a_file_without_its_record_is_not_trusted(tmp_path):
    path = str(tmp_path / "old.npz")
    store.write_npz(path, embeddings=np.zeros((1, 1), np.float32))  # written without a record
    assert not store.looks_complete(path)
    with pytest.raises(store.CorruptFile, match="no record of a complete write"):
        store.load_vectors(path)


def test_checked_files_in_object_storage(bucket):
    # The same records and checks through pyarrow's S3 filesystem (moto's S3 API on 127.0.0.1).
    from raytune_st.outputs import filesystem

    path = f"{bucket}/cache/corpus-x.npz"
    store.put_checked(path, store.npz_bytes(ids=np.arange(3), embeddings=np.ones((3, 2), np.float32)))
    assert store.looks_complete(path) and store.load_vectors(path).shape == (3, 2)
    assert store.list_names(f"{bucket}/cache") == ["corpus-x.npz", "corpus-x.npz.sha256.json"]
    fs, key = filesystem(path)
    with fs.open_output_stream(key) as handle:  # an upload cut short
        handle.write(b"PK\x03\x04")
    assert not store.looks_complete(path)
    with pytest.raises(store.CorruptFile, match=r"is damaged \(4 bytes where"):
        store.load_vectors(path)
    assert store.list_names(f"{bucket}/cache") == []
