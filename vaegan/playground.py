"""``vaegan playground``: a small web page for exploring a served model's latent space.

An aiohttp app that serves one static page (``playground.html``: plain HTML and JavaScript,
no build step) and a JSON API that calls the gateway over gRPC, so the page sees exactly
what other services see: the same model version, limits and error messages.

    GET  /api/info         model version, image size, the version's directions
    POST /api/encode       image bytes (image/png, image/jpeg) -> embedding + reconstruction
    POST /api/sample       JSON {seed, prior, refine_steps} -> a draw from the prior: image + embedding
    POST /api/edit         JSON {embedding, weights} -> edited image + embedding
    POST /api/interpolate  JSON {a, b, steps} -> NDJSON, one frame per line as it is decoded

The page drives a gateway with the operator's token, so the API only answers the page:
a ``Host`` that is an IP literal, ``localhost`` or an allowed name (a DNS-rebinding page has
its own name), an ``Origin``, when sent, of that same host (a cross-site page's fetch or
form), and bodies of the declared types only (those cannot be sent cross-site without a
CORS preflight, which is never answered). With an access token, every API call must carry
it (the page takes it from its URL's ``#token=`` fragment, which is never sent to servers).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from vaegan.flags import finite_number
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

log = logging.getLogger("vaegan.playground")
PAGE = Path(__file__).with_name("playground.html")
MAX_UPLOAD = 8 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "application/octet-stream"})

# gRPC status -> HTTP status for the page (the gRPC message is shown as is).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def _data_url(image: pb.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(image.data).decode()


def _embedding(values) -> pb.Embedding:
    return pb.Embedding(values=[float(v) for v in values])


def _grpc_error(e: grpc.aio.AioRpcError) -> web.Response:
    return web.json_response(
        {"error": e.details(), "code": e.code().name}, status=HTTP_STATUS.get(e.code(), 502)
    )


class BadRequest(Exception):
    """The caller's request is not what the API takes; the message says what is."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST"):
        super().__init__(message)
        self.status, self.code = status, code


def _refuse(e: BadRequest) -> web.Response:
    return web.json_response({"error": str(e), "code": e.code}, status=e.status)


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as e:
        return _grpc_error(e)
    except BadRequest as e:
        return _refuse(e)
    except web.HTTPException:
        raise
    except Exception:  # a fault of ours: the caller gets no trace, the log gets one
        log.exception("unexpected error in %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal error; the playground's log has the details", "code": "INTERNAL"},
            status=500,
        )


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """An IP literal, localhost or a name in ``allowed``: a DNS-rebinding page reaches us
    under its own name, never one of these."""
    name = urlsplit("//" + host).hostname or ""
    if name in allowed or name == "localhost" or "*" in allowed:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def guard(allowed_hosts: frozenset[str], access_token: str | None):
    """Host, Origin, body type and access-token checks of every API call."""
    expected = f"Bearer {access_token}".encode() if access_token else None

    @web.middleware
    async def check(request: web.Request, handler):
        try:
            if not _host_allowed(request.host, allowed_hosts):
                raise BadRequest(
                    f"Host {request.host!r} is not served here; start the playground with "
                    "--allowed-host NAME to serve it under that name",
                    403,
                    "FORBIDDEN",
                )
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.host:
                raise BadRequest(f"cross-origin request from {origin!r} refused", 403, "FORBIDDEN")
            if request.path.startswith("/api/"):
                if expected is not None:
                    given = request.headers.get("Authorization", "").encode()
                    if not hmac.compare_digest(given, expected):
                        raise BadRequest(
                            "missing or wrong access token: open the page as "
                            "http://HOST:PORT/#token=<the playground's --access-token>",
                            401,
                            "UNAUTHENTICATED",
                        )
                if request.method == "POST":
                    want = IMAGE_TYPES if request.path == "/api/encode" else {"application/json"}
                    if request.content_type not in want:
                        raise BadRequest(
                            f"Content-Type {request.content_type!r}: expected "
                            + " or ".join(sorted(want)),
                            415,
                            "UNSUPPORTED_MEDIA_TYPE",
                        )
        except BadRequest as e:
            return _refuse(e)
        return await handler(request)

    return check


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _whole(body: dict, key: str, default: int, below: int) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < below:
        raise BadRequest(f"{key}: expected a whole number from 0 to {below - 1}")
    return value


PRIORS = {"fitted": pb.PRIOR_FITTED, "standard": pb.PRIOR_STANDARD}


def _vector(body: dict, key: str) -> pb.Embedding:
    values = body.get(key)
    if not isinstance(values, list) or not all(finite_number(v) for v in values):
        raise BadRequest(f"{key}: expected a list of finite numbers")
    return _embedding(values)


class Playground:
    def __init__(
        self,
        target: str,
        token: str | None = None,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.target = target
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout = timeout
        self.credentials = credentials

    def _call(self, method, request):
        return method(request, timeout=self.timeout, metadata=self.metadata)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def info(self, request: web.Request) -> web.Response:
        info = await self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest())
        attrs = await self._call(self.stub.ListAttributes, pb.ListAttributesRequest())
        return web.json_response(
            {
                "decoder_version": info.decoder.version,
                "encoder_version": info.encoder.version,
                "latent_dim": info.latent_dim,
                "image_size": info.image_size,
                "max_image_bytes": info.limits.max_image_bytes,
                "fitted_prior": info.fitted_prior,
                "attributes": [
                    {
                        "name": a.name,
                        "kind": a.kind,
                        "auc": a.auc if a.HasField("auc") else None,
                        "explained_variance": a.explained_variance
                        if a.HasField("explained_variance")
                        else None,
                    }
                    for a in attrs.attributes
                ],
            }
        )

    async def encode(self, request: web.Request) -> web.Response:
        data = await request.read()
        enc = await self._call(self.stub.Encode, pb.EncodeRequest(images=[data]))
        mu = enc.encodings[0].mu
        gen = await self._call(
            self.stub.Generate, pb.GenerateRequest(embeddings=pb.EmbeddingList(items=[mu]))
        )
        return web.json_response(
            {
                "embedding": list(mu.values),
                "reconstruction": _data_url(gen.images[0]),
                "version": gen.decoder_version,
            }
        )

    async def sample(self, request: web.Request) -> web.Response:
        """One draw from the version's fitted prior or N(0, I), refined as asked."""
        body = await _json(request)
        prior = body.get("prior", "fitted")
        if prior not in PRIORS:
            raise BadRequest('prior: expected "fitted" or "standard"')
        sample = pb.Sample(
            count=1,
            seed=_whole(body, "seed", 0, 2**63),
            prior=PRIORS[prior],
            refine_steps=_whole(body, "refine_steps", 0, 2**31),  # the gateway bounds it
        )
        r = await self._call(self.stub.Generate, pb.GenerateRequest(sample=sample))
        return web.json_response(
            {
                "image": _data_url(r.images[0]),
                "embedding": list(r.embeddings[0].values),
                "version": r.decoder_version,
            }
        )

    async def edit(self, request: web.Request) -> web.Response:
        body = await _json(request)
        given = body.get("weights", {})
        if not isinstance(given, dict) or not all(finite_number(v) for v in given.values()):
            raise BadRequest("weights: expected an object of direction name -> finite number")
        weights = {k: float(v) for k, v in given.items() if v != 0}
        source = pb.Keyframe(embedding=_vector(body, "embedding"))
        if not weights:  # nothing to move: the plain decoding
            r = await self._call(
                self.stub.Generate,
                pb.GenerateRequest(embeddings=pb.EmbeddingList(items=[source.embedding])),
            )
        else:
            r = await self._call(self.stub.Edit, pb.EditRequest(source=source, weights=weights))
        return web.json_response(
            {"image": _data_url(r.images[0]), "embedding": list(r.embeddings[0].values)}
        )

    async def interpolate(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        req = pb.InterpolateRequest(
            keyframes=[pb.Keyframe(embedding=_vector(body, k)) for k in ("a", "b")],
            steps=_whole(body, "steps", 16, 2**31),  # frames between a and b
        )
        call = self._call(self.stub.InterpolateStream, req)
        first = await call.read()  # errors (bad steps...) surface before the stream starts
        if first is grpc.aio.EOF:
            return web.json_response({"error": "no frames", "code": "INTERNAL"}, status=502)
        out = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await out.prepare(request)
        frame = first
        while frame is not grpc.aio.EOF:
            line = {"index": frame.index, "total": frame.total, "image": _data_url(frame.image)}
            await out.write((json.dumps(line) + "\n").encode())
            frame = await call.read()
        await out.write_eof()
        return out

    async def open(self, app: web.Application) -> None:
        # A grpc.aio channel belongs to the event loop it is created on: the app's.
        if self.credentials is not None:
            self.channel = grpc.aio.secure_channel(self.target, self.credentials)
        else:
            self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.LatentServiceStub(self.channel)

    async def close(self, app: web.Application) -> None:
        await self.channel.close()


def make_app(
    target: str,
    token: str | None = None,
    *,
    timeout: float = 30.0,
    allowed_hosts: frozenset[str] = frozenset(),
    access_token: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> web.Application:
    """``token``: the gateway's bearer token; ``access_token``: the page's own, which every
    API call must carry; ``allowed_hosts``: names besides IP literals and localhost this is
    served under ("*": any); ``credentials``: TLS for the gateway channel."""
    pg = Playground(target, token, timeout, credentials)
    app = web.Application(
        middlewares=[guard(allowed_hosts, access_token), errors], client_max_size=MAX_UPLOAD + 1024
    )
    app.router.add_get("/", pg.page)
    app.router.add_get("/api/info", pg.info)
    app.router.add_post("/api/encode", pg.encode)
    app.router.add_post("/api/sample", pg.sample)
    app.router.add_post("/api/edit", pg.edit)
    app.router.add_post("/api/interpolate", pg.interpolate)
    app.on_startup.append(pg.open)
    app.on_cleanup.append(pg.close)
    return app


def run(target: str, host: str, port: int, **options) -> None:
    access = "; open it with #token=<access token>" if options.get("access_token") else ""
    print(f"playground on http://{host}:{port}/ (gateway {target}){access}", flush=True)
    web.run_app(make_app(target, **options), host=host, port=port, print=None)
