"""What the driver needs besides the pool: the environment workers get, the cluster check, the cache's stand-in."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from typing import Any

from moa._errors import ConfigError

#: Environment variables handed to every worker (a cluster's nodes do not share the driver's environment):
#: provider keys, endpoints and settings, as litellm and moa name them.  Their values are never logged.
FORWARDED = re.compile(
    r"(_API_KEY|_API_BASE|_BASE_URL|_API_VERSION|_API_TYPE|_ORGANIZATION)$"
    r"|^(MOA_|LITELLM_|OPENAI_|AZURE_|AWS_|VERTEX|GOOGLE_APPLICATION_CREDENTIALS$|HF_TOKEN$|NO_PROXY$|HTTPS?_PROXY$)",
    re.IGNORECASE,
)
INSTALL_HINT = "pip install 'moa-pipeline[ray]'  (from a checkout: pip install -e '.[ray]')"
CONNECT_TIMEOUT_S = 5.0


class RayUnavailableError(ConfigError):
    """Ray is not installed, or the cluster cannot be reached."""


def import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise RayUnavailableError(f"--ray needs Ray: {INSTALL_HINT}") from None
    except ImportError as exc:  # installed, but broken (a missing shared library...)
        raise RayUnavailableError(f"--ray: Ray is installed but cannot be imported ({exc}); {INSTALL_HINT}") from None
    return ray


def forwarded_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if FORWARDED.search(name)}


def key_names(recipe_data: Any) -> Iterator[str]:
    """Every ``api_key_env`` a recipe names (its agents' keys: the workers need them too)."""
    if isinstance(recipe_data, dict):
        for key, value in recipe_data.items():
            if key == "api_key_env" and isinstance(value, str):
                yield value
            else:
                yield from key_names(value)
    elif isinstance(recipe_data, list):
        for value in recipe_data:
            yield from key_names(value)


def check_reachable(address: str) -> None:
    """A ``host:port`` address must accept a connection within seconds (Ray itself would retry for minutes)."""
    if "://" in address or address == "auto" or ":" not in address:
        return  # Ray Client, a local cluster to find, or something Ray will refuse at once
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise RayUnavailableError(f"--ray {address}: the port {port!r} is not a number")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailableError(
            f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            "`ray start --head` (it prints the address to give), or use --ray alone for a Ray of this machine"
        ) from None


class CacheView:
    """What an eval's summary asks of its call cache, for the cache the workers share: this command's part of it
    (hits and misses since the view was made: a baseline run counts its own)."""

    def __init__(self, runner: Any, path: str) -> None:
        self.runner, self.path = runner, path
        self.base = runner.cache_counts()

    def open(self) -> None:  # the runner opens (and checks) it when the work starts
        return None

    def summary(self) -> dict[str, Any]:
        now = self.runner.cache_counts()
        found: dict[str, Any] = {"path": self.path}
        found["hits"] = now.get("hits", 0) - self.base.get("hits", 0)
        found["misses"] = now.get("misses", 0) - self.base.get("misses", 0)
        found["saved_usd"] = round(now.get("saved_usd", 0.0) - self.base.get("saved_usd", 0.0), 6)
        return {**found, "failure": now["failure"]} if now.get("failure") else found
