"""``python -m gateway.healthcheck``: exit status 0 when the gateway's operations listener answers ``/healthz``.

The probe of the container recipe's HEALTHCHECK (Containerfile), usable by any supervisor that runs a command.
It finds the listener through the same environment the gateway reads, ``CELLGATE_HTTP__LISTEN`` (default
``127.0.0.1:9108``) and ``CELLGATE_HTTP__TOKEN_FILE`` (the bearer token), so it loads no tag map: a listener set
only in the tag map is not seen here. Standard library only; one line on stderr when unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:9108"
TIMEOUT_S = 5.0
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1  # what container engines read as "unhealthy"

# A listener on every address is probed on the loopback address of its family.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def healthz_url(listen: str) -> str:
    """``http://host:port/healthz`` for a ``host:port`` / ``[v6]:port`` listen value."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    host = _WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def probe(env: Mapping[str, str]) -> tuple[int, str]:
    """(exit status, one line saying why when unhealthy)."""
    listen = env.get("CELLGATE_HTTP__LISTEN") or DEFAULT_LISTEN
    request = urllib.request.Request(healthz_url(listen))
    token_file = env.get("CELLGATE_HTTP__TOKEN_FILE")
    try:
        if token_file:
            request.add_header("Authorization", f"Bearer {Path(token_file).read_text(encoding='utf-8').strip()}")
        # No proxy: an HTTP_PROXY of the environment must not carry a loopback probe elsewhere.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return EXIT_UNHEALTHY, f"cellgate healthcheck: {request.full_url}: {exc}"
    if status != 200:
        return EXIT_UNHEALTHY, f"cellgate healthcheck: {request.full_url}: HTTP {status}"
    return EXIT_HEALTHY, ""


def main() -> int:
    status, reason = probe(os.environ)
    if reason:
        print(reason, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
