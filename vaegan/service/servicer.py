"""The servicer: request messages -> arrays -> ``LatentCore`` -> response messages, nothing
else. What a request means (limits, sampling, paths, edits) is the core's; errors are raised
as the project's exceptions and the status interceptor turns them into gRPC statuses."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import fields

import grpc
import numpy as np

from vaegan.errors import InvalidInput, VaeganError
from vaegan.service import codecs
from vaegan.service.core import Key, LatentCore
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

METHODS = (pb.INTERPOLATION_METHOD_LINEAR, pb.INTERPOLATION_METHOD_SPHERICAL)
log = logging.getLogger("vaegan.service")


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _values(e: pb.Embedding) -> np.ndarray:
    # fromiter skips the temporary sequence np.asarray builds from a repeated field.
    return np.fromiter(e.values, np.float32, len(e.values))


def _key(k) -> Key:
    """A Keyframe or AnalogyItem: its embedding's values, its image's bytes, or None."""
    kind = k.WhichOneof("kind")
    if kind == "embedding":
        return _values(k.embedding)
    if kind == "image":
        return bytes(k.image)
    return None


class LatentServicer(pb_grpc.LatentServiceServicer):
    def __init__(self, core: LatentCore):
        self.core = core
        lim = core.limits
        self.limits = pb.Limits(**{f.name: getattr(lim, f.name) for f in fields(lim)})
        core.metrics.start_streams(["GenerateStream"])

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        return await self._generate(request, _deadline(context))

    async def GenerateStream(self, requests, context):
        """Each message answered as Generate would answer it, tagged with its index, in the
        order the answers are ready; a message's failure is its answer. At most
        ``max_stream_pending`` messages are in progress: past that, none is read until an
        answer has been sent, so a client that sends without reading is held back by HTTP/2
        flow control, not buffered here."""
        deadline = _deadline(context)
        pending = asyncio.Semaphore(self.core.limits.max_stream_pending)
        answers: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        counted = self.core.metrics.stream_messages

        async def answer(index: int, request) -> None:
            try:
                if not isinstance(request, pb.GenerateRequest):  # unparsed: oversized or malformed
                    raise InvalidInput(str(request))
                out = pb.GenerateStreamResponse(
                    index=index, response=await self._generate(request, deadline)
                )
                code = "OK"
            except VaeganError as e:
                code, message = e.grpc_code, str(e)
            except Exception:
                log.exception("unexpected error in GenerateStream message %d", index)
                code, message = "INTERNAL", "internal error; the gateway's log has the details"
            if code != "OK":
                number = getattr(grpc.StatusCode, code).value[0]
                error = pb.StreamError(code=number, message=message)
                out = pb.GenerateStreamResponse(index=index, error=error)
            counted.labels("GenerateStream", code).inc()
            answers.put_nowait(out)

        async def read() -> None:
            index = 0
            try:
                async for request in requests:
                    await pending.acquire()
                    task = asyncio.create_task(answer(index, request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    index += 1
                while tasks:
                    await asyncio.wait(set(tasks))
                answers.put_nowait(None)
            except BaseException as e:  # the stream broke, or the call ended: stop answering
                answers.put_nowait(e)
                raise

        reader = asyncio.create_task(read())
        try:
            while (got := await answers.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                yield got
                pending.release()
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _generate(self, request: pb.GenerateRequest, deadline) -> pb.GenerateResponse:
        codecs.output_options(request.output)  # before any work
        which = request.WhichOneof("source")
        version = request.model_version
        if which == "embeddings":
            items = [_values(e) for e in request.embeddings.items]
            out = await self.core.generate(version, deadline, embeddings=items)
        elif which == "sample":
            s = request.sample
            out = await self.core.generate(
                version,
                deadline,
                count=s.count,
                seed=s.seed,
                temperature=s.temperature if s.HasField("temperature") else 1.0,
                fitted=s.prior == pb.PRIOR_FITTED,
                refine_steps=s.refine_steps,
            )
        else:
            raise InvalidInput("source: set either embeddings or sample")
        response = pb.GenerateResponse(decoder_version=out.decoder_version)
        return await self._filled(response, out.pixels, out.z, request.output)

    async def _filled(self, response, pixels: np.ndarray, z: np.ndarray, output):
        """``response`` with its repeated ``images`` and ``embeddings`` written in place."""
        (await self.core.encode_images(pixels, output)).add_to(response.images)
        codecs.add_embeddings(response.embeddings, z)
        return response

    async def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        got = await self.core.encode(
            list(request.images),
            request.model_version,
            _deadline(context),
            sample_seed=request.seed if request.sample else None,
            reconstruction_error=request.reconstruction_error,
        )
        response = pb.EncodeResponse(
            encoder_version=got.encoder_version, decoder_version=got.decoder_version
        )
        for i, (m, lv) in enumerate(zip(got.mu, got.logvar, strict=True)):
            e = response.encodings.add()  # built in place, as codecs.add_embeddings does
            e.mu.values.extend(m.tolist())
            e.logvar.values.extend(lv.tolist())
            if got.z is not None:
                e.z.values.extend(got.z[i].tolist())
            if got.reconstruction_mse is not None:
                e.reconstruction_mse = float(got.reconstruction_mse[i])
        return response

    async def _path(self, request: pb.InterpolateRequest, deadline):
        method = request.method or pb.INTERPOLATION_METHOD_SPHERICAL
        if method not in METHODS:
            raise InvalidInput(f"method: unknown value {method}")
        return await self.core.path(
            [_key(k) for k in request.keyframes],
            request.steps,
            method == pb.INTERPOLATION_METHOD_SPHERICAL,
            request.model_version,
            deadline,
        )

    async def Interpolate(self, request: pb.InterpolateRequest, context) -> pb.InterpolateResponse:
        codecs.output_options(request.output)  # before any work
        deadline = _deadline(context)
        z, dmeta, encoder_version = await self._path(request, deadline)
        out = await self.core.decode(dmeta, z, deadline)
        response = pb.InterpolateResponse(
            encoder_version=encoder_version, decoder_version=dmeta.version
        )
        return await self._filled(response, out.pixels, z, request.output)

    async def InterpolateStream(self, request: pb.InterpolateRequest, context):
        codecs.output_options(request.output)  # before any work
        deadline = _deadline(context)
        z, dmeta, encoder_version = await self._path(request, deadline)
        # Small chunks: the first frames go out after one short decoder call.
        chunk = max(1, min(16, self.core.settings.max_batch_size))
        for lo in range(0, len(z), chunk):
            part = await self.core.decode(dmeta, z[lo : lo + chunk], deadline)
            images = await self.core.encode_images(part.pixels, request.output)
            for k, row in enumerate(part.z):
                yield pb.InterpolateFrame(
                    index=lo + k,
                    total=len(z),
                    image=images.image(k),
                    embedding=codecs.embedding(row),
                    encoder_version=encoder_version,
                    decoder_version=dmeta.version,
                )

    async def ListAttributes(
        self, request: pb.ListAttributesRequest, context
    ) -> pb.ListAttributesResponse:
        dmeta = await self.core.meta("decoder", request.model_version)
        found = self.core.directions(dmeta.version)
        return pb.ListAttributesResponse(
            decoder_version=dmeta.version,
            attributes=[
                pb.Attribute(
                    name=d.name,
                    kind=d.kind,
                    scale=d.scale,
                    counts=d.counts,
                    auc=d.auc,
                    explained_variance=d.explained_variance,
                )
                for d in sorted(found.values(), key=lambda d: (d.kind, d.name))
            ],
        )

    async def Edit(self, request: pb.EditRequest, context) -> pb.EditResponse:
        codecs.output_options(request.output)  # before any work
        sw = request.sweep
        out = await self.core.edit(
            _key(request.source) if request.HasField("source") else None,
            request.model_version,
            _deadline(context),
            weights=dict(request.weights),
            sweep=(sw.name, sw.low, sw.high, sw.steps) if request.HasField("sweep") else None,
        )
        response = pb.EditResponse(
            sweep_weights=out.weights or [],
            encoder_version=out.encoder_version,
            decoder_version=out.decoder_version,
        )
        return await self._filled(response, out.pixels, out.z, request.output)

    async def Analogy(self, request: pb.AnalogyRequest, context) -> pb.AnalogyResponse:
        codecs.output_options(request.output)  # before any work
        terms = {f: [_key(k) for k in getattr(request, f).items] for f in ("a", "b", "c")}
        out = await self.core.analogy(terms, request.model_version, _deadline(context))
        return pb.AnalogyResponse(
            image=(await self.core.encode_images(out.pixels, request.output)).image(0),
            embedding=codecs.embedding(out.z[0]),
            encoder_version=out.encoder_version,
            decoder_version=out.decoder_version,
        )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        enc, dec = await self.core.meta("encoder"), await self.core.meta("decoder")
        return pb.ModelInfo(
            latent_dim=dec.latent_dim,
            image_size=dec.image_size,
            crop_mode=enc.crop.mode,
            crop_fraction=enc.crop.fraction,
            backend=self.core.backend.kind,
            limits=self.limits,
            fitted_prior=self.core.prior(dec.version) is not None,
            encoder=pb.ModelVersionInfo(
                name=enc.name, version=enc.version, facts=_str_facts(enc.facts)
            ),
            decoder=pb.ModelVersionInfo(
                name=dec.name, version=dec.version, facts=_str_facts(dec.facts)
            ),
        )


def _str_facts(facts: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in facts.items()}
