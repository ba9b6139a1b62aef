"""Resource requests in configs (raytune_st.config.resources), without Ray."""

import pytest

from raytune_st.config.resources import check_amount, check_custom_resources, check_custom_resources_exist, check_resources
from raytune_st.errors import ClusterError, ConfigError


def test_amounts_follow_rays_rules():
    for ok in (0.01, 0.5, 1, 2, 8.0):
        check_amount("x", ok)
    with pytest.raises(ConfigError, match=r"x: must be more than 0, got -1"):
        check_amount("x", -1)
    with pytest.raises(ConfigError, match=r"x: Ray accepts fractions only below 1, got 1.5; use 1 or 2"):
        check_amount("x", 1.5)
    with pytest.raises(ConfigError, match=r"index.num_cpus: must be more than 0"):
        check_resources("index.", num_cpus=0)
    with pytest.raises(ConfigError, match=r"index.num_gpus: must be 0 or more"):
        check_resources("index.", num_cpus=1, num_gpus=-1)


def test_custom_resources_leave_cpus_and_gpus_to_their_own_keys():
    check_custom_resources("resources", {"worker_node": 0.5, "accelerator_type:H100": 0.001})
    with pytest.raises(ConfigError, match=r"resources.GPU: ask for GPU with num_gpus"):
        check_custom_resources("resources", {"GPU": 1}, built_in_key="num_gpus")


def test_a_custom_resource_no_node_has_is_refused_naming_those_that_exist():
    cluster = {"CPU": 4.0, "memory": 1e9, "worker_node": 2.0, "node:10.0.0.2": 1.0, "bundle_group_abc": 1.0}
    check_custom_resources_exist("k", {"worker_node": 1}, cluster)
    check_custom_resources_exist("k", {"CPU": 1}, cluster)  # built-in resources are checked elsewhere
    with pytest.raises(ClusterError, match=r"k asks for 'gpu_node', which no node .* \(custom resources here: worker_node\); start the nodes"):
        check_custom_resources_exist("k", {"gpu_node": 1, "worker_node": 1}, cluster)
