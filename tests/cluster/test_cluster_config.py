"""cluster.yaml is a config Ray accepts, and it agrees with the project's pins.

Validation is Ray's own: ``prepare_config`` fills the AWS defaults (it reads the defaults
file shipped in the wheel; no network, no AWS call) and ``validate_config`` checks Ray's
JSON schema (``ray/autoscaler/ray-schema.json``) plus its cross-field rules. Provider
bootstrapping (key pairs, subnets, IAM roles) needs AWS and is not run here.
"""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
IMAGE_RE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<py_minor>\d+)-gpu$")


@pytest.fixture(scope="module")
def raw_config() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(config))


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(_prepared(config))


def _ray_pin(pyproject: dict) -> str:
    for requirement in pyproject["project"]["dependencies"]:
        match = re.match(r"^ray(\[[^\]]*\])?==(?P<version>[\d.]+)$", requirement.replace(" ", ""))
        if match:
            return match["version"]
    raise AssertionError("pyproject.toml pins no exact ray version (expected ray[...]==X.Y.Z)")


def _images(config: dict) -> list[str]:
    docker = config["docker"]
    return [docker[key] for key in ("image", "head_image", "worker_image") if key in docker]


def test_ray_accepts_the_cluster_config(raw_config):
    _validate(raw_config)


def test_ray_validation_rejects_what_it_should(raw_config):
    """The check has teeth: a fractional resource and an unknown key both fail."""
    fractional = copy.deepcopy(raw_config)
    fractional["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        _validate(fractional)
    unknown = copy.deepcopy(raw_config)
    unknown["available_node_types"]["head"]["instance_type"] = "m5.large"
    with pytest.raises(jsonschema.ValidationError):
        _validate(unknown)


def test_image_matches_the_ray_and_python_pins(raw_config, pyproject):
    import ray

    ray_pin = _ray_pin(pyproject)
    assert ray.__version__ == ray_pin, "the installed ray differs from pyproject's pin"
    requires_python = SpecifierSet(pyproject["project"]["requires-python"])
    images = _images(raw_config)
    assert images, "cluster.yaml has no docker image"
    for image in images:
        match = IMAGE_RE.match(image)
        assert match, f"{image}: expected rayproject/ray:<ray>-py3XX-gpu"
        assert match["ray"] == ray_pin, f"{image} runs Ray {match['ray']}, pyproject pins {ray_pin}"
        python = Version(f"{match['py']}.{match['py_minor']}")
        assert python in requires_python, f"{image}: Python {python} not in {requires_python}"


def test_every_node_installs_this_project_with_the_gpu_extra(raw_config, pyproject):
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    commands = _prepared(raw_config)
    for role in ("head_setup_commands", "worker_setup_commands"):
        joined = "\n".join(commands[role])
        installs = re.findall(r'pip install[^\n]*"(?P<target>[^"]*\[gpu\])"', joined)
        assert installs, f'{role}: no `pip install "...[gpu]"`'
        assert "pip uninstall -y onnxruntime" in joined, f"{role}: CPU onnxruntime not removed"
        # The project is installed from the checkout that file_mounts copies to the node.
        target = installs[0].removesuffix("[gpu]")
        assert raw_config["file_mounts"].get(target) == ".", f"{target} is not the checkout"


def test_node_types_cover_every_stage(raw_config):
    nodes = raw_config["available_node_types"]
    head = nodes[raw_config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head should run no tasks"
    gpu_counts = sorted(n["resources"].get("GPU", 0) for n in nodes.values())
    assert gpu_counts[-1] >= 4, "no node type can hold a 4-GPU training run"
    assert 1 in gpu_counts, "no single-GPU node type for extraction and serving"
    for name, node in nodes.items():
        for resource, amount in node["resources"].items():
            assert isinstance(amount, int), f"{name}: {resource}={amount!r} is not whole"
        if node is not head:
            assert 0 <= node["min_workers"] <= node["max_workers"], name
            assert node["min_workers"] == 0, f"{name}: idle GPU nodes should scale to zero"
    assert raw_config["idle_timeout_minutes"] > 0


def test_no_secrets_and_s3_through_instance_profiles(raw_config):
    text = CLUSTER_YAML.read_text()
    for pattern in (r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"aws_access_key_id"):
        assert not re.search(pattern, text, re.IGNORECASE), f"{pattern} in cluster.yaml"
    for name, node in raw_config["available_node_types"].items():
        arn = node["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert arn.startswith("arn:aws:iam::"), f"{name}: no IAM instance profile for S3"


def test_token_authentication_on_every_node(raw_config):
    run_options = " ".join(raw_config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    assert raw_config["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"


def test_dashboard_listens_on_the_heads_loopback_only(raw_config):
    """`ray dashboard cluster.yaml` reaches it through SSH; nothing else needs it."""
    head = " ".join(raw_config["head_start_ray_commands"])
    assert re.findall(r"--dashboard-host[= ](\S+)", head) == ["127.0.0.1"]
    workers = " ".join(raw_config["worker_start_ray_commands"])
    assert "--dashboard-host" not in workers and "--include-dashboard" not in workers
    assert "0.0.0.0" not in json.dumps(raw_config), "something in cluster.yaml binds everything"


def test_ssh_is_open_only_to_the_security_group_you_create(raw_config):
    """Every node names the same user-made group, so Ray's launcher creates none; the group
    it would create opens SSH to 0.0.0.0/0, which provider.security_group cannot narrow."""
    from ray.autoscaler._private.aws.config import (
        _configure_security_group,
        _create_default_inbound_rules,
    )

    groups = {
        name: tuple(node["node_config"].get("SecurityGroupIds", ()))
        for name, node in raw_config["available_node_types"].items()
    }
    assert len(set(groups.values())) == 1 and all(groups.values()), groups
    (group,) = next(iter(groups.values()))
    assert re.fullmatch(r"sg-[0-9a-f]{8,17}", group), group
    prepared = _prepared(raw_config)
    assert _configure_security_group(copy.deepcopy(prepared)) == prepared  # no AWS call
    ssh_rules = [r for r in _create_default_inbound_rules(set()) if r.get("FromPort") == 22]
    assert {"CidrIp": "0.0.0.0/0"} in ssh_rules[0]["IpRanges"], "Ray's default changed"


def test_the_runbook_creates_that_group_with_your_cidr():
    """README / docs/cluster.md open SSH to a CIDR the user sets, never to anywhere."""
    from tests.cluster.test_readme_commands import documented_commands

    for path in (REPO / "docs" / "cluster.md", REPO / "README.md"):
        ingress = [
            c.argv
            for c in documented_commands(path)
            if c.argv[:3] == ("aws", "ec2", "authorize-security-group-ingress")
        ]
        ssh = [argv for argv in ingress if "--port" in argv and "22" in argv]
        assert ssh, f"{path.name}: no `aws ec2 authorize-security-group-ingress --port 22`"
        for argv in ssh:
            cidr = argv[argv.index("--cidr") + 1]
            assert cidr.startswith("$") and "0.0.0.0" not in cidr, f"{path.name}: {cidr}"
        assert any("--source-group" in argv for argv in ingress), f"{path.name}: nodes isolated"


def test_the_service_token_reaches_every_node(raw_config):
    """The ingress replica reads DVAMN_API_TOKEN; every raylet (so every worker process)
    starts with it, read from the file mounted from the user's machine."""
    from dvamn.serving.auth import API_TOKEN_ENV

    assert raw_config["file_mounts"].get("/home/ray/.dvamn/api_token") == "~/.dvamn/api_token"
    for role in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in raw_config[role] if "ray start" in c]
        export = f'export {API_TOKEN_ENV}="$(cat ~/.dvamn/api_token)"; ray start'
        assert export in start, f"{role}: the token is not exported before `ray start`"


def test_onnxruntime_gpu_is_pinned_to_one_version_everywhere(raw_config, pyproject):
    """The GPU extra's minimum is the CPU onnxruntime's; the nodes and the KubeRay image
    reinstall one exact version that satisfies it."""
    from packaging.requirements import Requirement

    deps = {Requirement(d).name: Requirement(d) for d in pyproject["project"]["dependencies"]}
    (gpu,) = [Requirement(d) for d in pyproject["project"]["optional-dependencies"]["gpu"]]
    assert gpu.name == "onnxruntime-gpu"
    assert str(gpu.specifier) == str(deps["onnxruntime"].specifier)
    pin = r'"onnxruntime-gpu==(?P<version>[\d.]+)"'
    on_nodes = re.findall(pin, "\n".join(raw_config["setup_commands"]))
    in_image = re.findall(pin, (REPO / "k8s" / "Dockerfile").read_text())
    assert len(on_nodes) == 1 and on_nodes == in_image, (on_nodes, in_image)
    assert Version(on_nodes[0]) in gpu.specifier
    # The docs that tell users what to reinstall name the same version.
    for doc in ("README.md", "pyproject.toml", "docs/pose.md", "docs/security.md"):
        named = set(re.findall(r"onnxruntime-gpu==([\d.]+)", (REPO / doc).read_text()))
        assert on_nodes[0] in named, (doc, named)
