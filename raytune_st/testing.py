"""Test helpers: tiny randomly initialised models, and an S3 API server on 127.0.0.1.

A 2-layer BERT with hidden size 32 and all-MiniLM-L6-v2's tokenizer: it loads, tokenises and
trains like the real thing in milliseconds, so the machinery can be exercised (and its memory
measured) without paying for a real model's compute. Its embeddings mean nothing.
"""

from __future__ import annotations

import os

TOKENIZER_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _bert_config(**overrides):
    from transformers import AutoTokenizer, BertConfig

    from raytune_st.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TOKENIZER_MODEL))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **overrides,
    )
    return config, tokenizer


def save_tiny_bert(path: str, *, seed: int = 0) -> str:
    """A random ``BertModel`` saved with ``save_pretrained`` (no modules.json) plus the tokenizer."""
    import torch
    from transformers import BertModel

    config, tokenizer = _bert_config()
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_bi_encoder(path: str, *, max_seq_length: int = 64, seed: int = 0) -> str:
    """The tiny BERT as a SentenceTransformer (Transformer + mean Pooling) in ``path``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    raw = save_tiny_bert(os.path.join(path, "hf"), seed=seed)
    transformer = Transformer(raw, max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    out = os.path.join(path, "bi-encoder")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(out)
    return out


def save_tiny_cross_encoder(
    path: str, *, max_length: int = 64, initializer_range: float = 0.02, seed: int = 1
) -> str:
    """The tiny BERT with a 1-logit classification head, saved as a CrossEncoder in ``path``.

    With BERT's default ``initializer_range`` (0.02) every pair scores about the same; raise it
    where a test needs the scores to rank pairs apart from float noise.
    """
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import BertForSequenceClassification

    config, tokenizer = _bert_config(num_labels=1, initializer_range=initializer_range)
    torch.manual_seed(seed)
    raw = os.path.join(path, "hf-ce")
    BertForSequenceClassification(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    out = os.path.join(path, "cross-encoder")
    CrossEncoder(raw, num_labels=1, max_length=max_length, device="cpu").save(out)
    return out


class S3TestServer:
    """An S3 API on 127.0.0.1 (moto's server, from the `dev` extra) for tests of object storage.

    Start it, create buckets, and point every S3 client at it with :meth:`env`: pyarrow's
    filesystems (which Ray Data, Ray Train and raytune_st use) honour AWS_ENDPOINT_URL. Stop
    it with :meth:`stop`; as a context manager it stops itself.
    """

    ACCESS_KEY = "raytune-st-test-key"
    SECRET_KEY = "raytune-st-test-secret"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or _free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self._process = None

    def env(self) -> dict[str, str]:
        """The environment variables that send S3 clients (pyarrow, boto3) to this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # pyarrow would otherwise ask the EC2 metadata service for credentials first.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60) -> "S3TestServer":
        import subprocess
        import sys
        import time
        import urllib.request

        server = os.path.join(os.path.dirname(sys.executable), "moto_server")
        if not os.path.exists(server):
            raise RuntimeError("moto_server is not installed; pip install 'moto[server]' (raytune_st's dev extra)")
        self._process = subprocess.Popen(
            [server, "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not answer at {self.endpoint}")
                time.sleep(0.2)

    def client(self):
        import boto3

        env = self.env()
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=env["AWS_REGION"],
            aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY,
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; returns its URI, s3://name."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except Exception:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "S3TestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
