"""The endpoint on a real Ray Serve on loopback, models on the moto S3 server: one Serve instance for the module."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest
import ray
import requests
from PIL import Image
from ray import serve
from cdp import Chromium, find_browser
from serve_fixtures import TINY_RUNS, write_model_root

from fsg_ray.cli import main as fsg
from fsg_ray.ray.cluster import free_port
from fsg_ray.serve.app import build_app

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

TOKEN = "test-token-" + uuid.uuid4().hex
MODELS_PER_REPLICA = 2
SCREENSHOT_ENV = "FSG_GALLERY_SCREENSHOT"  # also write the gallery screenshot there (the README image)


@dataclass(frozen=True)
class Server:
    url: str
    metrics_url: str
    runs: dict[str, str]

    def get(self, path: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers=auth(token) | kwargs.pop("headers", {}), timeout=60, **kwargs)

    def post(self, path: str, body: dict, token: str | None = TOKEN, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=auth(token) | kwargs.pop("headers", {}), timeout=60, **kwargs)

    def metric(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Samples of one metric from Ray's Prometheus endpoint: ([labels], value)."""
        samples = []
        for line in requests.get(self.metrics_url, timeout=10).text.splitlines():
            match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
            if match:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
                samples.append((labels, float(match.group(2))))
        return samples


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bucket = f"serve-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    runs = write_model_root(f"s3://{bucket}")
    keys = tmp_path_factory.mktemp("secrets") / "api-keys"
    keys.write_text(f"# one key per line\n{TOKEN}\n")
    metrics_port, http_port = free_port(), free_port()
    ray.init(
        address="local",
        num_cpus=4,
        object_store_memory=10**9,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        args = {
            "models": runs["root"],
            "models_per_replica": MODELS_PER_REPLICA,
            "api_keys_file": str(keys),
            "batch": {"max_batch_size": 32, "batch_wait_timeout_s": 0.2},
            "limits": {"max_images_per_request": 64, "max_body_bytes": 4096, "request_timeout_s": 120},
        }
        serve.run(build_app(args), name="fsg", route_prefix="/")
        yield Server(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics", runs)
    finally:
        serve.shutdown()
        ray.shutdown()


def fsg_sample(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / f"sample-{uuid.uuid4().hex[:8]}.png"
    assert fsg(["sample", *args, "--out", str(out)]) == 0
    return out.read_bytes()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def replica_actors() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]}


# --- generation ----------------------------------------------------------------------------------


def test_image_route_is_byte_identical_to_fsg_sample(server: Server, tmp_path: Path) -> None:
    served = server.get("/v1/models/m1/images/7.png", params={"truncation": 0.7})
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "image/png"
    assert served.content == fsg_sample(tmp_path, "--generator", server.runs["m1"], "--seeds", "7", "--truncation", "0.7")


def test_pair_route_is_fsg_sample_paired_with_the_recorded_source(server: Server, tmp_path: Path) -> None:
    served = server.get("/v1/models/faces/pairs/3.png")
    assert served.status_code == 200, served.text
    expected = fsg_sample(tmp_path, "--generator", server.runs["faces"], "--pair-with", "toy:faces", "--seeds", "3", "--columns", "1")
    # Within one level, not byte for byte: on some CPUs (seen on the 2026-12-06 box, and on main before this
    # test changed) one row of the source's half differs by 1/255 between the replica and `fsg sample`.
    assert np.abs(decode(served.content) - decode(expected)).max() <= 1
    assert Image.open(io.BytesIO(served.content)).size == (64 + 4, 2 * 64 + 6)


def test_generate_returns_each_seed_as_base64_png_equal_to_its_image_route_within_one_level(server: Server) -> None:
    answer = server.post("/v1/models/m2/generate", {"count": 4, "start": 10, "truncation": 0.5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [image["seed"] for image in body["images"]] == [10, 11, 12, 13]
    for image in body["images"]:
        alone = server.get(f"/v1/models/m2/images/{image['seed']}.png", params={"truncation": 0.5}).content
        difference = np.abs(decode(base64.b64decode(image["data"])) - decode(alone))
        assert difference.max() <= 1, "a batched forward sums in another order, nothing more"


def test_generate_answers_one_png_grid_when_the_client_accepts_image_png(server: Server, tmp_path: Path) -> None:
    answer = server.post("/v1/models/m0/generate", {"seeds": [0, 1, 2, 3, 4, 5], "columns": 3}, headers={"Accept": "image/png"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(answer.content)).size == (3 * 34 + 2, 2 * 34 + 2)


def test_generate_raw_arrays_are_the_float_images(server: Server) -> None:
    raw = server.post("/v1/models/m3/generate", {"seeds": [5], "format": "raw"}).json()["images"][0]
    array = np.frombuffer(base64.b64decode(raw["data"]), "<f4").reshape(raw["shape"])
    assert raw["shape"] == [3, 32, 32] and raw["dtype"] == "float32"
    png = decode(server.get("/v1/models/m3/images/5.png").content)
    pixels = np.round((np.clip(array, -1, 1) + 1) * 127.5).transpose(1, 2, 0)
    assert np.abs(pixels - png).max() <= 1


def test_seeded_noise_changes_the_image_and_stays_deterministic(server: Server) -> None:
    def image(noise: str) -> str:
        return server.post("/v1/models/faces/generate", {"seeds": [9], "noise": noise}).json()["images"][0]["data"]

    assert image("seeded") == image("seeded")
    assert np.abs(decode(base64.b64decode(image("seeded"))) - decode(base64.b64decode(image("const")))).max() > 0


def test_generate_encodes_webp_and_jpeg_at_the_requested_size(server: Server) -> None:
    for fmt, pil_name in (("webp", "WEBP"), ("jpeg", "JPEG")):
        body = server.post("/v1/models/faces/generate", {"seeds": [1, 2], "format": fmt, "size": 128}).json()
        for image in body["images"]:
            decoded = Image.open(io.BytesIO(base64.b64decode(image["data"])))
            assert (decoded.format, decoded.size) == (pil_name, (128, 128))


def test_image_route_sends_etag_and_cache_control_and_answers_304_to_a_match(server: Server) -> None:
    first = server.get("/v1/models/m0/images/11.png")
    assert first.headers["cache-control"].startswith("public")
    again = server.get("/v1/models/m0/images/11.png", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = server.get("/v1/models/m0/images/11.png", params={"truncation": 0.5})
    assert other.headers["etag"] != first.headers["etag"]


def test_model_list_and_metadata(server: Server) -> None:
    ids = [model["id"] for model in server.get("/v1/models").json()["models"]]
    assert ids == sorted([*TINY_RUNS, "faces", "exported", "broken"])
    info = server.get("/v1/models/faces").json()
    assert (info["method"], info["step"], info["source"], info["resolution"]) == ("cdc", 300, "toy:faces", 64)
    assert info["checkpoint"] == "checkpoint_000300/state.pt"


def test_a_run_with_only_generator_pt_is_served_from_it(server: Server, tmp_path: Path) -> None:
    info = server.get("/v1/models/exported").json()
    assert info["checkpoint"] == "generator.pt"
    served = server.get("/v1/models/exported/images/2.png").content
    assert served == fsg_sample(tmp_path, "--generator", server.runs["exported"] + "/generator.pt", "--seeds", "2")


# --- multiplexing and batching ---------------------------------------------------------------------


def test_more_models_than_a_replica_holds_are_evicted_and_reloaded_with_correct_images(server: Server, tmp_path: Path) -> None:
    expected = {name: fsg_sample(tmp_path, "--generator", server.runs[name], "--seeds", "21") for name in TINY_RUNS}
    for _ in range(2):
        for name in TINY_RUNS:
            assert server.get(f"/v1/models/{name}/images/21.png").content == expected[name], name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        loads = {labels["model"]: count for labels, count in server.metric("ray_fsg_model_load_seconds_count") if labels["model"] in TINY_RUNS}
        if len(loads) == len(TINY_RUNS) and min(loads.values()) >= 2:
            break
        time.sleep(1)
    assert min(loads.values()) >= 2 and len(loads) == len(TINY_RUNS), f"each model loaded again after eviction: {loads}"


def test_concurrent_requests_share_forwards(server: Server) -> None:
    sizes = [16, 3, 5, 3, 7, 2, 9, 4]
    with ThreadPoolExecutor(len(sizes)) as pool:
        answers = list(pool.map(lambda n: server.post("/v1/models/m4/generate", {"count": n, "start": 100}), sizes))
    assert [len(a.json()["images"]) for a in answers] == sizes
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        buckets = {labels["le"]: count for labels, count in server.metric("ray_fsg_batch_images_bucket")}
        if buckets and buckets["+Inf"] > buckets["16.0"]:
            break
        time.sleep(1)
    assert buckets["+Inf"] > buckets["16.0"], f"some forward rendered more images than the largest request: {buckets}"


# --- failures, limits, auth -------------------------------------------------------------------------


def test_a_corrupt_checkpoint_fails_for_that_model_only(server: Server) -> None:
    broken = server.get("/v1/models/broken/images/1.png")
    assert broken.status_code == 503
    error = broken.json()["error"]
    assert error["field"] == "model" and "checkpoint_000010/state.pt" in error["message"] and "s3://" not in error["message"]
    assert server.get("/v1/models/m0/images/1.png").status_code == 200
    assert server.post("/v1/models/broken/generate", {"seeds": [1]}).status_code == 503


def test_missing_or_wrong_tokens_get_401_and_health_stays_open(server: Server) -> None:
    for token in (None, "wrong", ""):
        answer = server.get("/v1/models", token=token)
        assert answer.status_code == 401 and answer.json()["error"]["field"] == "authorization"
    assert server.get("/v1/models", headers={"Authorization": TOKEN}, token=None).status_code == 401
    assert server.get("/healthz", token=None).json() == {"status": "ok"}
    ready = server.get("/readyz", token=None)
    assert ready.status_code == 200 and ready.json()["models"] == len(TINY_RUNS) + 3


def hostile_requests() -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """(method, raw path, body, headers): bad JSON, wrong types, huge counts, bad seeds, traversal ids, big bodies, bad tokens."""
    bodies = [
        b"{", b"[]", b"null", b'"seeds"', b"{'seeds': [1]}", b'{"seeds": }', b"\xff\xfe\x00garbage", b"[" * 2000 + b"]" * 2000,
        b'{"seeds": "abc"}', b'{"seeds": [1.5]}', b'{"seeds": [true]}', b'{"seeds": [[1]]}', b'{"seeds": {}}', b'{"seeds": ["1"]}',
        b'{"count": "3"}', b'{"count": 3.0}', b'{"count": 0}', b'{"count": -4}', b'{"count": 1000000}', b'{"count": 1' + b"0" * 40 + b"}",
        b'{"seeds": [' + b",".join(b"%d" % i for i in range(65)) + b"]}", b'{"seeds": []}', b'{"seeds": [1], "count": 2}', b"{}",
        b'{"seeds": [-1]}', b'{"seeds": [4294967296]}', b'{"seeds": [1' + b"0" * 30 + b"]}", b'{"count": 2, "start": -5}',
        b'{"count": 2, "start": 4294967295}', b'{"seeds": [1], "truncation": -0.1}', b'{"seeds": [1], "truncation": 2.5}',
        b'{"seeds": [1], "truncation": "0.5"}', b'{"seeds": [1], "truncation": 1e999}', b'{"seeds": [1], "truncation": NaN}',
        b'{"seeds": [1], "noise": "random"}', b'{"seeds": [1], "noise": 5}', b'{"seeds": [1], "format": "gif"}',
        b'{"seeds": [1], "format": "raw", "size": 64}', b'{"seeds": [1], "size": 4}', b'{"seeds": [1], "size": 5000}',
        b'{"seeds": [1], "size": "big"}', b'{"seeds": [1], "columns": 0}', b'{"seeds": [1], "columns": 1000}',
        b'{"seeds": [1], "extra": 1}', b'{"seeds": [1], "__proto__": {}}',
    ]
    token = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    cases = [("POST", f"/v1/models/{model}/generate", body, token) for body in bodies for model in ("m0", "faces")]
    cases.append(("POST", "/v1/models/m0/generate", b'{"seeds": [1], "format": "jpeg"}', {**token, "Accept": "image/png"}))
    cases += [("POST", "/v1/models/m0/generate", b'{"seeds": [' + b"1," * n + b"1]}", token) for n in (3000, 100_000)]
    ids = [
        "..", "...", ".", "%2e%2e", "%2E%2E", "..%2f..%2fetc", "..%5c..%5cwindows", "%252e%252e", "m0%00", "m0%2f..", ".hidden",
        "m0.pt", "-m0", "_x", "a" * 65, "m%C3%B6", "m0%20", "%20", "m0;rm", "m0'", "~root", "%2F", "m0%0d%0aX-Header:1",
        "nope", "m5", "M0", "CON", "runs", "sources",
    ]
    for model_id in ids:
        for suffix in ("", "/images/1.png", "/pairs/1.png"):
            cases.append(("GET", f"/v1/models/{model_id}{suffix}", None, token))
        cases.append(("POST", f"/v1/models/{model_id}/generate", b'{"seeds": [1]}', token))
    for seed in ("-1", "4294967296", "99999999999999999999999", "1e3", "abc", "", "1.5", "0x10", "%2e%2e"):
        cases += [("GET", f"/v1/models/m0/{kind}/{seed}.png", None, token) for kind in ("images", "pairs")]
    for query in ("truncation=-1", "truncation=3", "truncation=nan", "truncation=inf", "truncation=abc", "truncation="):
        cases.append(("GET", f"/v1/models/m0/images/1.png?{query}", None, token))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
        cases += [("GET", "/v1/models", None, headers), ("GET", "/v1/models/m0/images/1.png", None, headers)]
        cases.append(("POST", "/v1/models/m0/generate", b'{"seeds": [1]}', {**headers, "Content-Type": "application/json"}))
    cases += [("DELETE", "/v1/models/m0", None, token), ("GET", "/v1/models/m0/generate", None, token), ("GET", "/admin", None, token)]
    cases.append(("POST", "/v1/models/m0/generate", b"x" * (1 << 20), token))
    return cases


def raw_request(server: Server, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    """http.client sends the path as written: no normalisation of dots or re-encoding."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_hostile_requests_get_4xx_json_naming_the_problem_and_never_restart_a_replica(server: Server) -> None:
    replicas = replica_actors()
    cases = hostile_requests()
    assert len(cases) >= 200
    failures = []
    for method, path, body, headers in cases:
        status, content = raw_request(server, method, path, body, headers)
        try:
            message = json.loads(content)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = ""
        if not (400 <= status < 500 and message):
            failures.append(f"{method} {path[:60]} {body[:40] if body else ''!r}: {status} {content[:200]!r}")
    assert not failures, f"{len(failures)} of {len(cases)}:\n" + "\n".join(failures[:20])
    assert replica_actors() == replicas
    assert server.get("/v1/models/m0/images/1.png").status_code == 200


@contextmanager
def second_app(server: Server, name: str, limits: dict) -> Iterator[str]:
    """The faces model as an application of its own beside the module's, with other limits; its URL."""
    serve.run(build_app({"model_uris": {"faces": server.runs["faces"]}, "limits": limits}), name=name, route_prefix=f"/{name}")
    try:
        yield f"{server.url}/{name}"
    finally:
        serve.delete(name)


def test_a_gateway_at_its_pending_limit_answers_429_json_with_retry_after(server: Server) -> None:
    with second_app(server, "busy", {"max_pending_requests": 1, "retry_after_s": 7}) as url:
        assert requests.get(f"{url}/v1/models/faces/images/1.png", timeout=60).status_code == 200  # the model is loaded
        generate = lambda _: requests.post(f"{url}/v1/models/faces/generate", json={"count": 64, "start": 0}, timeout=120)  # noqa: E731
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(generate, range(6)))
        statuses = [answer.status_code for answer in answers]
        assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
        for answer in answers:
            if answer.status_code == 429:
                assert answer.headers["Retry-After"] == "7" and answer.json()["error"]["code"] == "overloaded"
        assert generate(None).status_code == 200, "the pending count went back to zero"


def test_a_request_over_the_timeout_gets_504_json_and_the_gateway_keeps_answering(server: Server) -> None:
    with second_app(server, "impatient", {"request_timeout_s": 0.05}) as url:
        slow = requests.post(f"{url}/v1/models/faces/generate", json={"count": 64, "start": 0}, timeout=60)
        assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout", slow.text
        assert "0.05 s" in slow.json()["error"]["message"]
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    assert server.post("/v1/models/faces/generate", {"count": 2, "start": 0}).status_code == 200


def test_a_body_without_content_length_is_refused(server: Server) -> None:
    chunks = iter([b'{"seeds": ', b"[1]}"])
    answer = requests.post(server.url + "/v1/models/m0/generate", data=chunks, headers=auth(TOKEN), timeout=30)
    assert answer.status_code == 411 and answer.json()["error"]["field"] == "content-length"


# --- the gallery in a real headless Chromium ------------------------------------------------------


def test_gallery_loads_pairs_and_the_truncation_slider_redraws_them(server: Server, tmp_path: Path) -> None:
    if find_browser() is None:
        pytest.fail("no chromium on PATH: `make browser` installs Debian's chromium")
    browser = Chromium(tmp_path / "profile")
    try:
        browser.navigate(server.url + "/?model=faces", before_load=f"sessionStorage.setItem('fsg-token', {json.dumps(TOKEN)})")
        loaded = "(() => { const imgs = [...document.querySelectorAll('#grid img')]; return imgs.length === {n} && imgs.every(i => i.dataset.state === 'loaded' && i.complete && i.naturalWidth > 0 && i.dataset.truncation === '{t}'); })()"
        browser.wait_for(loaded.replace("{n}", "12").replace("{t}", "1"))
        sizes = browser.evaluate("[...document.querySelectorAll('#grid img')].map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[68, 134]] * 12, "each tile: the source sample above the adapted one"
        pixels = "[...document.querySelectorAll('#grid img')].slice(0, 3).map(i => { const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight; const x = c.getContext('2d'); x.drawImage(i, 0, 0); return c.toDataURL(); })"
        before = browser.evaluate(pixels)
        browser.evaluate("(() => { const s = document.getElementById('truncation'); s.value = '0.5'; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); })()")
        browser.wait_for(loaded.replace("{n}", "12").replace("{t}", "0.5"))
        after = browser.evaluate(pixels)
        assert all(a != b for a, b in zip(before, after)), "truncation 0.5 redraws every image"
        browser.evaluate("document.getElementById('more').click()")
        browser.wait_for(loaded.replace("{n}", "24").replace("{t}", "0.5"))
        browser.evaluate("document.querySelector('#grid img').click()")
        assert browser.evaluate("document.getElementById('lightbox').classList.contains('open')")
        assert browser.evaluate("document.querySelector('#grid a.download').href.startsWith('blob:')")
        browser.evaluate("document.getElementById('lightbox').click()")
        assert browser.errors == []
        screenshot = browser.screenshot()
        assert Image.open(io.BytesIO(screenshot)).size == (1280, 900)
        if os.environ.get(SCREENSHOT_ENV):
            Path(os.environ[SCREENSHOT_ENV]).write_bytes(screenshot)
    finally:
        browser.close()
