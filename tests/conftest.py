import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tests.support.models import CACHE, smollm2_dir, tiny_llama_dir


@pytest.fixture(scope="session")
def smollm2_path():
    return smollm2_dir()


@pytest.fixture(scope="session")
def tiny_model_path():
    return tiny_llama_dir()


from tests.support.service import postgres_database, redis_database, start_service


@pytest.fixture(scope="session")
def pg_url():
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url():
    with redis_database() as url:
        yield url


# The session service closes idle connections sooner than the default 75 s (tests wait for it), still
# longer than httpx keeps them pooled (5 s).
IDLE_CLOSE_S = 8
FAST_JOBS = {"CHATFORGE_JOB_LEASE_SECONDS": "8", "CHATFORGE_RECONCILE_INTERVAL_SECONDS": "2",
             "CHATFORGE_FILE_VALIDATION_LEASE_SECONDS": "10",
             # DeepSpeed JIT-compiles its CPU ops once (30-40 s); keep them between test runs
             "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions")}


@pytest.fixture(scope="session")
def service(tmp_path_factory, pg_url, redis_url, tiny_model_path, smollm2_path):
    """Scale-out mode: PostgreSQL + Redis + an API server process + a Celery worker process."""
    svc = start_service(tmp_path_factory.mktemp("svc"), pg_url, redis_url, workers=1,
                        models={"tiny-llama": tiny_model_path, "smollm2-135m-instruct": smollm2_path},
                        CHATFORGE_IMPORT_DIRS=str(tmp_path_factory.getbasetemp()),
                        CHATFORGE_HTTP_KEEP_ALIVE_SECONDS=str(IDLE_CLOSE_S), **FAST_JOBS)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def key_a(service):
    return service.key("project-a")


@pytest.fixture(scope="session")
def key_b(service):
    return service.key("project-b")


@pytest.fixture(scope="session")
def client_a(service, key_a):
    import openai

    return openai.OpenAI(base_url=service.v1, api_key=key_a, max_retries=0, timeout=600)


@pytest.fixture(scope="session")
def client_b(service, key_b):
    import openai

    return openai.OpenAI(base_url=service.v1, api_key=key_b, max_retries=0, timeout=600)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; on CPU machines they are skipped (the CPU suite covers the same code paths)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as none
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
