"""Architecture rules: ml never imports the service, no import cycles, and the compose file and
Dockerfile only run real entry points."""

import ast
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "workers", "ml", "chatforge")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):  # imports only a type checker runs are not edges at run time
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    g = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            g[_module(f)] = {i for i in _imports(f) if i.split(".")[0] in PACKAGES}
    return g


def test_ml_imports_neither_api_nor_workers_nor_chatforge():
    for f in (ROOT / "ml").rglob("*.py"):
        bad = {i for i in _imports(f) if i.split(".")[0] in ("api", "workers", "chatforge")}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_shared_package_does_not_import_fastapi_or_api():
    for f in (ROOT / "chatforge").rglob("*.py"):
        if f.relative_to(ROOT).as_posix() == "chatforge/cli.py":  # the CLI starts the API and workers by design
            continue
        bad = {i for i in _imports(f) if i.split(".")[0] in ("api", "fastapi")}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_api_never_imports_workers():
    for f in (ROOT / "api").rglob("*.py"):
        bad = {i for i in _imports(f) if i.split(".")[0] == "workers"}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_no_import_cycles_between_packages():
    layers = {"ml": 0, "chatforge": 1, "workers": 2, "api": 2}
    for mod, deps in _graph().items():
        top = mod.split(".")[0]
        for d in deps:
            dtop = d.split(".")[0]
            if mod == "chatforge.cli":
                continue
            assert layers[dtop] <= layers[top], f"{mod} (layer {top}) imports {d}"



def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the modules (imports inside functions count), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles_between_modules():
    graph = {m: {d for d in deps if d != m} for m, deps in _graph().items()}
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself works

def _entry_points() -> set[str]:
    import tomllib

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _check_chatforge_args(args: list[str]) -> None:
    from chatforge.cli import parse

    try:
        parse(args)
    except Exception as e:  # typer's usage errors: unknown command or option, missing argument
        raise AssertionError(f"`chatforge {' '.join(args)}` is not a valid command") from e


def test_compose_services_run_real_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "migrate", "api", "worker-cpu", "worker-gpu"):
        assert name in services, f"compose has no {name} service"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["count"] == "all"
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    entry = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert ast.literal_eval(entry.split(None, 1)[1]) == ["chatforge"]
    assert "chatforge" in _entry_points()
    for name, svc in services.items():
        if svc.get("image", "").startswith("chatforge") or "build" in svc:
            assert svc["build"]["dockerfile"] == "docker/Dockerfile"
            assert (ROOT / svc["build"]["dockerfile"]).exists()
            _check_chatforge_args(list(svc["command"]))
        assert "volumes" not in svc or all(":" in v for v in svc["volumes"])
    for vol in ("chatforge-data",):
        assert vol in compose["volumes"]


def test_dockerfile_commands_and_copies_are_real():
    lines = (ROOT / "docker/Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY"):
            src = shlex.split(line)[1]
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
        if line.startswith("CMD"):
            _check_chatforge_args(ast.literal_eval(line.split(None, 1)[1]))


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "chatforge.cli", "--help"], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and "serve" in out.stdout


def test_compose_keeps_every_artifact_in_the_object_store():
    """Scale-out compose: MinIO is the store, a one-shot mc creates its bucket, and every ChatForge service
    points at it (so API and workers may run on hosts that share no folder)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio") and minio["command"][0] == "server"
    bucket_job = services["minio-bucket"]
    assert bucket_job["image"].startswith("minio/mc") and bucket_job["restart"] == "no"
    script = " ".join(bucket_job["command"])
    assert bucket_job["depends_on"]["minio"]["condition"] == "service_healthy"
    chatforge = {n: s for n, s in services.items() if "build" in s}
    assert set(chatforge) >= {"migrate", "models", "api", "worker-cpu", "worker-gpu"}
    for name, svc in chatforge.items():
        env = svc["environment"]
        url = env["CHATFORGE_STORAGE_URL"]
        assert url.startswith("s3://"), name
        assert f"mc mb --ignore-existing store/{url.split('/')[2]}" in script  # that very bucket is created
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            assert env.get(var), f"{name} lacks {var}"
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    # nothing starts before the bucket exists: migrate waits for it, the others wait for migrate
    assert services["migrate"]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    for name in ("models", "api", "worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "minio-data" in compose["volumes"]
    from chatforge.settings import Settings

    assert {"storage_url", "storage_cache_bytes"} <= set(Settings.model_fields)


def test_image_runs_as_a_non_root_user():
    lines = [line.strip() for line in (ROOT / "docker/Dockerfile").read_text().splitlines()]
    users = [line.split(None, 1)[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image's last USER must not be root"
    assert any("useradd" in line and users[-1] in line for line in lines)
    assert "boto3" in (ROOT / "pyproject.toml").read_text()  # the object-store client ships in the image


def test_every_compose_service_has_a_memory_limit_and_a_health_check():
    """Long-running services declare a real health check; one-shot jobs (restart "no") disable it
    explicitly. Every service caps its memory."""
    import re

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, svc in services.items():
        memory = svc.get("mem_limit") or svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        assert memory and re.fullmatch(r"(\$\{[A-Z_]+:-)?\d+[kmg](\})?", str(memory)), f"{name}: memory limit {memory!r}"
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if svc.get("restart") == "no":
            assert check == {"disable": True}, f"one-shot {name} should disable its health check"
        else:
            test = check["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1 and not check.get("disable"), name
