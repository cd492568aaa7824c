"""deploy/ is checked offline the way a cluster would check it, but stricter: a typo fails here, not at 3 a.m.

KubeRay manifests against the KubeRay 1.7 CRD schemas (../shared/kuberay-crds) with unknown keys
rejected, Serve configs against Ray's ServeDeploySchema (strict JSON schema + its semantic checks),
the cluster-launcher YAML through Ray's own validation, every `fsg` entrypoint through the CLI's
parser, and no credential written anywhere in deploy/.
"""

import copy
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import ServeDeploySchema

from fsg_ray.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
# CI clones the repository next to a copy of shared/; a developer's worktree sits two levels deeper.
CRD_CANDIDATES = [REPO.parent / "shared" / "kuberay-crds", REPO.parents[1] / "shared" / "kuberay-crds"]
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
RAY_VERSION = "2.60.0"
# Where the Dockerfile puts the repository inside the image; entrypoints name files under it.
IMAGE_REPO_DIR = "/home/ray/fsg-ray"
CREDENTIAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "FSG_SERVE_API_KEYS"}
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{20,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "bearer token": re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/-]{16,}"),
    "password value": re.compile(r"(?i)(password|passwd|secret_key|api_key)\s*[:=]\s*['\"]?[^\s'\"$]{8,}"),
}


def crd_folder() -> Path:
    for folder in CRD_CANDIDATES:
        if folder.is_dir():
            return folder
    pytest.fail(f"KubeRay CRDs not found; expected shared/kuberay-crds/ beside the repository, looked in {[str(c) for c in CRD_CANDIDATES]}")


def strict(schema: Any) -> Any:
    """The schema with unknown keys rejected: additionalProperties false wherever properties are listed.

    Both the CRDs and pydantic leave objects open (the API server and ServeDeploySchema drop unknown
    keys silently), so a misspelt key would otherwise pass.
    """
    if isinstance(schema, dict):
        closed = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    path = crd_folder() / CRD_FILES[kind]
    crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"]))


@cache
def serve_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(strict(ServeDeploySchema.model_json_schema()))


def manifest_paths() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in manifest_paths():
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            yield f"{path.name}[{index}]", document


def of_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in manifests() if doc["kind"] == kind]


def errors_of(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


def check_serve_config(config: dict[str, Any], where: str) -> None:
    errors = errors_of(serve_validator(), config)
    assert not errors, f"{where} breaks Ray's Serve schema:\n" + "\n".join(errors)
    ServeDeploySchema.model_validate(config)


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every RayCluster spec, standalone or embedded in a RayService / RayJob."""
    for name, doc in manifests():
        spec = {"RayCluster": lambda s: s, "RayService": lambda s: s["rayClusterConfig"], "RayJob": lambda s: s.get("rayClusterSpec")}[doc["kind"]](doc["spec"])
        if spec is not None:
            yield name, spec


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]["spec"]


def entrypoints() -> list[tuple[str, str]]:
    return [(name, doc["spec"]["entrypoint"]) for name, doc in of_kind("RayJob")]


# --- the strict checker itself ---------------------------------------------------------------------


def test_the_strict_crd_check_rejects_a_misspelt_key():
    _, job = of_kind("RayJob")[0]
    typo = copy.deepcopy(job)
    typo["spec"]["entrypiont"] = typo["spec"].pop("entrypoint")
    assert any("'entrypiont' was unexpected" in e for e in errors_of(crd_validator("RayJob"), typo))


def test_the_strict_serve_check_rejects_a_misspelt_deployment_option():
    config = {"applications": [{"name": "a", "import_path": "m:app", "deployments": [{"name": "D", "num_replica": 2}]}]}
    ServeDeploySchema.model_validate(config)  # pydantic alone lets the typo through
    assert any("'num_replica' was unexpected" in e for e in errors_of(serve_validator(), config))


# --- KubeRay manifests -----------------------------------------------------------------------------


def test_deploy_has_a_raycluster_rayjobs_for_adapt_tune_and_synthesize_and_a_rayservice():
    verbs = sorted(shlex.split(entry)[1] for _, entry in entrypoints())
    assert verbs == ["adapt", "synthesize", "tune"]
    assert len(of_kind("RayCluster")) == 1 and len(of_kind("RayService")) == 1


@pytest.mark.parametrize("path", manifest_paths(), ids=lambda p: p.name)
def test_kuberay_manifest_validates_strictly_against_its_crd(path: Path):
    for index, document in enumerate(yaml.safe_load_all(path.read_text())):
        assert document["apiVersion"] == "ray.io/v1", f"{path.name}[{index}]"
        errors = errors_of(crd_validator(document["kind"]), document)
        assert not errors, f"{path.name}[{index}] ({document['kind']}):\n" + "\n".join(errors)


def test_every_cluster_runs_ray_2_60_in_the_fsg_ray_image_of_the_same_ray_version():
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == RAY_VERSION, name
        for group, pod in pod_templates(spec):
            for container in pod["containers"]:
                assert container["image"].endswith(f"-ray{RAY_VERSION}"), f"{name} {group}: {container['image']}"


def test_the_dockerfile_builds_on_the_official_ray_image_of_that_version_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-py311-cu\d+", base), base
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] == "ray"
    assert re.search(rf"^WORKDIR\s+{re.escape(IMAGE_REPO_DIR)}$", text, re.M)
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for name in source.split():
            assert (REPO / name).exists(), f"deploy/Dockerfile copies {name}, which is not in the repository"


def test_autoscaling_gpu_workers_request_gpus_on_gpu_nodes_and_the_head_runs_no_training():
    for name, spec in cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0", name
        (gpu,) = [group for group in spec["workerGroupSpecs"] if group["groupName"] == "gpu"]
        assert gpu["maxReplicas"] > gpu["minReplicas"], f"{name}: the GPU group cannot scale"
        pod = gpu["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        for container in pod["containers"]:
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1, name
        head = spec["headGroupSpec"]["template"]["spec"]
        assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in head["containers"]), name


def test_every_pod_runs_as_non_root():
    for name, spec in cluster_specs():
        for group, pod in pod_templates(spec):
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{name} {group}"


def test_credentials_reach_pods_only_through_secret_references():
    for name, spec in cluster_specs():
        for group, pod in pod_templates(spec):
            for container in pod["containers"]:
                env = {item["name"]: item for item in container.get("env", [])}
                assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys(), f"{name} {group}: no S3 credentials"
                for key in CREDENTIAL_ENV & env.keys():
                    assert "value" not in env[key] and "secretKeyRef" in env[key]["valueFrom"], f"{name} {group}: {key} must come from a Secret"


def test_rayjobs_run_on_the_fsg_ray_cluster():
    (_, cluster), = of_kind("RayCluster")
    for name, job in of_kind("RayJob"):
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}, name


def test_rayjob_runtime_envs_are_valid_ray_runtime_envs():
    for name, job in of_kind("RayJob"):
        if "runtimeEnvYAML" in job["spec"]:
            RuntimeEnv(**yaml.safe_load(job["spec"]["runtimeEnvYAML"]))


# --- entrypoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "entrypoint"), entrypoints(), ids=[name for name, _ in entrypoints()])
def test_rayjob_entrypoint_parses_with_the_fsg_cli_and_names_files_that_exist(name: str, entrypoint: str):
    argv = shlex.split(entrypoint)
    assert argv[0] == "fsg", f"{name}: entrypoint must run the fsg command, got {argv[0]!r}"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{name}: `{entrypoint}` does not parse with fsg_ray.cli.build_parser() (exit {exc.code}); see the usage above")
    for arg in argv[1:]:
        if arg.startswith(IMAGE_REPO_DIR + "/"):
            in_repo = REPO / arg.removeprefix(IMAGE_REPO_DIR + "/")
            assert in_repo.is_file(), f"{name}: {arg} is not in the image: {in_repo.relative_to(REPO)} is not in the repository"


# --- Serve configs ---------------------------------------------------------------------------------


def serve_yaml() -> dict[str, Any]:
    path = DEPLOY / "serve.yaml"
    if not path.is_file():
        pytest.fail("deploy/serve.yaml is missing: the Serve config (issue 13) must exist for `serve run` and the RayService")
    return yaml.safe_load(path.read_text())


def test_serve_yaml_validates_strictly_against_rays_serve_schema():
    check_serve_config(serve_yaml(), "deploy/serve.yaml")


def test_rayservice_serve_config_validates_strictly_against_rays_serve_schema():
    for name, service in of_kind("RayService"):
        check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]), f"{name} serveConfigV2")


def test_rayservice_serves_the_same_application_as_serve_yaml():
    for name, service in of_kind("RayService"):
        served = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
        assert served == serve_yaml()["applications"], f"{name}: serveConfigV2 applications differ from deploy/serve.yaml"


# --- ray up ----------------------------------------------------------------------------------------


def test_cluster_aws_yaml_passes_rays_cluster_config_validation():
    config = yaml.safe_load((DEPLOY / "cluster-aws.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"].endswith(f"-ray{RAY_VERSION}")
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] >= 1


def test_rays_cluster_config_validation_rejects_an_unknown_key():
    config = yaml.safe_load((DEPLOY / "cluster-aws.yaml").read_text())
    config["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(config))


# --- secrets ---------------------------------------------------------------------------------------


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_literal_credential_in_deploy(path: Path):
    text = path.read_text()
    for what, pattern in CREDENTIAL_PATTERNS.items():
        found = pattern.search(text)
        assert found is None, f"{path.relative_to(REPO)}: looks like a {what}: {found[0][:12]}..."


def test_the_credential_scan_finds_planted_keys():
    planted = "env:\n  AWS_ACCESS_KEY_ID: AKIAIOSFODNN7EXAMPLE\n  aws_secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
    assert [what for what, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(planted)] == ["AWS access key id", "AWS secret key assignment"]
