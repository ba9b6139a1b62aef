"""Ray resource requests in configs: CPUs, GPUs and custom node resources, checked before Ray starts.

Custom resources are how a Ray cluster tells nodes apart: a node started with
``ray start --resources '{"worker_node": 2}'`` (or a KubeRay group's ``rayStartParams``) runs
only the work that asks for ``worker_node``. A job that names one (``compute.resources``,
``scaling.resources_per_worker``, evaluate's ``resources``) is kept on those nodes.

Pure logic, no Ray: Ray supplies the cluster's totals where a check needs them.
"""

from __future__ import annotations

from raytune_st.errors import ClusterError, ConfigError

# Asked for through their own keys (num_cpus, num_gpus), never as a custom resource.
BUILT_IN = ("CPU", "GPU", "memory", "object_store_memory")


def check_amount(key: str, value: float) -> None:
    """Ray's rule for an amount of a resource: above 0, and a fraction only below 1."""
    if value <= 0:
        raise ConfigError(f"{key}: must be more than 0, got {value:g}; leave the resource out to request none")
    if value > 1 and value != int(value):
        raise ConfigError(f"{key}: Ray accepts fractions only below 1, got {value:g}; use {int(value)} or {int(value) + 1}")


def check_resources(prefix: str, *, num_cpus: float, num_gpus: float = 0.0) -> None:
    """Ray's rules for a task's or actor's CPUs and GPUs, as a ConfigError naming the key (`prefix` + num_cpus)."""
    if num_cpus <= 0:
        raise ConfigError(f"{prefix}num_cpus: must be more than 0, got {num_cpus:g}; use a fraction such as 0.5, or a whole number")
    if num_gpus < 0:
        raise ConfigError(f"{prefix}num_gpus: must be 0 or more, got {num_gpus:g}; use 0 for no GPU")
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value > 1 and value != int(value):
            raise ConfigError(
                f"{prefix}{name}: Ray accepts fractions only below 1, got {value:g}; use {int(value)} or {int(value) + 1}"
            )


def check_custom_resources(key: str, resources: dict[str, float], *, built_in_key: str = "num_cpus / num_gpus") -> None:
    """Custom resources (name -> amount) as Ray takes them; CPU and GPU belong to `built_in_key`."""
    for name, value in resources.items():
        if name in BUILT_IN:
            raise ConfigError(f"{key}.{name}: ask for {name} with {built_in_key}; {key} holds custom resources such as worker_node")
        check_amount(f"{key}.{name}", value)


def check_custom_resources_exist(key: str, resources: dict[str, float], cluster: dict[str, float]) -> None:
    """Refuse custom resources that no node of `cluster` (Ray's totals) has: the work would wait forever."""
    missing = sorted(name for name in resources if name not in BUILT_IN and cluster.get(name, 0) <= 0)
    if missing:
        have = sorted(name for name in cluster if name not in BUILT_IN and not name.startswith("node:") and "_group_" not in name)
        raise ClusterError(
            f"{key} asks for {', '.join(repr(m) for m in missing)}, which no node of this Ray cluster has (custom "
            f"resources here: {', '.join(have) or 'none'}); start the nodes with ray start --resources, or remove it from {key}"
        )
