"""Tests for raytune_st.runtime: which cluster to join, and failing fast when it is unreachable."""

from __future__ import annotations

import socket
import time

import pytest

from raytune_st.errors import ClusterError
from raytune_st.runtime import ray_address, ray_session


def test_ray_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None  # start a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379"
    assert ray_address("head:6379") == "head:6379"  # the config wins over the environment
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ray_address(None) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("via_env", [False, True])
def test_unreachable_address_fails_fast_naming_it(monkeypatch, via_env):
    import ray

    assert not ray.is_initialized()
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address if via_env else "")
    start = time.monotonic()
    with pytest.raises(ClusterError) as exc:
        with ray_session(None if via_env else address):
            pass
    assert time.monotonic() - start < 30
    assert address in str(exc.value) and "ray start --head" in str(exc.value)
    assert not ray.is_initialized()
