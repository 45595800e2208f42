"""``vaegan export``: a training checkpoint -> encoder and decoder in a Triton repository.

Order of work: read and check everything (checkpoint, repository, existing configs), build
and check the graphs, and only then write. A failure before the write step leaves the
repository exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vaegan import repository as store
from vaegan.errors import VaeganError
from vaegan.export import writer
from vaegan.export.onnx_graphs import export_graphs
from vaegan.export.options import BACKENDS, ExportOptions
from vaegan.export.tensorrt import build_plan, require_tensorrt
from vaegan.export.writer import ModelSpec
from vaegan.training import checkpoint as ckpt
from vaegan.training.model import VAEGAN

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")


def default_execution_env() -> str:
    """$VAEGAN_TRITON_ENV, else ``<this env>-triton`` (``make install`` creates .venv-triton),
    else this environment."""
    if os.environ.get("VAEGAN_TRITON_ENV"):
        return os.environ["VAEGAN_TRITON_ENV"]
    sibling = sys.prefix + "-triton"
    return sibling if Path(sibling, "bin", "python").exists() else sys.prefix


def check_execution_env(path: str) -> None:
    """The python backend runs model.py in this environment: it needs onnxruntime, the
    stub's Python version, and numpy < 2 (Triton 2.51's stub silently returns empty
    output tensors from a numpy 2 environment)."""
    python = Path(path) / "bin" / "python"
    if not python.exists():
        raise VaeganError(f"--execution-env {path} is not a Python environment (no bin/python)")
    probe = (
        "import sys, numpy, onnxruntime; print(numpy.__version__, '%d.%d' % sys.version_info[:2])"
    )
    r = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise VaeganError(
            f"--execution-env {path} lacks numpy or onnxruntime; create one with 'make triton-env'"
        )
    numpy_version, py = r.stdout.split()
    here = "{}.{}".format(*sys.version_info[:2])
    if int(numpy_version.split(".")[0]) >= 2:
        raise VaeganError(
            f"--execution-env {path} has numpy {numpy_version}; Triton's python backend needs numpy<2 "
            "there ('make triton-env' creates .venv-triton), or pass --execution-env ''"
            " for a Triton image that brings its own"
        )
    if py != here:
        raise VaeganError(
            f"--execution-env {path} is Python {py}; the local Triton stub is for Python {here}"
        )


def training_codes(model: VAEGAN, data: str | Path, limit: int):
    """The encoder's mu of (a seeded sample of at most ``limit``) prepared training images."""
    import numpy as np

    from vaegan.training.data import load_dataset

    ds = load_dataset(data)
    idx = np.sort(np.random.default_rng(0).permutation(len(ds.train))[:limit])
    return _codes(model, (ds.center_crop(int(i)) for i in idx))


def _codes(model: VAEGAN, images):
    """The encoder's mu of uint8 HWC images (any iterable), 256 at a time."""
    import itertools

    import numpy as np
    import torch

    from vaegan.training.model import from_pixels

    images, mus = iter(images), []
    with torch.no_grad():
        while chunk := list(itertools.islice(images, 256)):
            x = from_pixels(torch.from_numpy(np.stack(chunk)))
            mus.append(model.encode(x)[0].numpy())
    return np.concatenate(mus) if mus else np.zeros((0, model.cfg.latent_dim), np.float32)


#: Validation images needed before export judges how near the fitted prior draws to the
#: training codes: a median over fewer says little.
MIN_UNSEEN = 20
#: Export warns below this nearest-code ratio, not below 1: over ~150 validation codes the
#: ratio moves a few hundredths between runs, and the default prior sits near 1 on the demo.
WARN_RATIO = 0.95


def _latent_facts(model: VAEGAN, opts: ExportOptions, log):
    """pc1..pcK of the training codes, and the fitted prior over them."""
    import numpy as np

    from vaegan import prior
    from vaegan.latent import principal_directions
    from vaegan.training.data import load_dataset

    mu = training_codes(model, opts.data, opts.pca_images)
    pcs = principal_directions(mu, opts.principal_directions)
    shares = ", ".join(f"{d.name} {d.explained_variance:.1%}" for d in pcs)
    log(f"principal directions of {len(mu)} training encodings: {shares}")
    mixture = prior.fit(mu, opts.prior_components) if opts.prior_components else None
    if mixture is None:
        return pcs, mixture
    log(f"fitted prior: {len(mixture.weights)}-component Gaussian mixture over {len(mu)} codes")
    val = load_dataset(opts.data).val_images()
    if len(val) < MIN_UNSEEN:
        return pcs, mixture
    draws = mixture.sample(1000, np.random.default_rng(0))
    ratio = prior.nearest_code_ratio(draws, mu, _codes(model, val))
    log(
        f"fitted prior: its draws land {ratio:.2f}x as far from the nearest training code as "
        f"the {len(val)} validation images' codes do"
    )
    if ratio < WARN_RATIO:
        log(
            "warning: the fitted prior's draws sit nearer the training images than unseen "
            "images do, so PRIOR_FITTED will redraw training images; fewer "
            "--prior-components keep its samples new"
        )
    return pcs, mixture


def export(
    checkpoint: str | Path, repository: str | Path, opts: ExportOptions, log=print
) -> dict[str, Any]:
    if opts.backend not in BACKENDS:
        raise VaeganError(f"--backend must be one of {', '.join(BACKENDS)}, got {opts.backend!r}")
    if opts.encoder_name == opts.decoder_name:
        raise VaeganError("encoder and decoder need different model names")
    if opts.backend == "tensorrt":
        require_tensorrt()  # fail before any work where there is no GPU
    repository = Path(repository)
    model, source = ckpt.load_model(checkpoint)
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    checkpoint_digest = digest.hexdigest()
    env: str | None = None  # the python backend's EXECUTION_ENV_PATH ('' = leave it out)
    if opts.backend == "python":
        env = opts.execution_env if opts.execution_env is not None else default_execution_env()
        if env:
            check_execution_env(env)
    writer.check_writable(repository)
    cfg = model.cfg

    t0 = time.time()
    log(
        f"exporting {checkpoint} (step {source.step}, latent {cfg.latent_dim}, {cfg.image_size}px) to ONNX"
        + (" in fp16" if opts.fp16 else "")
    )
    graphs = export_graphs(model, fp16=opts.fp16)
    p = graphs.parity
    log(
        f"parity vs PyTorch on batches {p['batches_checked']}: decoder max pixel diff {p['decoder_max_pixel_diff']} "
        f"(limit {p['decoder_pixel_tolerance']}), encoder max |mu diff| {p['encoder_max_mu_diff']:.2e} "
        f"(limit {p['encoder_mu_tolerance']:.1e}), max |logvar diff| {p['encoder_max_logvar_diff']:.2e}"
    )

    pcs, mixture = _latent_facts(model, opts, log) if opts.data else ([], None)
    if not opts.data:
        log(
            "no --data: principal directions and the fitted prior not computed "
            "(sliders come only from attributes; Generate samples only N(0, I))"
        )

    plans = []
    for role, name, onnx_bytes in (
        ("encoder", opts.encoder_name, graphs.encoder),
        ("decoder", opts.decoder_name, graphs.decoder),
    ):
        spec = ModelSpec(
            name=name,
            role=role,
            image_size=cfg.image_size,
            latent_dim=cfg.latent_dim,
            crop=source.crop,
            backend=opts.backend,
            batching=opts.batching,
            execution_env=env or None,
            intra_op_threads=opts.intra_op_threads,
        )
        if opts.backend == "tensorrt":
            batching = replace(opts.batching, max_batch_size=opts.trt_profile.max_batch)
            spec = replace(spec, batching=batching)
            in_name, _, in_dims = writer.io_tensors(spec)[0][0]
            files = {
                "model.plan": build_plan(onnx_bytes, in_name, in_dims, opts.trt_profile, opts.fp16)
            }
        elif opts.backend == "python":
            files = {"model.onnx": onnx_bytes, "model.py": PYTHON_MODEL.read_bytes()}
        else:
            files = {"model.onnx": onnx_bytes}
        facts = {
            "role": role,
            # The file's name and digest, not its path: facts are served to callers
            # (GetModelInfo), and the exporting machine's paths are nobody's business.
            "checkpoint": Path(checkpoint).name,
            "checkpoint_sha256": checkpoint_digest,
            "checkpoint_step": source.step,
            "dataset": source.dataset.get("name"),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "backend": opts.backend,
            "fp16": opts.fp16,
            "latent_dim": cfg.latent_dim,
            "image_size": cfg.image_size,
            "crop": source.crop,
            "val_mse": source.val_mse,
            "parity": graphs.parity,
        }
        plans.append(writer.plan_model(repository, spec, files, facts))
    if (pcs or mixture) and plans[0].version == plans[1].version:  # with the version, atomically
        identity = store.model_identity(
            str(plans[1].version), plans[0].facts["onnx_sha256"], plans[1].facts["onnx_sha256"]
        )
        plans[1].files[store.DIRECTIONS_FILE] = store.directions_bytes(
            identity, {d.name: d for d in pcs}
        )
        if mixture is not None:
            plans[1].files[store.PRIOR_FILE] = store.prior_bytes(identity, mixture)
    elif pcs or mixture:
        log("encoder and decoder versions differ: principal directions and prior not stored")
    written = [writer.write_model(plan) for plan in plans]
    for path in written:
        log(f"wrote {path}")
    log(
        f"done in {time.time() - t0:.1f}s: {repository} ({opts.backend}, version {plans[0].version}/{plans[1].version})"
    )
    return {
        "versions": {p.spec.name: p.version for p in plans},
        "parity": graphs.parity,
        "paths": written,
    }
