"""The OpenID Connect provider the tests of this folder share (tests/_idp.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._idp import IdentityProvider


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityProvider]:
    idp = IdentityProvider(tmp_path_factory.mktemp("idp"))
    idp.start()
    yield idp
    idp.stop()
