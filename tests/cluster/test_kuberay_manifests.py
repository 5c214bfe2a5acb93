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


def _pod_templates(doc: dict) -> list[dict]:
    """Every pod template of a RayJob / RayService: head, worker groups, job submitter."""
    cluster = _cluster_specs(doc)
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in doc["spec"]:
        templates.append(doc["spec"]["submitterPodTemplate"])
    return templates


def _containers(doc: dict) -> list[dict]:
    return [c for t in _pod_templates(doc) for c in t["spec"]["containers"]]


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


# rayproject/ray images run as user ray: uid 1000, group users (100).
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _assert_unprivileged(context: dict, where: str) -> None:
    assert context.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"
    assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities kept"
    assert not context.get("capabilities", {}).get("add"), f"{where}: capabilities added"
    assert not context.get("privileged"), f"{where}: privileged"


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[name for name, _ in RAY_DOCS])
def test_every_pod_runs_unprivileged_as_the_images_user(name, doc):
    for template in _pod_templates(doc):
        pod = template["spec"].get("securityContext", {})
        for key, value in POD_SECURITY.items():
            assert pod.get(key) == value, f"{name}: pod securityContext.{key} = {pod.get(key)!r}"
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID")
        for container in template["spec"]["containers"]:
            _assert_unprivileged(
                container.get("securityContext", {}), f"{name}: {container['name']}"
            )
    cluster = _cluster_specs(doc)
    if cluster.get("enableInTreeAutoscaling"):
        sidecar = cluster.get("autoscalerOptions", {}).get("securityContext", {})
        _assert_unprivileged(sidecar, f"{name}: autoscaler sidecar")


def test_the_image_runs_as_the_uid_the_pods_declare():
    users = re.findall(r"^USER\s+(\S+)", (K8S / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] == f"{POD_SECURITY['runAsUser']}:{POD_SECURITY['runAsGroup']}"


def _labels_match(selector: dict, labels: dict) -> bool:
    return set(selector.get("matchLabels", {}).items()) <= set(labels.items())


def _admits(policy: dict, port: int, source: dict) -> bool:
    """Whether ``policy``'s ingress rules let ``source`` (namespace, labels; an address
    outside the cluster has neither) reach ``port``. Just the NetworkPolicy semantics
    these manifests use: rules OR-ed; no ``ports`` = every port; no ``from`` = every
    source; a podSelector alone = pods of the policy's namespace; with a namespaceSelector
    {} = pods of any namespace."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and all(p.get("port") != port for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                return True  # none here; an address range would need its own check
            if "labels" not in source:
                continue  # outside the cluster: matches no pod selector
            same_namespace = source["namespace"] == "ray"
            if "namespaceSelector" in peer:
                if peer["namespaceSelector"] != {}:
                    raise AssertionError("narrowed namespaceSelector: extend this check")
            elif not same_namespace:
                continue
            if _labels_match(peer.get("podSelector", {}), source["labels"]):
                return True
    return False


NETWORK_POLICIES = [doc for _, doc in _documents() if doc.get("kind") == "NetworkPolicy"]


def test_network_policy_keeps_the_dashboard_cluster_internal_and_opens_serve():
    (policy,) = NETWORK_POLICIES
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]
    for name, doc in RAY_DOCS:
        for template in _pod_templates(doc):
            labels = template.get("metadata", {}).get("labels", {})
            assert _labels_match(selector, labels), f"{name}: a pod the policy does not select"
    own_pod = {"namespace": "ray", "labels": dict(selector["matchLabels"])}
    operator = {"namespace": "kuberay", "labels": {"app.kubernetes.io/name": "kuberay-operator"}}
    other_pod = {"namespace": "ray", "labels": {"app": "something-else"}}
    outside: dict = {}
    for port in (8265, 6379, 10001):
        assert _admits(policy, port, own_pod), f"the cluster's pods cannot reach {port}"
        assert not _admits(policy, port, other_pod), f"any pod reaches {port}"
        assert not _admits(policy, port, outside), f"anyone reaches {port}"
    assert _admits(policy, 8265, operator), "the KubeRay operator cannot reach the dashboard"
    assert not _admits(policy, 6379, operator)
    for source in (own_pod, other_pod, outside):
        assert _admits(policy, 8000, source), "the service port is closed"


def test_the_service_gets_its_bearer_token_from_a_secret():
    from dvamn.serving.auth import API_TOKEN_ENV

    doc = next(d for _, d in RAY_DOCS if d["kind"] == "RayService")
    cluster = _cluster_specs(doc)
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    for template in templates:
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            token = env.get(API_TOKEN_ENV, {})
            assert "value" not in token, f"{container['name']}: a token in the manifest"
            secret = token.get("valueFrom", {}).get("secretKeyRef", {})
            assert secret == {"name": "dvamn-api-token", "key": "token"}, container["name"]
    assert API_TOKEN_ENV not in doc["spec"]["serveConfigV2"]
