"""Where the services are: environment variables, read when a task runs."""

import os


def setting(name: str) -> str:
    value = os.environ.get(f"INTEL_{name}")
    if not value:
        raise RuntimeError(f"set INTEL_{name} (see examples/intel/README.md)")
    return value


def database() -> str:
    return os.environ.get("INTEL_DB", "intel.db")
