"""``vaegan playground``: a small web page for exploring a served model's latent space.

An aiohttp app that serves one static page (``playground.html``: plain HTML and JavaScript,
no build step) and a JSON API that calls the gateway over gRPC, so the page sees exactly
what other services see: the same model version, limits and error messages.

    GET  /api/info         model version, image size, the version's directions
    POST /api/encode       image bytes -> embedding + reconstruction (PNG data URL)
    POST /api/edit         {embedding, weights} -> edited image + embedding
    POST /api/interpolate  {a, b, steps} -> NDJSON, one frame per line as it is decoded
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
from aiohttp import web

from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

PAGE = Path(__file__).with_name("playground.html")
MAX_UPLOAD = 8 * 1024 * 1024

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


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as e:
        return _grpc_error(e)
    except (ValueError, KeyError, TypeError) as e:  # malformed JSON from a caller
        return web.json_response({"error": f"bad request: {e}", "code": "BAD_REQUEST"}, status=400)


class Playground:
    def __init__(self, target: str, token: str | None = None, timeout: float = 30.0):
        self.target = target
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout = timeout

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

    async def edit(self, request: web.Request) -> web.Response:
        body = await request.json()
        weights = {str(k): float(v) for k, v in body["weights"].items() if float(v) != 0}
        source = pb.Keyframe(embedding=_embedding(body["embedding"]))
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
        body = await request.json()
        req = pb.InterpolateRequest(
            keyframes=[pb.Keyframe(embedding=_embedding(body[k])) for k in ("a", "b")],
            steps=int(body.get("steps", 16)),
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
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.LatentServiceStub(self.channel)

    async def close(self, app: web.Application) -> None:
        await self.channel.close()


def make_app(target: str, token: str | None = None) -> web.Application:
    pg = Playground(target, token)
    app = web.Application(middlewares=[errors], client_max_size=MAX_UPLOAD + 1024)
    app.router.add_get("/", pg.page)
    app.router.add_get("/api/info", pg.info)
    app.router.add_post("/api/encode", pg.encode)
    app.router.add_post("/api/edit", pg.edit)
    app.router.add_post("/api/interpolate", pg.interpolate)
    app.on_startup.append(pg.open)
    app.on_cleanup.append(pg.close)
    return app


def run(target: str, host: str, port: int, token: str | None = None) -> None:
    print(f"playground on http://{host}:{port}/ (gateway {target})", flush=True)
    web.run_app(make_app(target, token), host=host, port=port, print=None)
