"""The server accepts access tokens of a real OpenID Connect provider (docs/security.md,
"Single sign-on"): each mapped group sees exactly its role's services, the ledger's `by` is
the person, and an expired token, one for another audience, one signed by a key the provider
no longer publishes and a person in no mapped group are refused, saying which check failed.
Keys rotate without a restart of the server. Chorus tokens keep working alongside.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from joserfc import jws, jwt
from joserfc.jwk import RSAKey

from chorus.server.model.clock import FakeClock
from chorus.server.model.oidc import parse_oidc
from chorus.server.model.roles import SERVICE_ROLES, Role
from chorus.server.root import Chorus
from chorus.server.transport.grpc_server import Server
from chorus.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc
from tests._idp import OTHER_AUDIENCE, SHORT_CLIENT, USERS, IdentityProvider, new_key, oidc_toml
from tests._policy import suite_config
from tests._secrets import register

pytestmark = pytest.mark.slow  # a Node.js provider and a server on a socket

register(*(u["email"] for u in USERS.values()))
#: One cheap RPC per service, called with an empty message: admitted means any code but these.
#: The OpenTelemetry collector services each have one method, Export.
PROBES = {service: f"/{service}/Export" for service in SERVICE_ROLES if service.startswith("opentelemetry.")} | {
    "chorus.v1.IngestService": "/chorus.v1.IngestService/Report",
    "chorus.v1.ReleaseService": "/chorus.v1.ReleaseService/ListMetrics",
    "chorus.v1.AuditService": "/chorus.v1.AuditService/GetPublicKey",
    "chorus.v1.AdminService": "/chorus.v1.AdminService/GetStats",
}
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class SsoServer:
    def __init__(self, data_dir: Path, issuer: str, *, jwks_cache_seconds: int = 300) -> None:
        oidc = parse_oidc(tomllib.loads(oidc_toml(issuer, jwks_cache_seconds=jwks_cache_seconds))["oidc"])
        clock = FakeClock(datetime(2026, 11, 25, 12, tzinfo=UTC))
        self.chorus = Chorus(dataclasses.replace(suite_config(), oidc=oidc), data_dir, clock=clock)
        self.admin_token = self.chorus.tokens.create(Role.ADMIN, "ops-token", self.chorus.clock.now(), "test")[0]
        register(self.admin_token)
        self.server = Server(self.chorus, "127.0.0.1:0", run_closer=False)
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)

    def call(self, method: str, token: str) -> grpc.RpcError | None:
        try:
            self.channel.unary_unary(method)(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=20)
        except grpc.RpcError as exc:
            return exc
        return None

    def code(self, method: str, token: str) -> grpc.StatusCode:
        error = self.call(method, token)
        return grpc.StatusCode.OK if error is None else error.code()  # type: ignore[attr-defined]

    def refusal(self, token: str) -> str:
        """The UNAUTHENTICATED message for `token` on a service every role but one is refused."""
        error = self.call(PROBES["chorus.v1.AuditService"], token)
        assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error  # type: ignore[attr-defined]
        return str(error.details())  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(0)


@pytest.fixture(scope="module")
def sso(provider: IdentityProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoServer]:
    server = SsoServer(tmp_path_factory.mktemp("chorus"), provider.issuer)
    yield server
    server.stop()


def token_of(provider: IdentityProvider, user: str, **kwargs: str) -> str:
    token = str(provider.sign_in(user, **kwargs)["access_token"])
    register(token)
    return token


@pytest.mark.parametrize(("user", "role"), [("alice", Role.ANALYST), ("olga", Role.AUDITOR),
                                            ("omar", Role.ADMIN), ("ivan", Role.INGEST)])
def test_each_mapped_group_calls_exactly_its_roles_services(provider: IdentityProvider, sso: SsoServer,
                                                            user: str, role: Role) -> None:
    token = token_of(provider, user)
    assert set(PROBES) == set(SERVICE_ROLES)
    seen = {service for service, method in PROBES.items() if sso.code(method, token) not in REFUSED}
    assert seen == {service for service, roles in SERVICE_ROLES.items() if role in roles}
    denied = sso.call(PROBES["chorus.v1.AdminService"], token) if role != Role.ADMIN else None
    if denied is not None:
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert f"user {USERS[user]['email']!r} has role {role.value}" in denied.details()  # type: ignore[attr-defined]


def test_the_ledger_records_the_person_as_by(provider: IdentityProvider, sso: SsoServer) -> None:
    admin = token_of(provider, "omar")
    created = admin_pb2_grpc.AdminServiceStub(sso.channel).CreateToken(
        admin_pb2.CreateTokenRequest(role=admin_pb2.ROLE_INGEST, name="made-by-omar"),
        metadata=(("authorization", f"Bearer {admin}"),), timeout=20)
    register(created.token)
    auditor = token_of(provider, "olga")
    stream = audit_pb2_grpc.AuditServiceStub(sso.channel).StreamLedger(
        audit_pb2.StreamLedgerRequest(), metadata=(("authorization", f"Bearer {auditor}"),), timeout=20)
    bodies = [json.loads(e.body) for page in stream for e in page.entries]
    (entry,) = [b for b in bodies if b["kind"] == "token_create" and b["payload"]["name"] == "made-by-omar"]
    assert entry["payload"]["by"] == "omar@example.com"


def test_chorus_tokens_still_work_beside_sso(sso: SsoServer) -> None:
    assert sso.code(PROBES["chorus.v1.AdminService"], sso.admin_token) == grpc.StatusCode.OK


def test_an_expired_token_is_refused(provider: IdentityProvider, sso: SsoServer) -> None:
    token = token_of(provider, "olga", client_id=SHORT_CLIENT)  # lives 2 seconds
    assert sso.code(PROBES["chorus.v1.AuditService"], token) == grpc.StatusCode.OK
    time.sleep(3.1)
    assert sso.refusal(token) == "the access token has expired: sign in again"


def test_a_token_for_another_audience_is_refused(provider: IdentityProvider, sso: SsoServer) -> None:
    token = token_of(provider, "olga", resource=OTHER_AUDIENCE)
    assert sso.refusal(token) == "the access token is not for this server (audience)"


def test_a_person_in_no_mapped_group_is_refused(provider: IdentityProvider, sso: SsoServer) -> None:
    token = token_of(provider, "nina")
    assert sso.refusal(token) == ("the signed-in user is in no group that [oidc.roles] maps to a role "
                                  "(claim 'groups')")


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(provider: IdentityProvider,
                                                                    sso: SsoServer) -> None:
    genuine = token_of(provider, "olga")
    claims = jwt.decode(genuine, RSAKey.import_key(provider.keys[0])).claims
    forger = RSAKey.generate_key(2048, parameters={"kid": provider.keys[0]["kid"]})
    forged = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": provider.keys[0]["kid"]}, claims, forger)
    register(forged)
    assert sso.refusal(forged) == "the access token's signature does not verify"


def test_keys_rotate_without_a_restart(tmp_path: Path) -> None:
    """A new key is accepted at once (an unknown kid fetches the JWKS again); a removed key is
    refused from the first fetch after its removal (here the keys are trusted for 1 s)."""
    idp = IdentityProvider(tmp_path)
    idp.start()
    sso = SsoServer(tmp_path / "chorus", idp.issuer, jwks_cache_seconds=1)
    try:
        probe = PROBES["chorus.v1.AuditService"]
        old_key = idp.keys[0]
        before = token_of(idp, "olga")
        assert sso.code(probe, before) == grpc.StatusCode.OK
        time.sleep(1.1)  # past the least interval between two fetches
        idp.start(keys=[new_key("key-2"), old_key])  # the new key signs, the old one is still published
        after = token_of(idp, "olga")
        assert jws.extract_compact(after.encode()).protected["kid"] == "key-2"
        assert sso.code(probe, after) == grpc.StatusCode.OK
        assert sso.code(probe, before) == grpc.StatusCode.OK
        idp.start(keys=idp.keys[:1])  # the old key removed
        time.sleep(1.1)
        assert sso.refusal(before) == ("the access token is signed by a key the identity provider "
                                       "does not publish")
        assert sso.code(probe, after) == grpc.StatusCode.OK
    finally:
        sso.stop()
        idp.stop()
