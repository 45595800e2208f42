"""Thin servicers: request messages -> arrays -> ``Gateway`` -> response messages.
Errors are raised as the project's exceptions; the interceptor turns them into statuses."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vaegan import latent
from vaegan.errors import FailedPrecondition, InvalidInput
from vaegan.service import codecs
from vaegan.service.gateway import Gateway
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LatentServicer(pb_grpc.LatentServiceServicer):
    def __init__(self, gateway: Gateway):
        self.g = gateway
        s = gateway.settings
        self.limits = pb.Limits(
            max_items=s.max_items,
            max_image_bytes=s.max_image_bytes,
            max_image_pixels=s.max_image_pixels,
            max_steps=s.max_steps,
            max_frames=s.max_frames,
            max_message_bytes=s.max_message_bytes,
        )
        # Decoding is CPU work in C (Pillow releases the GIL): keep it off the event loop.
        self._decode_pool = ThreadPoolExecutor(s.decode_threads, thread_name_prefix="decode")

    async def _decode(self, images, meta, field: str) -> np.ndarray:
        s = self.g.settings
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(
                self._decode_pool,
                codecs.decode_image,
                data,
                meta.crop,
                f"{field}[{i}]",
                s.max_image_bytes,
                s.max_image_pixels,
            )
            for i, data in enumerate(images)
        ]
        return np.stack(await asyncio.gather(*jobs))

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        meta = await self.g.meta("decoder", request.model_version)
        which = request.WhichOneof("source")
        if which == "embeddings":
            z = codecs.embeddings(
                request.embeddings.items,
                meta.latent_dim,
                "embeddings.items",
                self.g.settings.max_items,
            )
        elif which == "sample":
            n = request.sample.count
            if not 1 <= n <= self.g.settings.max_items:
                raise InvalidInput(f"sample.count: {n}; expected 1..{self.g.settings.max_items}")
            temperature = (
                request.sample.temperature if request.sample.HasField("temperature") else 1.0
            )
            if not (np.isfinite(temperature) and temperature > 0):
                raise InvalidInput(f"sample.temperature: {temperature}; expected a positive number")
            rng = np.random.default_rng(request.sample.seed)
            if request.sample.prior == pb.PRIOR_FITTED:
                mixture = self.g.prior(meta.version)
                if mixture is None or mixture.latent_dim != meta.latent_dim:
                    raise FailedPrecondition(
                        f"sample.prior: decoder version {meta.version} has no fitted prior; "
                        "export it with 'vaegan export --data' or use PRIOR_STANDARD"
                    )
                z = mixture.sample(n, rng, temperature)
            else:
                z = (rng.standard_normal((n, meta.latent_dim)) * temperature).astype(np.float32)
        else:
            raise InvalidInput("source: set either embeddings or sample")
        pixels = (await self.g.run("decoder", meta, z, _deadline(context)))["image"]
        return pb.GenerateResponse(
            images=codecs.encode_images(pixels, request.output),
            embeddings=codecs.to_embeddings(z),
            decoder_version=meta.version,
        )

    async def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        if not request.images:
            raise InvalidInput("images: at least one image is required")
        self.g.check_items(len(request.images), "images")
        meta = await self.g.meta("encoder", request.model_version)
        deadline = _deadline(context)
        x = await self._decode(request.images, meta, "images")
        out = await self.g.run("encoder", meta, x, deadline)
        mu, logvar = out["mu"], out["logvar"]
        encodings = [
            pb.Encoding(mu=pb.Embedding(values=m.tolist()), logvar=pb.Embedding(values=lv.tolist()))
            for m, lv in zip(mu, logvar, strict=True)
        ]
        if request.sample:
            eps = np.random.default_rng(request.seed).standard_normal(mu.shape).astype(np.float32)
            for e, z in zip(encodings, mu + np.exp(0.5 * logvar) * eps, strict=True):
                e.z.values.extend(z.tolist())
        response = pb.EncodeResponse(encodings=encodings, encoder_version=meta.version)
        if request.reconstruction_error:
            dmeta = await self.g.meta("decoder", request.model_version)
            recon = (await self.g.run("decoder", dmeta, mu, deadline))["image"]
            mse = ((recon.astype(np.float32) - x.astype(np.float32)) / 255.0) ** 2
            # The response holds copies of `encodings`: set the field on its own messages.
            for e, v in zip(response.encodings, mse.reshape(len(x), -1).mean(1), strict=True):
                e.reconstruction_mse = float(v)
            response.decoder_version = dmeta.version
        return response

    async def Interpolate(self, request: pb.InterpolateRequest, context) -> pb.InterpolateResponse:
        deadline = _deadline(context)
        z, dmeta, encoder_version = await self._path(request, deadline)
        pixels = await self._decode_path(dmeta, z, deadline)
        return pb.InterpolateResponse(
            images=codecs.encode_images(pixels, request.output),
            embeddings=codecs.to_embeddings(z),
            encoder_version=encoder_version,
            decoder_version=dmeta.version,
        )

    async def InterpolateStream(self, request: pb.InterpolateRequest, context):
        deadline = _deadline(context)
        z, dmeta, encoder_version = await self._path(request, deadline)
        # Small chunks: the first frames go out after one short decoder call.
        chunk = max(1, min(16, self.g.settings.max_batch_size))
        for lo in range(0, len(z), chunk):
            part = z[lo : lo + chunk]
            pixels = (await self.g.run("decoder", dmeta, part, deadline))["image"]
            images = codecs.encode_images(pixels, request.output)
            for k, (image, emb) in enumerate(zip(images, codecs.to_embeddings(part), strict=True)):
                yield pb.InterpolateFrame(
                    index=lo + k,
                    total=len(z),
                    image=image,
                    embedding=emb,
                    encoder_version=encoder_version,
                    decoder_version=dmeta.version,
                )

    async def _path(self, request: pb.InterpolateRequest, deadline):
        """The validated request's path: z [frames, latent], decoder meta, encoder version."""
        s = self.g.settings
        keys = request.keyframes
        if len(keys) < 2:
            raise InvalidInput(f"keyframes: {len(keys)} given; at least 2 are needed")
        self.g.check_items(len(keys), "keyframes")
        if request.steps > s.max_steps:
            raise InvalidInput(f"steps: {request.steps}; at most {s.max_steps}")
        frames = (len(keys) - 1) * (request.steps + 1) + 1
        if frames > s.max_frames:
            raise InvalidInput(
                f"steps: the path would have {frames} frames; at most {s.max_frames}"
            )
        method = request.method or pb.INTERPOLATION_METHOD_SPHERICAL
        if method not in (pb.INTERPOLATION_METHOD_LINEAR, pb.INTERPOLATION_METHOD_SPHERICAL):
            raise InvalidInput(f"method: unknown value {method}")
        dmeta = await self.g.meta("decoder", request.model_version)
        vectors, encoder_version = await self._vectors(
            keys, dmeta, request.model_version, deadline, "keyframes"
        )
        z = codecs.path(
            vectors, request.steps, spherical=method == pb.INTERPOLATION_METHOD_SPHERICAL
        )
        return z, dmeta, encoder_version

    async def _vectors(
        self, keys, dmeta, version: str, deadline, field: str
    ) -> tuple[np.ndarray, str]:
        """Keyframes (embeddings, or images encoded to their mu) -> [N, latent] and the
        encoder version used ("" when no image was given)."""
        vectors = np.zeros((len(keys), dmeta.latent_dim), np.float32)
        image_at = []
        for i, k in enumerate(keys):
            kind = k.WhichOneof("kind")
            if kind == "embedding":
                vectors[i] = codecs.embedding(
                    k.embedding, dmeta.latent_dim, f"{field}[{i}].embedding"
                )
            elif kind == "image":
                image_at.append(i)
            else:
                raise InvalidInput(f"{field}[{i}]: set either embedding or image")
        if not image_at:
            return vectors, ""
        emeta = await self.g.meta("encoder", version)
        if emeta.latent_dim != dmeta.latent_dim:
            raise InvalidInput(
                f"encoder {emeta.name} v{emeta.version} and decoder v{dmeta.version} differ in latent size"
            )
        x = await self._decode([keys[i].image for i in image_at], emeta, f"{field}.image")
        vectors[image_at] = (await self.g.run("encoder", emeta, x, deadline))["mu"]
        return vectors, emeta.version

    async def ListAttributes(
        self, request: pb.ListAttributesRequest, context
    ) -> pb.ListAttributesResponse:
        dmeta = await self.g.meta("decoder", request.model_version)
        found = self.g.directions(dmeta.version)
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
        s = self.g.settings
        deadline = _deadline(context)
        dmeta = await self.g.meta("decoder", request.model_version)
        found = self.g.directions(dmeta.version)
        sweeping = request.HasField("sweep")
        if sweeping == bool(request.weights):
            raise InvalidInput("set either weights ({direction: weight}) or sweep, not both")
        if not request.HasField("source"):
            raise InvalidInput("source: an image or an embedding is required")
        for name, w in request.weights.items():
            if not np.isfinite(w):
                raise InvalidInput(f"weights[{name!r}]: {w} is not a finite number")
            latent.lookup(found, name, dmeta.latent_dim)
        z, encoder_version = await self._vectors(
            [request.source], dmeta, request.model_version, deadline, "source"
        )
        weights: list[float] = []
        if sweeping:
            sw = request.sweep
            if not 2 <= sw.steps <= s.max_items:
                raise InvalidInput(f"sweep.steps: {sw.steps}; expected 2..{s.max_items}")
            if not (np.isfinite(sw.low) and np.isfinite(sw.high)):
                raise InvalidInput("sweep.low and sweep.high must be finite numbers")
            weights = np.linspace(sw.low, sw.high, sw.steps, dtype=np.float32).tolist()
            d = latent.lookup(found, sw.name, dmeta.latent_dim)
            z = latent.sweep(z, d, np.asarray(weights))
        else:
            z = latent.edit(z, found, dict(request.weights))
        pixels = (await self.g.run("decoder", dmeta, z, deadline))["image"]
        return pb.EditResponse(
            images=codecs.encode_images(pixels, request.output),
            embeddings=codecs.to_embeddings(z),
            sweep_weights=weights,
            encoder_version=encoder_version,
            decoder_version=dmeta.version,
        )

    async def Analogy(self, request: pb.AnalogyRequest, context) -> pb.AnalogyResponse:
        deadline = _deadline(context)
        dmeta = await self.g.meta("decoder", request.model_version)
        terms, versions = [], set()
        for field in ("a", "b", "c"):
            items = getattr(request, field).items
            if not items:
                raise InvalidInput(f"{field}: at least one image or embedding is required")
            self.g.check_items(len(items), f"{field}.items")
            vectors, version = await self._vectors(
                items, dmeta, request.model_version, deadline, f"{field}.items"
            )
            terms.append(vectors)
            versions.add(version)
        z = latent.analogy(*terms)[None]
        pixels = (await self.g.run("decoder", dmeta, z, deadline))["image"]
        return pb.AnalogyResponse(
            image=codecs.encode_images(pixels, request.output)[0],
            embedding=codecs.to_embeddings(z)[0],
            encoder_version=max(versions),
            decoder_version=dmeta.version,
        )

    async def _decode_path(self, meta, z: np.ndarray, deadline) -> np.ndarray:
        # One decoder call per max_batch_size frames (a single call for paths that fit).
        step = self.g.settings.max_batch_size
        parts = [
            self.g.run("decoder", meta, z[i : i + step], deadline) for i in range(0, len(z), step)
        ]
        return np.concatenate([p["image"] for p in await asyncio.gather(*parts)])

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        enc, dec = await self.g.meta("encoder"), await self.g.meta("decoder")
        return pb.ModelInfo(
            latent_dim=dec.latent_dim,
            image_size=dec.image_size,
            crop_mode=enc.crop.mode,
            crop_fraction=enc.crop.fraction,
            backend=self.g.backend.kind,
            limits=self.limits,
            fitted_prior=self.g.prior(dec.version) is not None,
            encoder=pb.ModelVersionInfo(
                name=enc.name, version=enc.version, facts=_str_facts(enc.facts)
            ),
            decoder=pb.ModelVersionInfo(
                name=dec.name, version=dec.version, facts=_str_facts(dec.facts)
            ),
        )

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)


def _str_facts(facts: dict) -> dict[str, str]:
    import json

    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in facts.items()}
