"""cluster.yaml is a config Ray accepts, and it agrees with the project's pins.

Validation is Ray's own: ``prepare_config`` fills the AWS defaults (it reads the defaults
file shipped in the wheel; no network, no AWS call) and ``validate_config`` checks Ray's
JSON schema (``ray/autoscaler/ray-schema.json``) plus its cross-field rules. Provider
bootstrapping (key pairs, subnets, IAM roles) needs AWS and is not run here.
"""

import copy
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
