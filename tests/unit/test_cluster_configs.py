"""Every YAML in cluster/: the launcher configs through Ray's own schema validation, the
KubeRay manifests by a structural check of what sdt-ray relies on.

Not checked for the KubeRay manifests: the full RayCluster/RayJob CRD schemas (not vendored),
so a misspelt field that KubeRay would ignore or reject passes here unless listed below."""

import copy
import re
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ["cluster/gpu.yaml", "cluster/local.yaml"]
KUBERAY = ["cluster/k8s/raycluster.yaml", "cluster/k8s/rayjob.yaml"]
SECRET = re.compile(r"(aws_access_key_id|aws_secret_access_key|AKIA[0-9A-Z]{12,}|RAY_AUTH_TOKEN=\S)", re.IGNORECASE)


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def validate(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", LAUNCHER)
def test_launcher_config_passes_rays_schema(path):
    validate(load(path))
    starts = load(path)["head_start_ray_commands"] + load(path)["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)  # token auth on every node
    head = " ".join(load(path)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # reached through an SSH tunnel, never an open port


def test_schema_validation_catches_a_typo():
    config = load("cluster/gpu.yaml")
    config["available_node_types"]["gpu_worker"]["min_workrs"] = 1
    with pytest.raises(Exception, match="min_workrs"):
        validate(config)


def test_gpu_cluster_topology():
    config = load("cluster/gpu.yaml")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head takes no work
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4", "p5"))
    assert types["cpu_worker"]["node_config"]["InstanceType"].startswith(("c", "m"))
    for name, node in types.items():
        assert "IamInstanceProfile" in node["node_config"], f"{name}: S3 access comes from an instance profile"
        assert node.get("min_workers", 0) <= node.get("max_workers", config["max_workers"])
    image = config["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-cu128"  # the Ray we pin, Python 3.11


def test_no_credentials_in_any_config():
    for path in sorted((ROOT / "cluster").rglob("*")) + sorted((ROOT / "jobs").rglob("*.yaml")):
        if path.is_file():
            assert not SECRET.search(path.read_text()), f"{path} looks like it holds a credential"


def containers(manifest):
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return spec, [(g, c) for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", KUBERAY)
def test_kuberay_manifest_structure(path):
    manifest = load(path)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in ("RayCluster", "RayJob")
    spec, pods = containers(manifest)
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # no load balancer in front of the dashboard
    images = {c["image"] for _, c in pods}
    assert len(images) == 1 and images.pop().endswith(":0.1.0-py311-cu128")
    for group, container in pods:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "sdt-ray-auth"
        assert container["resources"]["limits"] == container["resources"]["requests"]
    workers = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = workers["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1 and "nvidia.com/gpu" not in str(workers["cpu-workers"])
    for group in workers.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    if manifest["kind"] == "RayJob":
        assert manifest["spec"]["entrypoint"].startswith("sdt-ray ") and manifest["spec"]["shutdownAfterJobFinishes"]


def test_dockerfile_builds_on_the_launcher_image():
    base = re.search(r"^FROM (\S+)", (ROOT / "cluster/Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base == load("cluster/gpu.yaml")["docker"]["image"]


def test_the_serve_config_passes_serves_schema_and_builds_its_settings():
    """cluster/serve.yaml through Ray Serve's own deploy schema, and its args into ServeSettings
    (the builder refuses a non-loopback host without a token)."""
    from ray.serve.schema import ServeDeploySchema

    from sdt_ray.errors import ConfigError
    from sdt_ray.live import LiveLimits
    from sdt_ray.serve import ServeSettings, check_exposure

    config = load("cluster/serve.yaml")
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert app["import_path"] == "sdt_ray.serve:app_builder"
    args = dict(app["args"])
    settings = ServeSettings(limits=LiveLimits(**args.pop("limits")), **args)
    assert settings.limits.max_context == 32 and settings.host == config["http_options"]["host"]
    assert app["deployments"][0]["name"] == "LiveScoring"
    from ray.serve import Application

    from sdt_ray.serve import app_builder

    assert isinstance(app_builder(app["args"]), Application)  # what `serve deploy` calls with the file's args
    with pytest.raises(ConfigError, match="--token"):
        app_builder({**app["args"], "host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="--token"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", "secret")
    check_exposure("::1", None)
    broken = copy.deepcopy(config)
    broken["applications"][0]["deployments"][0]["max_ongoing_requests"] = -1  # (the schema lets key typos through)
    with pytest.raises(ValueError):  # pydantic's ValidationError
        ServeDeploySchema.model_validate(broken)
