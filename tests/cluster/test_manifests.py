"""The deployment files under cluster/ agree with the KubeRay CRDs, Ray's launcher schema and the project.

No Ray cluster is started: these are checks of files against schemas and against each other
(ray version = pyproject's pin, entrypoints and configs that exist, images of that version).
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).parent))
import kube_schema  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "schemas" / "kuberay"
KUBERAY = REPO / "cluster" / "kuberay"
LAUNCHER = REPO / "cluster" / "launcher" / "gpu-cluster.yaml"
DOCKERFILE = REPO / "cluster" / "docker" / "Dockerfile"
RUNTIME_ENV = REPO / "cluster" / "runtime-env.yaml"
PROJECT_IMAGE = "registry.example.com/raytune-st"

MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
# Config keys of the jobs' outputs and checkpoint storage.
OUTPUT_KEYS = ("output.path", "args.output_dir", "run.storage_path", "search.storage_path")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def ray_docs() -> list[tuple[str, dict]]:
    return [(p.name, doc) for p in MANIFESTS for doc in load_all(p) if doc["apiVersion"].startswith("ray.io/")]


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def ray_requirement() -> Requirement:
    (req,) = [Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "ray"]
    return req


@pytest.fixture(scope="module")
def ray_version() -> str:
    """The Ray every cluster runs: the installed one, which must satisfy pyproject's pin."""
    from importlib.metadata import version

    installed = version("ray")
    assert ray_requirement().specifier.contains(installed), f"installed ray {installed} is outside pyproject's {ray_requirement()}"
    return installed


@pytest.fixture(scope="module")
def validators():
    crds = sorted(CRDS.glob("ray.io_*.yaml"))
    assert crds, f"no KubeRay CRDs under {CRDS} (shared/schemas/kuberay beside the checkout)"
    return kube_schema.load_crd_validators(crds)


def cluster_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    return [spec] if doc["kind"] == "RayCluster" else [spec["rayClusterSpec"]] if "rayClusterSpec" in spec else []


def pod_specs(doc: dict) -> list[dict]:
    pods = []
    for spec in cluster_specs(doc):
        pods.append(spec["headGroupSpec"]["template"]["spec"])
        pods += [g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
    return pods


def entrypoint(doc: dict) -> tuple[str, str, list[str]]:
    """(job, config path, overrides) of a RayJob's `python jobs/<job>.py --config FILE k=v ...`."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:1] == ["python"] and re.fullmatch(r"jobs/\w+\.py", argv[1]) and argv[2] == "--config", argv
    return Path(argv[1]).stem, argv[3], argv[4:]


# --- the schema validator itself -------------------------------------------------------------


def test_validator_rejects_unknown_fields_wrong_types_and_operator_rule_breaks(validators):
    name, cluster = next((n, d) for n, d in ray_docs() if d["kind"] == "RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo of maxReplicas
    bad["spec"]["workerGroupSpecs"][0]["minReplicas"] = "0"
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "two"
    errors = kube_schema.schema_errors(bad, validators)
    assert any("maxReplica" in e and "not allowed" in e for e in errors), errors
    assert any(e.startswith("spec.workerGroupSpecs.0.minReplicas:") for e in errors), errors
    assert any("limits.cpu" in e for e in errors), errors

    bad = copy.deepcopy(cluster)
    bad["metadata"]["name"] = "Raytune_ST"
    bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "RAY_enable_autoscaler_v2", "value": "1"}]
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["restartPolicy"] = "Always"
    errors = kube_schema.operator_errors(bad)
    assert len(errors) == 3, errors


# --- KubeRay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_matches_crd_schema_and_operator_rules(path, validators):
    for doc in load_all(path):
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: a document without apiVersion/kind/metadata"
        if doc["apiVersion"].startswith("ray.io/"):
            assert doc["apiVersion"] == "ray.io/v1", f"{path.name}: use ray.io/v1 (v1alpha1 is deprecated)"
            assert kube_schema.schema_errors(doc, validators) == []
            assert kube_schema.operator_errors(doc) == []


def test_the_manifests_cover_a_cluster_and_the_jobs():
    kinds = {(doc["kind"], bool(doc["spec"].get("clusterSelector"))) for _, doc in ray_docs()}
    assert {("RayCluster", False), ("RayJob", False), ("RayJob", True)} <= kinds
    jobs = {entrypoint(doc)[0] for _, doc in ray_docs() if doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]}
    assert {"mine", "train", "tune"} <= jobs


def test_ray_version_and_images_follow_the_pin(ray_version):
    for name, doc in ray_docs():
        for spec in cluster_specs(doc):
            assert spec["rayVersion"] == ray_version, f"{name}: rayVersion {spec['rayVersion']} != ray {ray_version}"
        for pod in pod_specs(doc):
            for container in pod["containers"]:
                image = container["image"]
                repo, _, tag = image.rpartition(":")
                assert repo in (PROJECT_IMAGE, "rayproject/ray"), f"{name}: unexpected image {image}"
                assert re.search(rf"(^|-ray){re.escape(ray_version)}(-|$)", tag), f"{name}: image {image} is not of ray {ray_version}"


def test_clusters_keep_work_off_the_head_and_autoscale_gpu_and_cpu_groups():
    for name, doc in ray_docs():
        for spec in cluster_specs(doc):
            assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
            assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2", name
            groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
            gpu = groups["gpu-workers"]
            container = gpu["template"]["spec"]["containers"][0]
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["template"]["spec"]["tolerations"], name
            assert gpu["maxReplicas"] > gpu["minReplicas"] >= 0, name
            cpu = groups["cpu-workers"]
            assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"], name


def test_rayjobs_name_job_files_configs_and_overrides_that_exist():
    from raytune_st.cli import JOBS, load_job_config

    for name, doc in ray_docs():
        if doc["kind"] != "RayJob":
            continue
        job, config, overrides = entrypoint(doc)
        assert (REPO / "jobs" / f"{job}.py").is_file(), f"{name}: jobs/{job}.py does not exist"
        assert job in JOBS, f"{name}: {job} is not a raytune-st job ({', '.join(JOBS)})"
        assert (REPO / config).is_file(), f"{name}: config {config} does not exist"
        # Unknown keys and wrong types in the overrides fail here, not on the cluster.
        load_job_config(job, str(REPO / config), overrides)
        spec = doc["spec"]
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), name
        submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]["resources"]
        assert submitter["requests"] and submitter["limits"], f"{name}: give the submitter pod resources"
        if "rayClusterSpec" in spec:
            assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0, name
            assert spec["backoffLimit"] >= 1, name
            # The job's cluster is deleted afterwards: its outputs must go to object storage.
            outputs = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in OUTPUT_KEYS]
            assert outputs and all(o.startswith(("s3://", "gs://")) for o in outputs), f"{name}: outputs {outputs}"


def test_existing_cluster_job_selects_the_shipped_cluster_and_its_shared_volume():
    clusters = {doc["metadata"]["name"]: doc for _, doc in ray_docs() if doc["kind"] == "RayCluster"}
    claims = {doc["metadata"]["name"] for p in MANIFESTS for doc in load_all(p) if doc["kind"] == "PersistentVolumeClaim"}
    for name, doc in ray_docs():
        selector = doc["spec"].get("clusterSelector")
        if not selector:
            continue
        cluster = clusters[selector["ray.io/cluster"]]
        mounts = {
            m["mountPath"]
            for pod in pod_specs(cluster)
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
        }
        _, _, overrides = entrypoint(doc)
        for value in (o.split("=", 1)[1] for o in overrides):
            if value.startswith("/"):
                assert any(value.startswith(m + "/") for m in mounts), f"{name}: {value} is on no volume of {cluster['metadata']['name']}"
    for doc in clusters.values():
        for pod in pod_specs(doc):
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims


# --- runtime env for `ray job submit --working-dir .` ------------------------------------------


def test_runtime_env_is_valid_and_combines_with_working_dir():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load(RUNTIME_ENV.read_text())
    assert "working_dir" not in raw, "leave working_dir to --working-dir (it overrides the file's anyway)"
    combined = RuntimeEnv(**parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir="."))
    assert combined["working_dir"] == "."
    assert {".git/", ".venv/", "demo-output/"} <= set(combined["excludes"])
    assert all(isinstance(v, str) for v in combined["env_vars"].values())


def test_runtime_env_pip_matches_pyproject():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    allowed = {str(Requirement(r)) for r in project["dependencies"] + extras["cpu"] + extras["offline-model"]}
    wanted = {str(Requirement(r)) for r in project["dependencies"] if Requirement(r).name != "ray"}
    pip = {str(Requirement(r)) for r in yaml.safe_load(RUNTIME_ENV.read_text())["pip"]}
    assert pip <= allowed, f"not in pyproject: {sorted(pip - allowed)}"
    assert wanted <= pip, f"pyproject dependencies missing from runtime-env.yaml: {sorted(wanted - pip)}"
    assert not any(Requirement(r).name == "ray" for r in pip), "ray must stay the cluster's own"


def test_job_docstrings_show_their_ray_job_submit_command():
    for path in sorted((REPO / "jobs").glob("*.py")):
        # Whitespace-insensitive: a `\` continuation in the docstring leaves a run of spaces.
        doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())
        match = re.search(
            rf"ray job submit --address http://HEAD:8265 --working-dir \. --runtime-env cluster/runtime-env\.yaml -- "
            rf"python jobs/{path.stem}\.py --config (\S+)",
            doc,
        )
        assert match, f"{path.name}: its docstring needs its `ray job submit ...` command"
        assert (REPO / match.group(1)).is_file(), f"{path.name}: {match.group(1)} does not exist"


# --- cluster launcher --------------------------------------------------------------------------


def test_launcher_config_passes_rays_own_validation(ray_version):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))

    assert config["docker"]["image"] == f"rayproject/ray:{ray_version}-py311-gpu"
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("g5" in t["node_config"]["InstanceType"] or "p" == t["node_config"]["InstanceType"][0] for t in types.values())
    assert max(t.get("max_workers", 0) for t in types.values()) > 0 and config["max_workers"] > 0


def test_launcher_mounts_real_files_and_installs_the_gpu_extra():
    config = yaml.safe_load(LAUNCHER.read_text())
    (remote, local), = config["file_mounts"].items()
    assert (REPO / local / "pyproject.toml").is_file(), f"file_mounts source {local!r} is not the repository root"
    install = [c for c in config["setup_commands"] if "pip install" in c]
    assert install and f'"{remote}[gpu]"' in install[0]
    assert "gpu" in pyproject()["project"]["optional-dependencies"]
    assert ".venv" in config["rsync_exclude"]


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_base_is_rays_gpu_image_of_the_pin(ray_version):
    froms = [arg for op, arg in dockerfile_instructions() if op == "FROM"]
    assert froms == [f"rayproject/ray:{ray_version}-py311-gpu"]


def test_dockerfile_copies_only_existing_sources_and_installs_the_gpu_extra():
    instructions = dockerfile_instructions()
    copied = []
    for op, arg in instructions:
        if op in ("COPY", "ADD"):
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            for source in words[:-1]:
                assert (REPO / source).exists(), f"COPY source {source} does not exist"
                copied.append(source.rstrip("/"))
    # The RayJob entrypoints run `python jobs/<job>.py --config examples/...` in the image.
    assert {"jobs", "examples", "raytune_st", "pyproject.toml"} <= set(copied)
    assert any(op == "RUN" and 'pip install --no-cache-dir ".[gpu]"' in arg for op, arg in instructions)
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
