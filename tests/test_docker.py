"""docker/: no Docker engine runs here, so check what can be checked without one: every
service's command, environment, ports, volumes, healthcheck and dependencies against the
CLI and Settings, and that the image installs the package pyproject.toml declares."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from imagepipe.cli import _parser
from imagepipe.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
ROLES = ("api", "worker", "replicator")
WAITS = {"service_healthy", "service_completed_successfully"}
# what an operator puts in docker/.env: compose starts nothing without them
OPERATOR_ENV = {
    "IMAGEPIPE_CALLBACK_SECRET": "operator-callback-secret-of-32-characters",
    "IMAGEPIPE_GRANT_SECRET": "operator-grant-secret-of-32-characters-too",
    "MINIO_ROOT_USER": "operator",
    "MINIO_ROOT_PASSWORD": "operator-password",
    "POSTGRES_PASSWORD": "operator-database-password",
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|ROOT_USER")
REQUIRED = re.compile(r"\$\{\w+:\?[^}]+\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker/compose.yaml, parsed."""
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    """The services, by name."""
    found: dict[str, Any] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions: (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def env_names() -> set[str]:
    """Every environment variable Settings reads."""
    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names.add(f"IMAGEPIPE_{field.upper()}")
        else:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
    return names


def interpolate(value: object, env: Mapping[str, str] = OPERATOR_ENV) -> str:
    """A compose value as a container sees it, given what the operator set (``env``)."""

    def substitute(match: re.Match[str]) -> str:
        name, how, fallback = match.groups()
        if name in env:
            return env[name]
        if how == ":?":  # compose itself refuses to start, with this message
            pytest.fail(f"compose stops: {name} is required ({fallback})")
        return fallback

    text = re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", substitute, str(value))
    return text.replace("$$", "$")


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The imagepipe CLI's reading of an argument list (fails the test if it refuses)."""
    try:
        return _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`imagepipe {shlex.join(argv)}` is not a valid command")


def instruction(dockerfile: list[tuple[str, str]], keyword: str) -> list[str]:
    """The arguments of every instruction with this keyword."""
    return [args for kw, args in dockerfile if kw == keyword]


def imagepipe_services(services: dict[str, Any]) -> dict[str, Any]:
    """The services that run the imagepipe image."""
    return {name: s for name, s in services.items() if "build" in s}


def test_every_role_is_a_service_of_the_image(services: dict[str, Any]) -> None:
    assert set(imagepipe_services(services)) == {*ROLES, "migrate"}  # migrate: a one-shot job
    for name, service in imagepipe_services(services).items():
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file(), name
        assert parse_cli(service["command"]).role == name


def test_environment_names_are_settings_and_parse(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = env_names()
    for name, service in imagepipe_services(services).items():
        environment = {k: interpolate(v) for k, v in service["environment"].items()}
        assert set(environment) <= known, (name, set(environment) - known)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.primary_is_s3 and settings.redis_url == "redis://valkey:6379/0"
        assert settings.environment == "production"  # the default: weak secrets refused


def test_the_bucket_job_creates_the_buckets_the_roles_use(services: dict[str, Any]) -> None:
    job = services["buckets"]
    script = " ".join(job["command"])
    api_env = services["api"]["environment"]
    for variable in ("IMAGEPIPE_PRIMARY_S3_BUCKET", "IMAGEPIPE_BACKUP_S3_BUCKET"):
        assert f"local/{api_env[variable]}" in script
    assert "--ignore-existing" in script  # a second `up` must not fail
    assert job["restart"] == "no"
    minio = services["minio"]["environment"]
    assert interpolate(api_env["AWS_ACCESS_KEY_ID"]) == interpolate(minio["MINIO_ROOT_USER"])
    assert interpolate(api_env["AWS_SECRET_ACCESS_KEY"]) == interpolate(
        minio["MINIO_ROOT_PASSWORD"]
    )


def test_no_secret_has_a_default(services: dict[str, Any]) -> None:
    secrets = {
        (name, key): str(value)
        for name, service in services.items()
        for key, value in service.get("environment", {}).items()
        if SECRET_NAME.search(key)
    }
    wanted = {
        "IMAGEPIPE_CALLBACK_SECRET",
        "IMAGEPIPE_GRANT_SECRET",
        "MINIO_ROOT_PASSWORD",
        "POSTGRES_PASSWORD",
    }
    assert {key for _, key in secrets} >= wanted
    for where, value in secrets.items():
        assert REQUIRED.fullmatch(value), (where, value)  # ${VAR:?message}: no fallback
        with pytest.raises(pytest.fail.Exception, match="is required"):
            interpolate(value, env={})
    text = (DOCKER / "compose.yaml").read_text()
    assert not [v for v in re.findall(r"\$\{(\w+):?-", text) if SECRET_NAME.search(v)]


def test_workers_call_back_on_the_apis_unpublished_internal_port(
    services: dict[str, Any],
) -> None:
    api = services["api"]["environment"]
    port = int(api["IMAGEPIPE_CALLBACK_PORT"])
    assert port != int(api["IMAGEPIPE_PORT"]) and api["IMAGEPIPE_CALLBACK_HOST"] == "0.0.0.0"
    for name in ("worker", "replicator"):
        url = urlsplit(services[name]["environment"]["IMAGEPIPE_CALLBACK_URL"])
        assert (url.hostname, url.port, url.path) == ("api", port, "/internal/callbacks")
    assert not [p for p in services["api"]["ports"] if p.rsplit(":", 1)[-1] == str(port)]


def test_healthchecks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue  # a one-shot job: it is waited for by its exit code instead
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        if name in ROLES:
            assert test[1] == "imagepipe"
            args = parse_cli(test[2:])
            assert (args.role, args.for_role) == ("health", name)
    assert services["valkey"]["healthcheck"]["test"][1:] == ["valkey-cli", "ping"]


def test_dependencies_wait_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, how in service.get("depends_on", {}).items():
            assert how["condition"] in WAITS, (name, target)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
            else:
                assert services[target]["restart"] == "no", (name, target)
    for name in ROLES:
        needs = services[name]["depends_on"]
        assert needs["valkey"]["condition"] == "service_healthy"
        assert needs["buckets"]["condition"] == "service_completed_successfully"
        # no role starts on a catalog whose schema is behind it
        assert needs["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_catalog_is_a_persistent_postgresql_the_roles_share(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]
    assert postgres["healthcheck"]["test"][1] == "pg_isready"
    urls = {services[name]["environment"]["IMAGEPIPE_DATABASE_URL"] for name in ROLES}
    assert len(urls) == 1 and urlsplit(interpolate(urls.pop())).hostname == "postgres"


def test_workers_scale_and_published_ports_stay_on_loopback(services: dict[str, Any]) -> None:
    for name in ROLES:
        assert "container_name" not in services[name]
    assert "ports" not in services["worker"] and "ports" not in services["replicator"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in published)  # loopback only
    assert services["api"]["ports"][0].endswith(":8000")
    assert services["api"]["environment"]["IMAGEPIPE_HOST"] == "0.0.0.0"


def test_valkey_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    valkey = compose["services"]["valkey"]
    command = " ".join(valkey["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert valkey["volumes"] == ["valkey-data:/data"]
    assert compose["services"]["minio"]["volumes"] == ["minio-data:/data"]
    assert {"valkey-data", "minio-data"} <= set(compose["volumes"])


def test_the_image_installs_the_declared_package(
    dockerfile: list[tuple[str, str]], pyproject: dict[str, Any]
) -> None:
    assert instruction(dockerfile, "FROM") == ["python:3.11-slim"]
    assert pyproject["project"]["requires-python"] == ">=3.11"
    copied = " ".join(instruction(dockerfile, "COPY"))
    for package in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied
    assert "pyproject.toml" in copied and "README.md" in copied  # the build reads both
    installs = [
        re.search(r"pip install '/src(\[[a-z,]+\])?'", run)
        for run in instruction(dockerfile, "RUN")
    ]
    extras = {e for found in installs if found for e in (found[1] or "[]")[1:-1].split(",")}
    assert any(installs) and extras <= set(pyproject["project"]["optional-dependencies"])
    assert "heif" in extras  # the image takes iPhone photos


def test_the_image_runs_as_a_user_with_a_role_and_a_healthcheck(
    dockerfile: list[tuple[str, str]], pyproject: dict[str, Any]
) -> None:
    assert instruction(dockerfile, "USER") == ["imagepipe"]
    assert any("useradd" in run and "imagepipe" in run for run in instruction(dockerfile, "RUN"))
    entrypoint = json.loads(instruction(dockerfile, "ENTRYPOINT")[0])
    assert entrypoint == list(pyproject["project"]["scripts"])  # the console script
    assert parse_cli(json.loads(instruction(dockerfile, "CMD")[0])).role in ROLES
    healthcheck = instruction(dockerfile, "HEALTHCHECK")[0]
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[0] == "imagepipe" and parse_cli(command[1:]).role == "health"


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "storage"} <= ignored
    assert not ignored & {"pyproject.toml", "README.md", "imagepipe"}


def test_make_up_and_down_drive_compose() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "up:\n\tdocker compose -f docker/compose.yaml up -d --build\n" in makefile
    assert "down:\n\tdocker compose -f docker/compose.yaml down\n" in makefile


def test_the_readme_s_docker_env_sets_every_variable_compose_requires() -> None:
    readme = (ROOT / "README.md").read_text()
    heredoc = re.search(r"cat > docker/\.env <<EOF[^\n]*\n(.*?)\nEOF\n", readme, re.S)
    assert heredoc, "README's Docker section writes docker/.env"
    written = {line.split("=", 1)[0] for line in heredoc[1].splitlines()}
    required = set(re.findall(r"\$\{(\w+):\?", (DOCKER / "compose.yaml").read_text()))
    assert required == set(OPERATOR_ENV)  # what the tests above start compose with
    assert required <= written, f"README's docker/.env lacks {sorted(required - written)}"
