"""The container image deploy/rayservice.yaml names, built by deploy/image/build.sh and run with podman.

    .venv/bin/python -m pytest -m slow tests/slow/test_image.py -q
    EMOTION_TEST_IMAGE=emotion-service:0.1.0 .venv/bin/python -m pytest -m slow tests/slow/test_image.py -q  # reuse

Builds the image (or takes the local tag EMOTION_TEST_IMAGE), checks what KubeRay needs from it (non-root, the
ray CLI in a login shell, Python 3.11, no torch), runs `emotion serve` in it, waits for /readyz, and compares its
/v1/classify answers on FER2013 test faces with onnxruntime in this process; the container must stop cleanly on
SIGTERM. Then it runs the image as KubeRay would (`ray start --head --block`, KubeRay's wget probes, the manifest's
serveConfigV2 through the dashboard, the manifest's auth env). Containers are removed in any case. podman and
debootstrap are installed with apt-get when missing (as root); otherwise the tests skip, saying so. Every wait is a
hang guard, polled, never a fixed sleep.

The OCI runtime and rlimits this machine needs come from deploy/image/podman-options.sh (here: runc, since crun
refuses the hybrid cgroup layout; nofile/nproc within the hard limits, no CAP_SYS_RESOURCE). STORAGE_DRIVER=vfs /
BUILDAH_ISOLATION=chroot pass through to build.sh and podman where a machine refuses overlay mounts or namespaces;
EMOTION_TEST_PODMAN_NETWORK=host skips trying a published port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.data import DEFAULT_CLASSES
from serve.core.imaging import decode_image
from serve.core.inference import OnnxClassifier
from serve.runtime import ports
from serve.runtime.settings import load_settings
from tests.conftest import require_fer

pytestmark = [pytest.mark.slow, pytest.mark.data, pytest.mark.timeout(4 * 3600)]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "image" / "build.sh"
OPTIONS_SCRIPT = REPO / "deploy" / "image" / "podman-options.sh"
IMAGE_ENV = "EMOTION_TEST_IMAGE"
NETWORK_ENV = "EMOTION_TEST_PODMAN_NETWORK"
API_KEY = "image-test-key"
# Hang guards only (2 shared cores): a first build debootstraps and installs ~100 wheels.
INSTALL_GUARD_S = 900
BUILD_GUARD_S = 3600
READY_GUARD_S = 600
REQUEST_GUARD_S = 120
STOP_GUARD_S = 120
N_FACES = 12
APT_PACKAGES = {"podman": ["podman", "crun", "uidmap", "slirp4netns", "fuse-overlayfs"], "debootstrap": ["debootstrap"]}


def version() -> str:
    value: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return value


def run(*args: str, timeout: float = REQUEST_GUARD_S, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ensure_tools(*tools: str) -> None:
    """Install missing tools with apt-get, or skip saying what is missing and why it cannot be installed."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing)} not installed, and this process cannot install them (needs root and "
                    "apt-get: apt-get install podman debootstrap)")  # fmt: skip
    packages = sorted({p for tool in missing for p in APT_PACKAGES[tool]})
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_GUARD_S, env=env, check=False)
        if proc.returncode != 0:
            pytest.skip(f"{', '.join(missing)} not installed and `{' '.join(command)}` failed: {proc.stderr[-500:]}")
    still = [tool for tool in tools if shutil.which(tool) is None]
    if still:
        pytest.skip(f"{', '.join(still)} still missing after apt-get install {' '.join(packages)}")


@pytest.fixture(scope="module")
def image() -> str:
    """The image under test: $EMOTION_TEST_IMAGE if given, else what deploy/image/build.sh builds."""
    given = os.environ.get(IMAGE_ENV)
    if given:
        ensure_tools("podman")
        if run("podman", "image", "exists", given, check=False).returncode != 0:
            pytest.fail(f"{IMAGE_ENV}={given}: no such local image (podman images)")
        return given
    ensure_tools("podman")
    base = os.environ.get("EMOTION_BASE_IMAGE", "localhost/emotion-base:bookworm")
    if run("podman", "image", "exists", base, check=False).returncode != 0:
        ensure_tools("debootstrap")  # only the base image needs it
        if os.geteuid() != 0:
            pytest.skip(f"the base image {base} is missing and debootstrap needs root")
    proc = run(str(BUILD_SCRIPT), timeout=BUILD_GUARD_S)
    tag = proc.stdout.strip().splitlines()[-1]
    assert tag == f"emotion-service:{version()}", proc.stdout  # the tag deploy/rayservice.yaml names
    return tag


@pytest.fixture(scope="module")
def podman_options(image: str) -> list[str]:
    """What `podman run` needs on this machine (OCI runtime, rlimits): deploy/image/podman-options.sh probes it."""
    return run(str(OPTIONS_SCRIPT), image, timeout=READY_GUARD_S).stdout.split()


def test_the_image_is_what_kuberay_runs(image: str, podman_options: list[str]) -> None:
    """KubeRay runs `/bin/bash -lc -- "ulimit -n 65536; ray start ..."`: bash, a login shell that finds ray."""
    script = ("id -u; ray --version; python --version; "
              "python -c 'import importlib.util as u; print(u.find_spec(\"torch\"), u.find_spec(\"transformers\"))'; "
              "ray start --help >/dev/null && echo ray-start-ok")  # fmt: skip
    command = ["podman", "run", *podman_options, "--rm", "--network=none", "--entrypoint", "/bin/bash", image]
    out = run(*command, "-lc", script).stdout
    uid, ray_version, python_version, specs, start = out.strip().splitlines()[-5:]
    assert uid != "0", "the image must run as a non-root user"
    assert ray_version.endswith("version 2.60.0"), ray_version
    assert python_version.startswith("Python 3.11."), python_version
    assert specs == "None None", "the serving image must not hold torch or transformers"
    assert start == "ray-start-ok"
    labels = run("podman", "image", "inspect", "--format", "{{index .Labels \"org.opencontainers.image.version\"}}",
                 image).stdout.strip()  # fmt: skip
    assert labels == version()


@dataclass
class Container:
    name: str
    url: str
    network: str


def start_container(
    image: str, options: list[str], name: str, network: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    port = ports.free_port(20000, 32767)
    common = [*options, "--name", name, "--shm-size=512m", "-e", f"EMOTION_API_KEYS={API_KEY}"]
    common += ["-e", "EMOTION_MAX_QUEUE_DELAY_S=0"]  # no load shedding on a busy machine: answers, not speed
    if network == "host":  # the container shares this machine's ports: pick free ones for the service
        common += ["--network=host", "-e", f"EMOTION_PORT={port}",
                   "-e", f"EMOTION_METRICS_EXPORT_PORT={ports.free_port(20000, 32767, taken={port})}"]  # fmt: skip
    else:
        common += ["-p", f"127.0.0.1:{port}:8000"]
    proc = run("podman", "run", "-d", *common, image, timeout=READY_GUARD_S, check=False)
    return proc, f"http://127.0.0.1:{port}"


def logs(name: str) -> str:
    proc = run("podman", "logs", "--tail", "80", name, check=False)
    return (proc.stdout + proc.stderr)[-6000:]


def running(name: str) -> bool:
    proc = run("podman", "inspect", "--format", "{{.State.Running}}", name, check=False)
    return proc.stdout.strip() == "true"


@pytest.fixture(scope="module")
def container(image: str, podman_options: list[str]) -> Iterator[Container]:
    name = f"emotion-image-test-{secrets.token_hex(4)}"
    networks = ["host"] if os.environ.get(NETWORK_ENV) == "host" else ["published", "host"]
    failures = []
    try:
        for network in networks:
            proc, url = start_container(image, podman_options, name, network)
            if proc.returncode == 0:
                break
            failures.append(f"{network}: {proc.stderr.strip()[-800:]}")
            run("podman", "rm", "-f", name, check=False)
        else:
            pytest.fail("podman run failed:\n" + "\n".join(failures))
        if failures:
            print(f"a published port failed, running with --network=host: {failures}")
        deadline = time.monotonic() + READY_GUARD_S
        with httpx.Client(base_url=url, timeout=10) as client:
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if not running(name):
                    pytest.fail(f"the container exited before it was ready:\n{logs(name)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"/readyz not 200 within {READY_GUARD_S}s:\n{logs(name)}")
                time.sleep(1.0)  # polling interval, not a wait for something
        yield Container(name, url, network)
    finally:
        run("podman", "rm", "-f", "-t", "10", name, timeout=STOP_GUARD_S, check=False)


def fer_faces(n: int) -> list[tuple[str, bytes]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(require_fer(), columns=["image", "label"]).to_pylist()
    wanted = [(r["label"], r["image"]["bytes"]) for r in rows if r["label"] in DEFAULT_CLASSES]
    step = max(1, len(wanted) // n)
    return wanted[::step][:n]


def test_the_running_image_classifies_like_in_process_onnxruntime(container: Container) -> None:
    clf = OnnxClassifier(load_settings().model_dir)  # the checkout's models/default, the one the image bundles
    with httpx.Client(base_url=container.url, timeout=REQUEST_GUARD_S) as client:
        assert client.get("/readyz").status_code == 200
        faces = fer_faces(N_FACES)
        anonymous = client.post("/v1/classify", content=faces[0][1], headers={"content-type": "image/jpeg"})
        assert anonymous.status_code == 401, "the container listens on 0.0.0.0: API keys must be required"
        model = client.get("/v1/model", headers={"x-api-key": API_KEY}).json()
        assert model["labels"] == list(clf.labels)
        for _, data in faces:
            resp = client.post("/v1/classify", content=data, headers={"content-type": "image/jpeg",
                                                                      "x-api-key": API_KEY})  # fmt: skip
            assert resp.status_code == 200, resp.text
            body = resp.json()
            probs = clf.predict_proba(decode_image(data, clf.contract, max_pixels=4_000_000)[None])[0]
            assert body["label"] == clf.labels[int(np.argmax(probs))]
            assert np.allclose([body["probabilities"][k] for k in clf.labels], probs, rtol=0, atol=1e-6)


def test_the_container_stops_cleanly_on_sigterm(container: Container) -> None:
    """tini forwards SIGTERM; `emotion serve` shuts Serve and Ray down and exits 0."""
    run("podman", "stop", "-t", str(STOP_GUARD_S), container.name, timeout=STOP_GUARD_S + 30)
    code = run("podman", "inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip()
    assert code == "0", f"exit code {code} after SIGTERM:\n{logs(container.name)}"


def wait_until(what: str, done: Callable[[], bool], name: str) -> None:
    """Poll ``done`` until it holds; fail with the container's logs if it exits or the hang guard passes."""
    deadline = time.monotonic() + READY_GUARD_S
    while not done():
        if not running(name):
            pytest.fail(f"the container exited while waiting for {what}:\n{logs(name)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {READY_GUARD_S}s:\n{logs(name)}")
        time.sleep(1.0)  # polling interval


def test_the_image_runs_the_manifest_the_kuberay_way(image: str, podman_options: list[str]) -> None:
    """What KubeRay does with the image: `ray start --head ... --block` in a login shell, its exec probes (wget on
    the raylet and GCS health endpoints), then the manifest's serveConfigV2 applied through the dashboard (`serve
    deploy` uses the same REST API), with the API keys file and EMOTION_AUTH of the manifest's env."""
    import yaml

    manifest = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head["env"]}
    assert env["EMOTION_API_KEYS_FILE"] == "/etc/emotion/api-keys" and env["EMOTION_AUTH"] == "on"
    secrets_dir = Path(tempfile.mkdtemp(prefix="emotion-kuberay-"))
    name = f"emotion-kuberay-test-{secrets.token_hex(4)}"
    port = ports.free_port(20000, 32767)
    try:
        (secrets_dir / "api-keys").write_text(f"# the Secret emotion-api-keys\n{API_KEY}\n")
        # In-cluster every deployment keeps 2 replicas, one per pod; this one pod can hold one of each.
        config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
        for deployment in config["applications"][0]["deployments"]:
            deployment["autoscaling_config"]["min_replicas"] = 1
        (secrets_dir / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for path in (secrets_dir, *secrets_dir.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # the container runs as uid 1000
        # The head's own rayStartParams say num-cpus 0 (replicas go to workers); one pod here holds everything.
        start = ("ulimit -n 65536; "  # KubeRay's prefix; may fail without CAP_SYS_RESOURCE, as in KubeRay
                 "ray start --head --num-cpus=2 --metrics-export-port=8080 --dashboard-host=0.0.0.0 --block")
        run("podman", "run", "-d", *podman_options, "--name", name, "--shm-size=512m", "-p", f"127.0.0.1:{port}:8000",
            "-v", f"{secrets_dir}:/etc/emotion:ro", *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
            "--entrypoint", "/bin/bash", image, "-lc", "--", start, timeout=READY_GUARD_S)  # fmt: skip
        probes = ("wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && "
                  "wget --tries 1 -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success")  # fmt: skip

        def probes_pass() -> bool:
            return run("podman", "exec", name, "bash", "-c", probes, check=False).returncode == 0

        wait_until("KubeRay's head probes", probes_pass, name)
        run("podman", "exec", name, "bash", "-lc", "serve deploy /etc/emotion/serve_config.yaml", timeout=READY_GUARD_S)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            except httpx.TransportError:
                return False

        wait_until("/readyz of the deployed serveConfigV2", ready, name)
        clf = OnnxClassifier(load_settings().model_dir)
        with httpx.Client(base_url=url, timeout=REQUEST_GUARD_S) as client:
            _, data = fer_faces(1)[0]
            jpeg = {"content-type": "image/jpeg"}
            assert client.post("/v1/classify", content=data, headers=jpeg).status_code == 401
            resp = client.post("/v1/classify", content=data, headers={**jpeg, "authorization": f"Bearer {API_KEY}"})
            assert resp.status_code == 200, resp.text
            probs = clf.predict_proba(decode_image(data, clf.contract, max_pixels=4_000_000)[None])[0]
            assert np.allclose([resp.json()["probabilities"][k] for k in clf.labels], probs, rtol=0, atol=1e-6)
    finally:
        run("podman", "rm", "-f", "-t", "10", name, timeout=STOP_GUARD_S, check=False)
        shutil.rmtree(secrets_dir, ignore_errors=True)
