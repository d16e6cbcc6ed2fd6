"""An OpenID Connect provider's metadata (`/.well-known/openid-configuration`), as the two
clients of the provider read it: the dashboard (authorization code with PKCE) and the CLI
(device flow). The document must name the issuer it was fetched for (OpenID Connect
Discovery §4.3), so a misconfigured URL cannot hand out another provider's endpoints.
"""

from __future__ import annotations

from typing import Any

import requests

HTTP_TIMEOUT = 10.0


class DiscoveryError(Exception):
    """The provider did not answer, or answered with something else than its own metadata."""


def provider_metadata(issuer: str) -> dict[str, Any]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        answer = requests.get(url, timeout=HTTP_TIMEOUT)
        answer.raise_for_status()
        metadata = answer.json()
    except (requests.RequestException, ValueError) as exc:
        raise DiscoveryError(f"the identity provider at {issuer} did not answer ({type(exc).__name__}); "
                             "try again shortly") from None
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
        raise DiscoveryError(f"{url} does not describe the issuer {issuer}")
    return metadata
