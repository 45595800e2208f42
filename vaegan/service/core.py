"""The latent core, between the servicer and the backend: what each request means, on arrays.

Sampling the prior, encoding images (decoded off the event loop), paths through keyframes,
edits and analogies, each checked against the limits and the served model's facts; then the
models run through per-model batchers within the caller's deadline. Arrays in, arrays out:
messages are the servicer's business."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaegan import latent
from vaegan import repository as store
from vaegan.errors import DeadlineExceeded, FailedPrecondition, InvalidInput
from vaegan.latent import Direction
from vaegan.prior import MAX_REFINE_STEPS, MAX_TEMPERATURE, GaussianMixture
from vaegan.repository import ModelMeta
from vaegan.service import codecs
from vaegan.service.backends import Backend
from vaegan.service.batching import Batcher, FairShare
from vaegan.service.limits import Limits
from vaegan.service.metrics import Metrics
from vaegan.service.settings import Settings

# Bounds of what callers may ask for (documented in the proto): beyond them the answer is
# meaningless, and large enough values overflow float32 into Inf embeddings. The temperature's
# is the prior's (vaegan.prior.MAX_TEMPERATURE), which evaluation shares.
VERSION = re.compile(r"[1-9][0-9]{0,17}")  # Triton's versions are positive int64
MAX_WEIGHT = 100.0

# A keyframe, analogy term or edit source as the servicer hands it over: an embedding's
# values (validated here, against the model), an image's bytes, or None (neither was set).
Key = np.ndarray | bytes | None


@dataclass
class Encoded:
    mu: np.ndarray
    logvar: np.ndarray
    encoder_version: str
    z: np.ndarray | None = None  # mu + sigma * eps, when a sample was asked for
    reconstruction_mse: np.ndarray | None = None  # per image, when asked for
    decoder_version: str = ""


@dataclass
class Decoded:
    z: np.ndarray  # [n, latent]: what was decoded
    pixels: np.ndarray  # [n, size, size, 3] uint8
    decoder_version: str
    encoder_version: str = ""  # when an image was encoded on the way ("" otherwise)
    weights: list[float] | None = None  # a sweep's weights, one per column


@dataclass
class _Lane:
    """Image decoding for one size class: its share of the decode memory, its threads."""

    budget: FairShare
    pool: ThreadPoolExecutor


INLINE_IMAGES = 4  # PNG/JPEG responses of up to this many images are encoded on the loop


def _not_finite(field: str) -> InvalidInput:
    return InvalidInput(f"{field}.values: contains NaN or Inf")


class LatentCore:
    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics):
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self.limits = Limits.from_settings(settings)
        metrics.start_models(backend.names.values())
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._latent_files: dict[tuple[str, str], tuple[int | None, Any]] = {}
        # Decoding and encoding images are CPU work in C (Pillow releases the GIL): keep them
        # off the event loop, which must stay free for other calls and health checks. Large
        # images (over a sixteenth of the decode budget each) decode in a lane of their own
        # with three quarters of the budget, so however many are queued, an ordinary image
        # never waits behind them; in each lane, callers take turns.
        total, threads = settings.decode_memory_mb << 20, settings.decode_threads
        self._small_cost = total // 16
        self._small = _Lane(
            FairShare(total // 4, threads), ThreadPoolExecutor(threads, thread_name_prefix="decode")
        )
        self._large = _Lane(
            FairShare(total - total // 4, threads),
            ThreadPoolExecutor(threads, thread_name_prefix="decode-large"),
        )

    async def meta(self, role: str, version: str = "") -> ModelMeta:
        """The facts of ``role``'s model at ``version`` ("" = the pinned or newest). Only a
        canonical version number gets past here: it is later part of cache keys and file
        paths, so "01", " 1" or "1/../x" must not be read as anything."""
        if version and not VERSION.fullmatch(version):
            shown = version if len(version) <= 20 else version[:20] + "..."
            raise InvalidInput(
                f"model_version: {shown!r} is not a version number (1, 2, ...; empty for the newest)"
            )
        return await self.backend.meta(role, version)

    def directions(self, version: str) -> dict[str, Direction]:
        """The latent directions of a decoder version (re-read when the file changes)."""
        found = self._latent_file(version, store.directions_path, store.load_directions)
        return found or {}

    def prior(self, version: str) -> GaussianMixture | None:
        """The fitted prior of a decoder version, or None (re-read when the file changes)."""
        return self._latent_file(version, store.prior_path, store.load_prior)

    def _latent_file(self, version: str, where, load) -> Any:
        root = self.settings.directions_repository or self.settings.model_repository
        if not root:
            return None
        path = where(root, version)
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        key = (path.name, version)
        cached = self._latent_files.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, load(root, version) if stamp is not None else None)
            self._latent_files[key] = cached
        return cached[1]

    async def run(
        self, role: str, meta: ModelMeta, array: np.ndarray, deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Inputs for ``meta``'s model version -> its outputs, batched with other callers'
        (or alone, with batching off). The caller's remaining time is the backend timeout."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before inference")
        if not self.settings.batching:
            return (await self._call(role, meta, array, self._timeout(deadline)))[0]
        key = (role, meta.version)
        if key not in self._batchers:
            s = self.settings

            async def run_batch(batch: np.ndarray, timeout: float | None, role=role, meta=meta):
                return await self._call(role, meta, batch, timeout or s.backend_timeout_s)

            self._batchers[key] = Batcher(
                meta.name,
                run_batch,
                self.metrics,
                max_batch=s.max_batch_size,
                max_wait_s=s.max_wait_ms / 1e3,
                max_queue=s.max_queue,
                max_concurrent=s.max_concurrent_batches,
            )
        return (await self._batchers[key].submit(array, deadline))[0]

    async def _call(self, role: str, meta: ModelMeta, array: np.ndarray, timeout: float):
        self.metrics.model(meta.name).batch_size.observe(len(array))
        return await self.backend.infer(role, meta.version, array, timeout)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.settings.backend_timeout_s
        return max(0.001, deadline - time.monotonic())

    async def encode_images(self, pixels: np.ndarray, options) -> codecs.Encoded:
        """``pixels`` as response images: RAW and a few images on the event loop (a thread
        hop would cost more than the work), more in the worker pool, in chunks that the pool's
        threads share with decodes."""
        fmt, _ = codecs.output_options(options)
        if fmt == codecs.RAW or len(pixels) <= INLINE_IMAGES:
            return codecs.encode_images(pixels, options)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._small.pool, codecs.encode_images, pixels[i : i + 64], options
                )
                for i in range(0, len(pixels), 64)
            )
        )
        return parts[0]._replace(blobs=[blob for part in parts for blob in part.blobs])

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        await self.backend.close()
        for lane in (self._small, self._large):
            lane.pool.shutdown(wait=False, cancel_futures=True)

    # --- request semantics --------------------------------------------------------------

    async def generate(
        self,
        version: str,
        deadline: float | None,
        *,
        embeddings: list[np.ndarray] | None = None,
        count: int = 0,
        seed: int = 0,
        temperature: float = 1.0,
        fitted: bool = False,
        refine_steps: int = 0,
    ) -> Decoded:
        """Decode the given embeddings, or ``count`` draws from the prior (N(0, I), or the
        version's fitted mixture), scaled by ``temperature`` and refined ``refine_steps``
        times."""
        if not 0 <= refine_steps <= MAX_REFINE_STEPS:
            raise InvalidInput(
                f"sample.refine_steps: {refine_steps}; expected 0..{MAX_REFINE_STEPS}"
            )
        meta = await self.meta("decoder", version)
        if embeddings is not None:
            self.limits.items(len(embeddings), "embeddings.items")
            z = self.embeddings(embeddings, meta.latent_dim, "embeddings.items")
        else:
            self.limits.items(count, "sample.count")
            if not (np.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE):
                raise InvalidInput(
                    f"sample.temperature: {temperature:g}; expected 0 < temperature <= {MAX_TEMPERATURE:g}"
                )
            rng = np.random.default_rng(seed)
            if fitted:
                mixture = self.prior(meta.version)
                if mixture is None or mixture.latent_dim != meta.latent_dim:
                    raise FailedPrecondition(
                        f"sample.prior: decoder version {meta.version} has no fitted prior; "
                        "export it with 'vaegan export --data' or use PRIOR_STANDARD"
                    )
                z = mixture.sample(count, rng, temperature)
            else:
                z = (rng.standard_normal((count, meta.latent_dim)) * temperature).astype(np.float32)
            if refine_steps:
                z = await self.refine(meta, z, refine_steps, deadline)
        return await self.decode(meta, z, deadline)

    async def refine(
        self, dmeta: ModelMeta, z: np.ndarray, steps: int, deadline: float | None
    ) -> np.ndarray:
        """Draws moved toward the codes of real images: z <- mu(encode(decode(z))), ``steps``
        times, through the encoder of the decoder's own version (the pair trained together).
        The decoder paints well only near such codes; a draw from a prior lands anywhere."""
        emeta = await self.encoder_for(dmeta, dmeta.version)
        for _ in range(steps):
            pixels = (await self.decode(dmeta, z, deadline)).pixels
            z = (await self.run("encoder", emeta, pixels, deadline))["mu"]
        return z

    async def encode(
        self,
        images: list[bytes],
        version: str,
        deadline: float | None,
        *,
        sample_seed: int | None = None,
        reconstruction_error: bool = False,
    ) -> Encoded:
        self.limits.items(len(images), "images")
        meta = await self.meta("encoder", version)
        x = await self.images(images, meta, "images")
        out = await self.run("encoder", meta, x, deadline)
        got = Encoded(out["mu"], out["logvar"], meta.version)
        if sample_seed is not None:
            eps = np.random.default_rng(sample_seed).standard_normal(got.mu.shape)
            got.z = (got.mu + np.exp(0.5 * got.logvar) * eps.astype(np.float32)).astype(np.float32)
        if reconstruction_error:
            dmeta = await self.meta("decoder", version)
            recon = (await self.run("decoder", dmeta, got.mu, deadline))["image"]
            mse = ((recon.astype(np.float32) - x.astype(np.float32)) / 255.0) ** 2
            got.reconstruction_mse = mse.reshape(len(x), -1).mean(1)
            got.decoder_version = dmeta.version
        return got

    async def path(
        self, keys: list[Key], steps: int, spherical: bool, version: str, deadline: float | None
    ) -> tuple[np.ndarray, ModelMeta, str]:
        """The frames' z [frames, latent] through the keyframes, the decoder's facts, and the
        encoder version used for image keyframes. Nothing is decoded yet (streams chunk it)."""
        self.limits.path(len(keys), steps)
        dmeta = await self.meta("decoder", version)
        vectors, encoder_version = await self.vectors(keys, dmeta, version, deadline, "keyframes")
        return latent.path(vectors, steps, spherical), dmeta, encoder_version

    async def edit(
        self,
        source: Key,
        version: str,
        deadline: float | None,
        *,
        weights: dict[str, float] | None = None,
        sweep: tuple[str, float, float, int] | None = None,
    ) -> Decoded:
        """The source moved along named directions (``weights``), or swept along one
        (``sweep`` = name, low, high, steps)."""
        dmeta = await self.meta("decoder", version)
        found = self.directions(dmeta.version)
        if (sweep is None) == (not weights):
            raise InvalidInput("set either weights ({direction: weight}) or sweep, not both")
        if source is None:
            raise InvalidInput("source: an image or an embedding is required")
        for name, w in (weights or {}).items():
            if not (np.isfinite(w) and abs(w) <= MAX_WEIGHT):
                raise InvalidInput(
                    f"weights[{name!r}]: {w:g}; expected a number in -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}"
                )
            latent.lookup(found, name, dmeta.latent_dim)
        z, encoder_version = await self.vectors([source], dmeta, version, deadline, "source")
        swept: list[float] | None = None
        if sweep is not None:
            name, low, high, steps = sweep
            if not 2 <= steps <= self.limits.max_items:
                raise InvalidInput(f"sweep.steps: {steps}; expected 2..{self.limits.max_items}")
            if not all(np.isfinite(w) and abs(w) <= MAX_WEIGHT for w in (low, high)):
                raise InvalidInput(
                    f"sweep.low {low:g}, sweep.high {high:g}: expected numbers in "
                    f"-{MAX_WEIGHT:g}..{MAX_WEIGHT:g}"
                )
            swept = np.linspace(low, high, steps, dtype=np.float32).tolist()
            z = latent.sweep(z, latent.lookup(found, name, dmeta.latent_dim), np.asarray(swept))
        else:
            z = latent.edit(z, found, dict(weights or {}))
        out = await self.decode(dmeta, z, deadline)
        out.encoder_version, out.weights = encoder_version, swept or []
        return out

    async def analogy(
        self, terms: dict[str, list[Key]], version: str, deadline: float | None
    ) -> Decoded:
        """A - B + C, each term the mean of its items' codes."""
        dmeta = await self.meta("decoder", version)
        vectors, versions = [], set()
        for field, items in terms.items():
            self.limits.items(len(items), field)
            v, used = await self.vectors(items, dmeta, version, deadline, f"{field}.items")
            vectors.append(v)
            versions.add(used)
        out = await self.decode(dmeta, latent.analogy(*vectors)[None], deadline)
        out.encoder_version = max(versions)
        return out

    async def decode(self, meta: ModelMeta, z: np.ndarray, deadline: float | None) -> Decoded:
        """z -> pixels, one decoder call per ``max_batch_size`` rows, in parallel up to the
        queue's size. Every
        vector is checked here, derived or given: a NaN or Inf must fail its own request,
        never the batch it would share with other callers'."""
        if not np.isfinite(z).all():
            raise InvalidInput(
                "the embeddings this request derives are not finite (an overflow of its "
                "temperature, weights or inputs); use smaller values"
            )
        step = self.settings.max_batch_size
        if len(z) <= step:  # one chunk, the common case: no task of its own
            return Decoded(z, (await self.run("decoder", meta, z, deadline))["image"], meta.version)
        chunks = [z[i : i + step] for i in range(0, len(z), step)]
        # At most a queue's worth in flight at once: a long path must not overfill the queue
        # by itself (it would be refused after decoding part of it for nothing).
        window = max(1, self.settings.max_queue // step)
        images = []
        for lo in range(0, len(chunks), window):
            tasks = [
                asyncio.ensure_future(self.run("decoder", meta, c, deadline))
                for c in chunks[lo : lo + window]
            ]
            try:
                images += [out["image"] for out in await asyncio.gather(*tasks)]
            except BaseException:
                for t in tasks:  # one chunk failed or the call ended: drop its siblings
                    t.cancel()
                raise
        pixels = np.concatenate(images)
        return Decoded(z, pixels, meta.version)

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def embeddings(values: list[np.ndarray], latent_dim: int, field: str) -> np.ndarray:
        """Embedding values -> float32 [n, latent]; every bad value named by its field. The
        batch is checked for NaN/Inf once, not row by row: a call of many items pays it once."""
        out = np.empty((len(values), latent_dim), np.float32)
        for i, v in enumerate(values):
            out[i] = LatentCore._sized(v, latent_dim, f"{field}[{i}]")
        finite = np.isfinite(out).all(1)
        if not finite.all():
            raise _not_finite(f"{field}[{int(np.argmin(finite))}]")
        return out

    @staticmethod
    def embedding(v: np.ndarray, latent_dim: int, field: str) -> np.ndarray:
        LatentCore._sized(v, latent_dim, field)
        if not np.isfinite(v).all():
            raise _not_finite(field)
        return v

    @staticmethod
    def _sized(v: np.ndarray, latent_dim: int, field: str) -> np.ndarray:
        if len(v) != latent_dim:
            raise InvalidInput(
                f"{field}.values: length {len(v)}; this model's latent size is {latent_dim}"
            )
        return v

    async def images(self, blobs: list[bytes], meta: ModelMeta, field: str) -> np.ndarray:
        """Encoded images -> the encoder's uint8 input, decoded in the decode pool. Each image's
        header is read first: the request's pixels are checked against its budget, and each
        decode waits for its estimated memory in the process-wide decode budget."""
        sizes = []
        for i, data in enumerate(blobs):
            self.limits.image_bytes(len(data), f"{field}[{i}]")
            sizes.append(codecs.header_cost(data, meta.crop, f"{field}[{i}]", self.limits))
        self.limits.request_pixels(sum(px for px, _ in sizes), field)
        large = self._large.budget.total
        for i, (_, cost) in enumerate(sizes):
            if cost > large:
                raise InvalidInput(
                    f"{field}[{i}]: decoding it would take about {cost >> 20} MiB, more than "
                    f"this gateway's decode budget for one image, {large >> 20} MiB; "
                    "send a smaller image (the model needs "
                    f"{meta.crop.size}x{meta.crop.size})"
                )
        loop = asyncio.get_running_loop()

        async def decode(i: int, data: bytes) -> np.ndarray:
            cost = sizes[i][1]
            lane = self._small if cost <= self._small_cost else self._large
            async with lane.budget.hold(cost):
                return await loop.run_in_executor(
                    lane.pool,
                    codecs.decode_image,
                    data,
                    meta.crop,
                    f"{field}[{i}]",
                    self.limits.max_image_pixels,
                )

        return np.stack(await asyncio.gather(*(decode(i, d) for i, d in enumerate(blobs))))

    async def encoder_for(self, dmeta: ModelMeta, version: str) -> ModelMeta:
        """The encoder at ``version`` whose codes feed ``dmeta``'s decoder: refused unless
        the two agree on the latent size."""
        emeta = await self.meta("encoder", version)
        if emeta.latent_dim != dmeta.latent_dim:
            raise InvalidInput(
                f"encoder {emeta.name} v{emeta.version} and decoder v{dmeta.version} differ in latent size"
            )
        return emeta

    async def vectors(
        self, keys: list[Key], dmeta: ModelMeta, version: str, deadline, field: str
    ) -> tuple[np.ndarray, str]:
        """Keys (embeddings, or images encoded to their mu) -> [N, latent] and the encoder
        version used ("" when no image was given)."""
        vectors = np.zeros((len(keys), dmeta.latent_dim), np.float32)
        image_at = []
        for i, k in enumerate(keys):
            if isinstance(k, np.ndarray):
                vectors[i] = self.embedding(k, dmeta.latent_dim, f"{field}[{i}].embedding")
            elif isinstance(k, bytes):
                image_at.append(i)
            else:
                raise InvalidInput(f"{field}[{i}]: set either embedding or image")
        if not image_at:
            return vectors, ""
        emeta = await self.encoder_for(dmeta, version)
        x = await self.images([keys[i] for i in image_at], emeta, f"{field}.image")
        vectors[image_at] = (await self.run("encoder", emeta, x, deadline))["mu"]
        return vectors, emeta.version
