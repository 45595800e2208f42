"""Access to the gateway: TLS, mutual TLS and bearer tokens, with a throwaway CA the tests
make at run time. Real gRPC over loopback, embedded backend."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import mutual_tls
from gateway_harness import GatewayThread
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaegan.client import LatentClient
from vaegan.service.settings import Settings
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-for-tests"


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code()


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(repo, pki):
    d = pki["dir"]
    settings = Settings(
        model_repository=str(repo), tls_cert=str(d / "server.pem"), tls_key=str(d / "server.key")
    )
    with GatewayThread(settings) as gw:
        target = f"localhost:{gw.settings.port}"
        with LatentClient(target, tls_ca=pki["ca"][0], timeout=10) as c:
            assert c.generate(count=1)[0].shape == (1, 32, 32, 3)
        with LatentClient(target, timeout=3) as plain:
            assert _code(lambda: plain.generate(count=1)) == grpc.StatusCode.UNAVAILABLE


def test_a_tls_gateway_can_answer_plaintext_health_probes_on_a_port_that_serves_nothing_else(
    repo, pki
):
    from vaegan.host import free_port

    health_port = free_port()
    settings = Settings(model_repository=str(repo), **mutual_tls(pki), health_port=health_port)
    with GatewayThread(settings):
        channel = grpc.insecure_channel(f"127.0.0.1:{health_port}")
        probe = health_pb2_grpc.HealthStub(channel)
        ready = health_pb2.HealthCheckRequest(service="vaegan.v1.LatentService")
        assert probe.Check(ready, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.LatentServiceStub(channel)
        code = _code(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10))
        assert code == grpc.StatusCode.UNIMPLEMENTED  # the service itself stays behind TLS


def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(repo, pki):
    settings = Settings(model_repository=str(repo), **mutual_tls(pki))
    with GatewayThread(settings) as gw:
        target = f"localhost:{gw.settings.port}"
        with LatentClient(
            target,
            tls_ca=pki["ca"][0],
            client_cert=pki["client"][0],
            client_key=pki["client"][1],
            timeout=10,
        ) as c:
            assert c.generate(count=1)[0].shape == (1, 32, 32, 3)
        with LatentClient(target, tls_ca=pki["ca"][0], timeout=3) as anonymous:
            assert _code(lambda: anonymous.generate(count=1)) == grpc.StatusCode.UNAVAILABLE
        with LatentClient(
            target,
            tls_ca=pki["ca"][0],
            client_cert=pki["rogue"][0],
            client_key=pki["rogue"][1],
            timeout=3,
        ) as rogue:
            assert _code(lambda: rogue.generate(count=1)) == grpc.StatusCode.UNAVAILABLE


def test_bearer_token_is_required_before_any_decoding_and_health_stays_open(repo, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\nanother-token\n")
    with GatewayThread(Settings(model_repository=str(repo), auth_tokens_file=str(tokens))) as gw:
        stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gw.target))
        huge_bad_image = pb.EncodeRequest(images=[b"\x89PNG" + bytes(4 << 20)])
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            code = _code(lambda m=metadata: stub.Encode(huge_bad_image, metadata=m, timeout=5))
            assert code == grpc.StatusCode.UNAUTHENTICATED  # not INVALID_ARGUMENT: never decoded
        walk = pb.InterpolateRequest(
            keyframes=[pb.Keyframe(embedding=pb.Embedding(values=[0.0] * 16))] * 2, steps=1
        )
        code = _code(lambda: list(stub.InterpolateStream(walk, timeout=5)))  # a streaming RPC
        assert code == grpc.StatusCode.UNAUTHENTICATED
        with LatentClient(gw.target, token=TOKEN) as c:
            assert c.generate(count=1)[0].shape == (1, 32, 32, 3)
            assert len(list(c.interpolate_stream([np.zeros(16), np.ones(16)], 1))) == 3
        with LatentClient(gw.target, token="another-token") as c:
            assert c.info().latent_dim == 16
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(gw.target))
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert TOKEN not in gw.settings.describe()


def test_tokens_from_the_environment_are_never_shown_in_the_start_up_line():
    s = Settings(model_repository="x", auth_tokens="abc,def")
    assert s.tokens() == frozenset({"abc", "def"})
    assert "abc" not in s.describe() and "auth=2 tokens" in s.describe()


def test_reflection_needs_a_token_when_the_service_does(repo):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    settings = Settings(model_repository=str(repo), auth_tokens=TOKEN)
    with GatewayThread(settings) as gw:
        r = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(gw.target))

        def services(metadata=None):
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            (answer,) = r.ServerReflectionInfo(iter([ask]), metadata=metadata, timeout=10)
            return {s.name for s in answer.list_services_response.service}

        assert _code(services) == grpc.StatusCode.UNAUTHENTICATED
        assert "vaegan.v1.LatentService" in services([("authorization", f"Bearer {TOKEN}")])


def test_reflection_can_be_turned_off(repo):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with GatewayThread(Settings(model_repository=str(repo), reflection=False)) as gw:
        r = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(gw.target))
        code = _code(
            lambda: list(
                r.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            )
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED


def test_made_up_method_names_are_counted_as_unknown_so_callers_cannot_grow_the_metrics(
    repo, tmp_path
):
    import urllib.request

    from vaegan.service.metrics import metric_value

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    with GatewayThread(Settings(model_repository=str(repo), auth_tokens_file=str(tokens))) as gw:
        channel = grpc.insecure_channel(gw.target)
        names = [f"/vaegan.v1.LatentService/Made{i}" for i in range(50)]
        for name in names:  # unauthenticated, then authenticated: neither grows a label
            for metadata in (None, [("authorization", f"Bearer {TOKEN}")]):
                call = channel.unary_unary(name)
                assert _code(lambda c=call, m=metadata: c(b"", metadata=m, timeout=5)) in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.UNIMPLEMENTED,
                )
        text = urllib.request.urlopen(gw.metrics_url, timeout=5).read().decode()
        assert "Made" not in text
        assert metric_value(
            text, "grpc_server_handled_total", grpc_method="unknown", grpc_code="UNAUTHENTICATED"
        ) == len(names)


def test_the_metrics_endpoint_binds_the_gateways_host_unless_told_otherwise(repo):
    import socket
    import urllib.request

    with GatewayThread(Settings(model_repository=str(repo))) as gw:  # the harness: 127.0.0.1
        assert gw.running.metrics_http.server_address[0] == "127.0.0.1"
        assert urllib.request.urlopen(gw.metrics_url, timeout=5).status == 200
        outside = [
            a[4][0]
            for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
            if not a[4][0].startswith("127.")
        ]
        for address in outside:  # another interface of this machine, if it has one
            with (
                pytest.raises(OSError),
                socket.create_connection((address, gw.settings.metrics_port), timeout=2),
            ):
                pass
    with GatewayThread(Settings(model_repository=str(repo), metrics_host="0.0.0.0")) as gw:
        assert gw.running.metrics_http.server_address[0] == "0.0.0.0"


@pytest.mark.parametrize(
    "source",
    [{"auth_tokens": " , "}, {"auth_tokens": ""}, {"auth_tokens_file": "comments"}],
    ids=["separators-only", "empty", "file-of-comments"],
)
def test_a_token_source_without_a_token_stops_the_gateway_instead_of_serving_open(
    repo, tmp_path, source
):
    from vaegan.errors import VaeganError
    from vaegan.service.process import spawn

    if "auth_tokens_file" in source:
        (tmp_path / "tokens").write_text("# the tokens\n   # rotated monthly\n\n")
        source = {"auth_tokens_file": str(tmp_path / "tokens")}
    with pytest.raises(VaeganError, match="holds no token"):
        Settings(model_repository=str(repo), **source).tokens()
    gw = spawn({"model_repository": str(repo), **source}, by_env=True, output="capture")
    out, _ = gw.process.communicate(timeout=60)  # the 12-factor path: VAEGAN_* variables
    assert gw.process.returncode == 2 and "holds no token" in out, out
    assert "Traceback" not in out


def test_the_start_up_line_says_how_many_tokens_or_that_auth_is_off(repo):
    assert "auth=off" in Settings(model_repository=str(repo)).describe()
    assert "auth=1 token " in Settings(model_repository=str(repo), auth_tokens="t").describe() + " "


def test_the_bearer_scheme_is_case_insensitive(repo, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    with GatewayThread(Settings(model_repository=str(repo), auth_tokens_file=str(tokens))) as gw:
        stub = pb_grpc.LatentServiceStub(grpc.insecure_channel(gw.target))
        for scheme in ("Bearer", "bearer", "BEARER"):
            md = [("authorization", f"{scheme} {TOKEN}")]
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=10).latent_dim
