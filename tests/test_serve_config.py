"""The endpoint's parts that need no cluster: model ids, settings, the Serve config file, auth, request checks, rendering."""

from __future__ import annotations

import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import torch
import yaml
from ray.serve.schema import ServeDeploySchema
from tiny import tiny_source

from fsg_ray.cli import main as fsg
from fsg_ray.config import ConfigError
from fsg_ray.nets.checkpoints import build_generator
from fsg_ray.nets.stylegan2 import NoiseInjection
from fsg_ray.serve.app import build_app
from fsg_ray.serve.auth import KEYS_ENV, authorized, load_api_keys
from fsg_ray.serve.errors import ApiError
from fsg_ray.serve.launch import check_not_open_by_accident
from fsg_ray import storage
from fsg_ray.serve.readiness import unplaced
from fsg_ray.serve.registry import MalformedModelId, ModelRegistry, ModelRootUnavailable, UnknownModel
from fsg_ray.serve.rendering import Job, render, render_jobs
from fsg_ray.serve.schemas import job_of, parse_body
from fsg_ray.serve.settings import Limits, load_settings, settings_from_dict

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "serve.yaml"
HOSTILE_IDS = ["..", "../m0", "m0/..", "%2e%2e", "..%2f", "a/b", "a\\b", ".m0", "m0.pt", "m0\x00", "", "a" * 65, "-x", "mö"]


def test_malformed_ids_are_rejected_before_any_storage_access() -> None:
    registry = ModelRegistry("s3://no-such-bucket-anywhere/runs", {}, ttl_s=10)
    for model_id in HOSTILE_IDS:
        with pytest.raises(MalformedModelId, match="model: "):
            registry.uri(model_id)  # storage would raise BucketNotFound, not MalformedModelId


def test_ids_are_the_runs_under_the_root_and_the_explicit_ones(tmp_path: Path) -> None:
    for name in ("run-a", "run_b", "not.a.model"):
        (tmp_path / name).mkdir()
    registry = ModelRegistry(str(tmp_path), {"faces": "toy:faces"}, ttl_s=10)
    assert registry.ids() == ["faces", "run-a", "run_b"]
    assert registry.uri("run-a") == str(tmp_path / "run-a")
    assert registry.uri("faces") == "toy:faces"
    with pytest.raises(UnknownModel, match="'nope'"):
        registry.uri("nope")


def test_the_run_listing_is_reread_only_after_its_ttl(tmp_path: Path) -> None:
    now = [0.0]
    registry = ModelRegistry(str(tmp_path), {}, ttl_s=10, clock=lambda: now[0])
    assert registry.ids() == []
    (tmp_path / "new-run").mkdir()
    now[0] = 9.0
    with pytest.raises(UnknownModel):
        registry.uri("new-run")
    now[0] = 10.0
    assert registry.uri("new-run") == str(tmp_path / "new-run")


def test_a_root_that_cannot_be_listed_keeps_the_last_listing_or_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """During a storage outage a request gets the ids known a moment ago (or a 503), never a wait for the outage's end."""
    (tmp_path / "run-a").mkdir()
    now = [0.0]
    registry = ModelRegistry(str(tmp_path), {}, ttl_s=10, clock=lambda: now[0])
    assert registry.ids() == ["run-a"]

    def outage(uri: str) -> list[str]:
        raise storage.StorageOutage(f"{uri}: cannot reach the S3 endpoint")

    monkeypatch.setattr(storage, "list_dir", outage)
    now[0] = 10.0
    assert registry.uri("run-a") == str(tmp_path / "run-a")
    with pytest.raises(ModelRootUnavailable, match="models: the model root cannot be listed: .* cannot reach the S3 endpoint"):
        ModelRegistry(str(tmp_path), {}, ttl_s=10).ids()


def test_an_application_too_large_for_the_cluster_is_named_with_what_is_missing() -> None:
    needs = {"Generator": (3, {"CPU": 1.0, "GPU": 0.0}), "Gateway": (1, {"CPU": 0.5})}
    assert unplaced(needs, {"Generator": 2, "Gateway": 1}, free={"CPU": 0.0}, total={"CPU": 3.0}) == (
        "the application asks CPU 3.5 (Generator: 3 x CPU 1; Gateway: 1 x CPU 0.5); the cluster has CPU 3 in all: missing CPU 0.5"
    )
    gpu = unplaced({"Generator": (1, {"CPU": 1.0, "GPU": 1.0})}, {}, free={"CPU": 4.0}, total={"CPU": 4.0})
    assert gpu.endswith("the cluster has CPU 4, GPU 0 in all: missing GPU 1")
    fits = unplaced(needs, {"Generator": 1, "Gateway": 1}, free={"CPU": 0.5}, total={"CPU": 4.0})
    assert fits.endswith("CPU 4 in all, CPU 0.5 free, yet not all replicas run (Generator 1 of 3 running): no single node holds one, other jobs hold the resources, or the replicas are slow to start")


def test_settings_reject_unknown_keys_and_bad_values_naming_them() -> None:
    with pytest.raises(ConfigError, match="limits.max_images: unknown key"):
        settings_from_dict({"models": "s3://b/runs", "limits": {"max_images": 3}})
    with pytest.raises(ConfigError, match="models_per_replica"):
        settings_from_dict({"models": "s3://b/runs", "models_per_replica": 0})
    with pytest.raises(ConfigError, match="model_uris: model: '../x'"):
        settings_from_dict({"model_uris": {"../x": "s3://b/x"}})
    with pytest.raises(ConfigError, match="models: give a model root"):
        settings_from_dict({})


def test_flags_override_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("models: s3://a/runs\nlimits: {max_images_per_request: 8}\n")
    settings = load_settings(path, models="s3://b/runs")
    assert (settings.models, settings.limits.max_images_per_request) == ("s3://b/runs", 8)


def strict(schema: dict) -> dict:
    """Serve's schema with additionalProperties: false on every object that lists properties (it drops unknown keys)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def test_deploy_config_is_a_strict_serve_config_whose_args_build_the_app() -> None:
    config = yaml.safe_load(DEPLOY.read_text())
    jsonschema.Draft202012Validator(strict(ServeDeploySchema.model_json_schema())).validate(config)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "fsg_ray.serve.app:build_app"
    assert {d["name"] for d in app["deployments"]} == {"Gateway", "Generator"}
    build_app(app["args"])


def test_bearer_tokens_come_from_the_environment_and_the_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "keys"
    secret.write_text("# comment\nfile-key\n\n")
    monkeypatch.setenv(KEYS_ENV, "env-key, other")
    keys = load_api_keys(str(secret))
    assert keys == ("env-key", "other", "file-key")
    assert authorized("Bearer file-key", keys) and authorized("bearer env-key", keys)
    assert not any(authorized(header, keys) for header in (None, "", "Bearer", "Bearer nope", "file-key", "Basic file-key"))
    monkeypatch.delenv(KEYS_ENV)
    assert authorized(None, load_api_keys(None)), "no keys configured: open"
    with pytest.raises(ConfigError, match="api_keys_file: cannot read"):
        load_api_keys(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"seeds": [1, "2"]}', "seeds[1]"),
        (b'{"seeds": [1], "truncation": 9}', "truncation"),
        (b'{"count": 99}', "count"),
        (b'{"count": 2, "start": -1}', "start"),
        (b'{"seeds": [1], "format": "gif"}', "format"),
        (b'{"seeds": [1], "extra": 0}', "extra"),
        (b"{", "body"),
    ],
)
def test_request_errors_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(ApiError) as error:
        job_of(parse_body(body), Limits(max_images_per_request=64), grid=False)
    assert error.value.status == 400 and error.value.field == field and error.value.message.startswith(field)


def test_jobs_in_one_batch_get_their_own_images_back() -> None:
    g = build_generator(tiny_source(3))
    jobs = [Job((1, 2, 3), 0.7, "const"), Job((9,), 1.0, "seeded"), Job((4, 5), 0.7, "const")]
    images = render_jobs(g, jobs, torch.device("cpu"))
    assert [len(i) for i in images] == [3, 1, 2]
    for job, got in zip(jobs, images):
        alone = render(g, job.seeds, job.truncation, job.noise, torch.device("cpu"))
        assert torch.allclose(got, alone, atol=1e-5)


def test_seeded_noise_is_fixed_by_the_seed() -> None:
    g = build_generator(tiny_source(3))
    for module in g.modules():
        if isinstance(module, NoiseInjection):
            torch.nn.init.constant_(module.weight, 0.5)  # a fresh G injects no noise at all
    first, again = (render(g, [5, 6], 1.0, "seeded", torch.device("cpu")) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, render(g, [5, 6], 1.0, "const", torch.device("cpu")))


def test_fsg_serve_refuses_a_taken_port_before_starting_ray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert fsg(["serve", "--models", str(tmp_path), "--port", str(port)]) == 2
    assert f"--host/--port 127.0.0.1:{port}: cannot listen there" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.internal"])
def test_fsg_serve_refuses_a_keyless_api_on_a_reachable_host_naming_the_ways_out(host: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FSG_SERVE_API_KEYS", raising=False)
    assert fsg(["serve", "--models", str(tmp_path), "--host", host, "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--host {host}: other machines can reach this address and no API key is configured" in err
    assert "FSG_SERVE_API_KEYS" in err and "--allow-unauthenticated" in err
    assert not ray.is_initialized()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_stays_open_for_local_use(host: str) -> None:
    check_not_open_by_accident(host, (), allow_unauthenticated=False)


def test_keys_or_the_explicit_flag_allow_a_reachable_host() -> None:
    check_not_open_by_accident("0.0.0.0", ("k",), allow_unauthenticated=False)
    check_not_open_by_accident("0.0.0.0", (), allow_unauthenticated=True)

