"""Tests for raytune_st.mining.store without Ray: digests recorded on write, seals, and checks on read."""

from __future__ import annotations

import io
import zipfile

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


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_sealed_file_truncated_is_not_complete_and_is_removed_on_read(tmp_path):
    path = str(tmp_path / "corpus-x.npz")
    store.put(path, store.sealed_npz_bytes(ids=np.arange(4), embeddings=np.ones((4, 3), np.float32)))
    assert store.looks_sealed(path)
    assert store.load_vectors(path).shape == (4, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus-x.npz"]  # one object, no record beside it
    data = (tmp_path / "corpus-x.npz").read_bytes()
    (tmp_path / "corpus-x.npz").write_bytes(data[: len(data) // 2])  # a truncated cache file
    assert not store.looks_sealed(path)  # so the embedding stage embeds it again
    with pytest.raises(store.CorruptFile, match=r"is damaged \(not the .npz that was written"):  # not numpy's BadZipFile
        store.load_vectors(path)
    assert not (tmp_path / "corpus-x.npz").exists()


def test_sealed_file_with_other_arrays_under_its_seal_is_refused(tmp_path):
    path = str(tmp_path / "query-x.npz")
    vectors = np.zeros((2, 2), np.float32)
    store.put(path, store.sealed_npz_bytes(ids=np.arange(2), embeddings=vectors))
    # Other vectors under the old seal, in a zip whose own CRCs are right: only the seal finds it.
    with zipfile.ZipFile(tmp_path / "query-x.npz") as old:
        seal = old.read("__sha256__.npy")
    with zipfile.ZipFile(tmp_path / "query-x.npz", "w") as new:
        new.writestr("ids.npy", _npy(np.arange(2)))
        new.writestr("embeddings.npy", _npy(vectors + 1))
        new.writestr("__sha256__.npy", seal)
    assert store.looks_sealed(path)  # a whole zip: only reading finds it
    with pytest.raises(store.CorruptFile, match="contents differ from the sha256 sealed in it"):
        store.load_vectors(path)
    assert not store.exists(path)


def test_a_byte_flipped_in_a_sealed_file_is_found_on_read(tmp_path):
    path = str(tmp_path / "corpus-y.npz")
    store.put(path, store.sealed_npz_bytes(ids=np.arange(8), embeddings=np.ones((8, 4), np.float32)))
    data = bytearray((tmp_path / "corpus-y.npz").read_bytes())
    data[len(data) // 2] ^= 0x01  # same size
    (tmp_path / "corpus-y.npz").write_bytes(bytes(data))
    assert store.looks_sealed(path)
    with pytest.raises(store.CorruptFile, match="is damaged"):
        store.load_vectors(path)
    assert not store.exists(path)


def test_a_file_without_a_seal_is_not_trusted(tmp_path):
    path = str(tmp_path / "old.npz")
    store.write_npz(path, embeddings=np.zeros((1, 1), np.float32))  # as an older raytune_st wrote it
    with pytest.raises(store.CorruptFile, match="carries no seal"):
        store.load_vectors(path)
    with pytest.raises(store.CorruptFile, match="is missing"):
        store.load_vectors(path)  # the unsealed file was removed, so the chunk is embedded again
    with pytest.raises(ValueError, match="reserved"):
        store.sealed_npz_bytes(__sha256__=np.zeros(1))


def test_sealed_files_in_object_storage(bucket):
    # The same seal and checks through pyarrow's S3 filesystem (moto's S3 API on 127.0.0.1).
    from raytune_st.outputs import filesystem

    path = f"{bucket}/cache/corpus-x.npz"
    store.put(path, store.sealed_npz_bytes(ids=np.arange(3), embeddings=np.ones((3, 2), np.float32)))
    assert store.looks_sealed(path) and store.load_vectors(path).shape == (3, 2)
    assert store.list_names(f"{bucket}/cache") == ["corpus-x.npz"]
    fs, key = filesystem(path)
    with fs.open_output_stream(key) as handle:  # an upload cut short
        handle.write(b"PK\x03\x04")
    assert not store.looks_sealed(path)
    with pytest.raises(store.CorruptFile, match=r"is damaged \(not the .npz that was written: 4 bytes"):
        store.load_vectors(path)
    assert store.list_names(f"{bucket}/cache") == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_text_chunks_are_uncompressed_on_a_local_disk_and_snappy_in_object_storage(where, tmp_path, request):
    # Snappy costs the prepare task a quarter of its CPU for bytes a local disk holds cheaply; on
    # object storage every byte crosses the network.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytune_st.outputs import filesystem

    root = str(tmp_path) if where == "local" else request.getfixturevalue("bucket")
    path = store.join(root, "corpus-00000.texts")
    texts = pa.array(["a passage", "", "ünïcode ✓", "a passage (1)"], pa.string())
    store.write_texts(path, texts)

    assert store.load_texts(path) == texts.to_pylist()
    fs, key = filesystem(path)
    with fs.open_input_file(key) as handle:
        column = pq.ParquetFile(handle).metadata.row_group(0).column(0)
        assert (column.compression, "RLE_DICTIONARY" in column.encodings) == ("UNCOMPRESSED" if where == "local" else "SNAPPY", False)
    assert [name for name in store.list_names(root) if "tmp" in name] == []  # written through a temporary name, renamed whole
