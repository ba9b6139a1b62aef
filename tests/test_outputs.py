"""Tests for raytune_st.outputs.OutputDir: writing, reading and checking output directories."""

from __future__ import annotations

import os

import pytest

from raytune_st.errors import DataError
from raytune_st import outputs
from raytune_st.outputs import OutputDir


def test_write_read_exists(tmp_path):
    out = OutputDir(str(tmp_path / "run"))
    assert not out.exists("metrics.json")
    target = out.write("metrics.json", '{"a": 1}')
    assert target == str(tmp_path / "run" / "metrics.json")
    assert out.exists("metrics.json") and out.read("metrics.json") == b'{"a": 1}'
    out.write("plots/loss.png", b"\x89PNG")  # creates sub-directories
    assert out.read("plots/loss.png") == b"\x89PNG"
    out.write("metrics.json", "replaced")
    assert out.read("metrics.json") == b"replaced"
    # No temp files left behind by the atomic write.
    assert sorted(os.listdir(tmp_path / "run")) == ["metrics.json", "plots"]


def test_file_uri(tmp_path):
    out = OutputDir(f"file://{tmp_path}/uri-run")
    out.check_writable()
    out.write("config.yaml", "a: 1\n")
    assert (tmp_path / "uri-run" / "config.yaml").read_text() == "a: 1\n"


def test_check_writable_creates_and_leaves_no_probe(tmp_path):
    out = OutputDir(str(tmp_path / "a" / "b"))
    out.check_writable()
    assert os.listdir(tmp_path / "a" / "b") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_check_writable_refuses_a_read_only_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write to directory .*choose a writable output.path"):
            OutputDir(str(locked / "run")).check_writable()
    finally:
        locked.chmod(0o700)


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    # Works as root too: a regular file cannot hold a directory.
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write to directory"):
        OutputDir(str(tmp_path / "file" / "run")).check_writable()


def test_one_filesystem_helper_refuses_a_bad_uri_with_a_sentence():
    from raytune_st.outputs import filesystem

    with pytest.raises(DataError, match="cannot open 'nosuch://x/y'.*check the URI scheme"):
        filesystem("nosuch://x/y")
    fs, path = filesystem("~/x")
    assert path == os.path.expanduser("~/x")


def test_write_atomic_leaves_no_temporary_file_when_it_fails(tmp_path):
    from raytune_st.outputs import filesystem, write_atomic

    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty directory cannot be replaced by a file
    fs, root = filesystem(str(target))
    with pytest.raises(OSError):
        write_atomic(fs, root, b"data")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_delete_removes_only_existing_files(tmp_path):
    out = OutputDir(str(tmp_path))
    out.write("stats.json", "{}")
    out.delete("stats.json", "config.yaml")
    assert not out.exists("stats.json")


def test_a_failed_body_removes_the_directories_it_created(tmp_path):
    from raytune_st.outputs import removed_on_failure

    target = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with removed_on_failure(str(target)):
            OutputDir(str(target)).check_writable()
            (target / "_work").mkdir()
            (tmp_path / "new" / "cache").mkdir()  # e.g. an embedding cache beside the output
            raise RuntimeError("boom")
    # The output directory goes; what the run created beside it, in a parent it created too, stays.
    assert os.listdir(tmp_path / "new") == ["cache"]


def test_a_failed_body_keeps_what_existed_and_what_is_worth_keeping(tmp_path):
    from raytune_st.outputs import removed_on_failure

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with removed_on_failure(str(existing)):
            (existing / "part").write_text("x")
            raise RuntimeError("boom")
    assert (existing / "part").exists()
    kept = tmp_path / "kept"
    with pytest.raises(RuntimeError):
        with removed_on_failure(str(kept), worth_keeping=lambda: True):
            kept.mkdir()
            raise RuntimeError("boom")
    assert kept.exists()
    with removed_on_failure(str(tmp_path / "ok")):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").exists()  # success keeps everything


class _FullDisk:
    """A filesystem whose writes fail as a full disk does (ENOSPC), recording what it was asked."""

    def __init__(self):
        self.deleted: list[str] = []

    def create_dir(self, path, recursive=False):
        pass

    def open_output_stream(self, path):
        import contextlib
        import errno

        class Stream:
            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

        return contextlib.nullcontext(Stream())

    def delete_file(self, path):
        self.deleted.append(path)

    def move(self, src, dst):
        raise AssertionError("a failed write must not be moved into place")


def test_a_full_disk_is_one_error_and_leaves_no_temporary_file():
    from raytune_st.outputs import write_atomic

    fs = _FullDisk()
    with pytest.raises(DataError, match=r"no space left to write '/out/part-00001.parquet' \(4 bytes\); free some space .* then rerun"):
        write_atomic(fs, "/out/part-00001.parquet", b"data")
    assert len(fs.deleted) == 1 and fs.deleted[0].startswith("/out/part-00001.parquet.tmp-")


def test_a_failed_body_takes_back_its_output_in_a_bucket_but_never_the_bucket(bucket):
    import pyarrow.fs

    from raytune_st.outputs import filesystem, removed_on_failure

    fs, name = filesystem(bucket)
    with pytest.raises(RuntimeError):
        with removed_on_failure(f"{bucket}/runs/a"):
            OutputDir(f"{bucket}/runs/a").write("_work/run.json", "{}")
            raise RuntimeError("boom")
    left = fs.get_file_info(pyarrow.fs.FileSelector(name, recursive=True))
    assert [i.path for i in left if i.type == pyarrow.fs.FileType.File] == []
    assert fs.get_file_info(f"{name}/runs/a").type == pyarrow.fs.FileType.NotFound
    assert fs.get_file_info(name).type == pyarrow.fs.FileType.Directory


@pytest.mark.parametrize("uri", ["s3://AKIAEXAMPLE:verysecret@bucket/out", "gs://someone:verysecret@bucket/data.parquet"])
def test_a_uri_with_credentials_in_it_is_refused_without_repeating_them(uri):
    from raytune_st.outputs import filesystem

    with pytest.raises(DataError, match="carries credentials") as caught:
        filesystem(uri)
    assert "verysecret" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
    with pytest.raises(DataError, match="carries credentials"):
        OutputDir(uri)


def test_is_inside_compares_whole_path_components(tmp_path):
    assert outputs.is_inside(str(tmp_path / "out" / "ray" / "run"), str(tmp_path / "out"))
    assert outputs.is_inside(str(tmp_path / "out" / "ray"), str(tmp_path / "out") + "/")
    assert not outputs.is_inside(str(tmp_path / "out-2" / "ray"), str(tmp_path / "out"))  # a sibling with the same prefix
    assert not outputs.is_inside(str(tmp_path / "out"), str(tmp_path / "out"))
    assert outputs.is_inside("s3://bucket/run/ray/x", "s3://bucket/run")
    assert not outputs.is_inside("s3://bucket/run/ray", str(tmp_path))


def test_the_parts_are_written_in_order_and_named_by_position(tmp_path):
    import pyarrow as pa
    import pyarrow.fs
    import pyarrow.parquet as pq

    def blocks():
        """What the score job hands write_parts: a Ray Dataset's blocks, in order (a string column
        as large_string once), and a last block with no rows, which comes after a full part."""
        for start in range(0, 12, 3):
            text = pa.array([f"row {i}" for i in range(start, start + 3)], type=pa.large_string() if start == 6 else pa.string())
            yield pa.table({"query": text, "label": pa.array([float(start)] * 3)})
        yield pa.table({"query": pa.array([], pa.string()), "label": pa.array([], pa.float64())})

    assert outputs.write_parts(blocks(), pyarrow.fs.LocalFileSystem(), str(tmp_path), part_rows=5) == 12
    assert sorted(os.listdir(tmp_path)) == ["part-00000.parquet", "part-00001.parquet"]
    assert [pq.read_metadata(tmp_path / f"part-0000{i}.parquet").num_rows for i in range(2)] == [6, 6]
    assert pq.read_table(tmp_path).column("query").to_pylist() == [f"row {i}" for i in range(12)]
