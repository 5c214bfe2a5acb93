"""The KubeRay manifests in k8s/ are well formed and agree with the project.

No KubeRay CRD schema is available offline, so the RayJob / RayService / RayCluster
structure is checked against the field names of KubeRay's ``ray.io/v1`` API types (read
from ray-operator/apis/ray/v1/*_types.go; unknown fields are what a typo looks like).
The Serve config inside the RayService is validated with Ray's own ``ServeDeploySchema``,
its application args with ``dvamn.serving.app.ServeSettings``, and job entrypoints with
the real ``dvamn`` CLI parser.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.cluster.test_readme_commands import parse_dvamn

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"

# ray.io/v1 field names (KubeRay API types).
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
RAYSERVICE_SPEC = {
    "serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
    "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold",
    "excludeHeadPodFromServeSvc", "rayClusterDeletionDelaySeconds",
}  # fmt: skip
RAYCLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs", "authOptions",
}  # fmt: skip
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _ray_pin() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return next(re.sub(r"^ray(\[[^\]]*\])?==", "", d) for d in deps if d.startswith("ray"))


def _cluster_specs(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def _containers(doc: dict) -> list[dict]:
    cluster = _cluster_specs(doc)
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in doc["spec"]:
        templates.append(doc["spec"]["submitterPodTemplate"])
    return [c for t in templates for c in t["spec"]["containers"]]


RAY_DOCS = [(name, doc) for name, doc in _documents() if doc.get("apiVersion") == "ray.io/v1"]


def test_manifests_exist_for_each_stage():
    kinds = sorted((doc["kind"], name) for name, doc in RAY_DOCS)
    assert kinds == [
        ("RayJob", "rayjob-extract.yaml"),
        ("RayJob", "rayjob-train.yaml"),
        ("RayService", "rayservice.yaml"),
    ]


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[name for name, _ in RAY_DOCS])
def test_fields_are_kuberay_fields(name, doc):
    spec_fields = RAYJOB_SPEC if doc["kind"] == "RayJob" else RAYSERVICE_SPEC
    assert set(doc["spec"]) <= spec_fields, f"{name}: unknown {set(doc['spec']) - spec_fields}"
    cluster = _cluster_specs(doc)
    assert set(cluster) <= RAYCLUSTER_SPEC, f"{name}: unknown {set(cluster) - RAYCLUSTER_SPEC}"
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
    assert cluster["rayVersion"] == _ray_pin()
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, f"{name}: unknown {set(group) - WORKER_GROUP}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
    for group in groups:
        # map[string]string in the CRD: a bare YAML number would be rejected.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[name for name, _ in RAY_DOCS])
def test_every_container_runs_the_project_image_with_token_auth(name, doc):
    images = set()
    for container in _containers(doc):
        images.add(container["image"])
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name}: {container['name']}"
        secret = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
        assert secret.get("key") == "auth_token", f"{name}: {container['name']} has no token"
        resources = container.get("resources", {})
        gpus = [resources.get(k, {}).get("nvidia.com/gpu") for k in ("requests", "limits")]
        assert gpus[0] == gpus[1], f"{name}: GPU requests and limits differ"
    assert len(images) == 1, f"{name}: several images {images}"


def test_dockerfile_builds_on_the_pinned_ray_image():
    dockerfile = (K8S / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)[1]
    with open(REPO / "cluster.yaml") as f:
        assert base == yaml.safe_load(f)["docker"]["image"]
    assert f"rayproject/ray:{_ray_pin()}-py3" in base
    assert '[gpu]"' in dockerfile and "pip uninstall -y onnxruntime" in dockerfile


RAY_JOBS = [(name, doc) for name, doc in RAY_DOCS if doc["kind"] == "RayJob"]


@pytest.mark.parametrize("name,doc", RAY_JOBS, ids=[name for name, _ in RAY_JOBS])
def test_job_entrypoints_parse_with_the_cli(name, doc):
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "dvamn", name
    error = parse_dvamn(tuple(argv[1:]))
    assert error is None, f"{name}: {error}"
    assert all("://" not in a or a.startswith("s3://") for a in argv), "outputs must be on S3"


def test_rayservice_serve_config_is_valid_and_matches_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    from dvamn.serving.app import ServeSettings

    doc = next(d for _, d in RAY_DOCS if d["kind"] == "RayService")
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    ServeSettings.from_args(application["args"])
    serve_config = REPO / "serve_config.yaml"
    assert serve_config.is_file(), "serve_config.yaml (the `serve deploy` config) is missing"
    reference = yaml.safe_load(serve_config.read_text())
    ServeDeploySchema.model_validate(reference)
    (expected,) = reference["applications"]
    assert application["import_path"] == expected["import_path"]
    names = {d["name"] for d in application["deployments"]}
    assert names == {d["name"] for d in expected["deployments"]}, "deployments differ"
