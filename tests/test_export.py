"""`vaegan export`: ONNX parity, the generated configs, versions, and refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import tree_digest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from vaegan.cli import main
from vaegan.errors import VaeganError
from vaegan.export.export import export
from vaegan.export.options import BatchingOptions, ExportOptions
from vaegan.export.writer import ModelSpec, config_text, model_config
from vaegan.training.checkpoint import load_model
from vaegan.training.model import from_pixels, to_pixels

TRITON_ENV = Path(sys.prefix + "-triton")
PY_OPTS = ExportOptions(
    backend="python", execution_env=str(TRITON_ENV) if TRITON_ENV.exists() else ""
)


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_onnx_graphs_match_pytorch_on_pixels_and_mu(tiny_checkpoint, tmp_path):
    export(tiny_checkpoint, tmp_path / "repo", ExportOptions(), log=lambda *_: None)
    model, _ = load_model(tiny_checkpoint)
    dec = ort.InferenceSession(str(tmp_path / "repo/vaegan_decoder/1/model.onnx"))
    enc = ort.InferenceSession(str(tmp_path / "repo/vaegan_encoder/1/model.onnx"))
    assert [i.shape for i in dec.get_inputs()] == [["batch", 16]]
    assert [o.shape for o in enc.get_outputs()] == [["batch", 16], ["batch", 16]]
    for b in (1, 5, 33):  # dynamic batch
        z = torch.randn(b, 16)
        with torch.no_grad():
            ref_px = to_pixels(model.decode(z)).numpy()
            ref_mu = model.encode(from_pixels(torch.from_numpy(ref_px)))[0].numpy()
        px = dec.run(None, {"z": z.numpy()})[0]
        assert px.dtype == np.uint8 and px.shape == (b, 32, 32, 3)
        assert np.abs(px.astype(int) - ref_px.astype(int)).max() <= 1
        mu, logvar = enc.run(None, {"image": ref_px})
        assert np.abs(mu - ref_mu).max() < 1e-4 and np.isfinite(logvar).all()


def test_fp16_export_is_checked_with_its_own_tolerance(tiny_checkpoint, tmp_path):
    result = export(
        tiny_checkpoint, tmp_path / "repo", ExportOptions(fp16=True), log=lambda *_: None
    )
    p = result["parity"]
    assert p["decoder_pixel_tolerance"] == 3 and p["decoder_max_pixel_diff"] <= 3
    facts = json.loads((tmp_path / "repo/vaegan_decoder/1/facts.json").read_text())
    assert facts["fp16"] is True


@pytest.mark.parametrize(
    "backend, platform, backend_field, kind, files",
    [
        (
            "onnxruntime",
            "",
            "onnxruntime",
            mc.ModelInstanceGroup.KIND_GPU,
            {"model.onnx", "facts.json"},
        ),
        (
            "python",
            "",
            "python",
            mc.ModelInstanceGroup.KIND_CPU,
            {"model.onnx", "model.py", "facts.json"},
        ),
    ],
)
def test_repository_configs_describe_interface_batching_and_facts(
    tiny_checkpoint, tmp_path, backend, platform, backend_field, kind, files
):
    opts = PY_OPTS if backend == "python" else ExportOptions(backend=backend)
    export(tiny_checkpoint, tmp_path / "repo", opts, log=lambda *_: None)
    for name, role in (("vaegan_encoder", "encoder"), ("vaegan_decoder", "decoder")):
        cfg = _parse(tmp_path / "repo" / name / "config.pbtxt")
        assert (cfg.name, cfg.backend, cfg.platform) == (name, backend_field, platform)
        assert cfg.max_batch_size == 64
        assert list(cfg.dynamic_batching.preferred_batch_size) == [16, 32, 64]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [g.kind for g in cfg.instance_group] == [kind]
        assert list(cfg.version_policy.specific.versions) == [1]
        io = {(t.name, t.data_type, tuple(t.dims)) for t in [*cfg.input, *cfg.output]}
        if role == "encoder":
            assert io == {
                ("image", mc.TYPE_UINT8, (32, 32, 3)),
                ("mu", mc.TYPE_FP32, (16,)),
                ("logvar", mc.TYPE_FP32, (16,)),
            }
        else:
            assert io == {("z", mc.TYPE_FP32, (16,)), ("image", mc.TYPE_UINT8, (32, 32, 3))}
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["vaegan.role"] == role and params["vaegan.latent_dim"] == "16"
        assert json.loads(params["vaegan.crop"]) == {"fraction": 0.75, "mode": "center", "size": 32}
        facts = json.loads(params["vaegan.version_facts"])["1"]
        assert (
            facts["checkpoint_step"] == 6
            and facts["dataset"] == "images"
            and len(facts["onnx_sha256"]) == 64
        )
        assert {p.name for p in (tmp_path / "repo" / name / "1").iterdir()} == files
        if backend == "python" and PY_OPTS.execution_env:
            assert params["EXECUTION_ENV_PATH"] == str(TRITON_ENV)


def test_tensorrt_config_uses_the_plan_platform_and_profile_batch():
    spec = ModelSpec(
        name="vaegan_decoder",
        role="decoder",
        image_size=64,
        latent_dim=100,
        crop={"mode": "center", "fraction": 0.75, "size": 64},
        backend="tensorrt",
        batching=BatchingOptions(max_batch_size=32, preferred_batch_sizes=(8, 32, 64)),
    )
    cfg = text_format.Parse(config_text(model_config(spec, [3], {"3": {}})), mc.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and cfg.backend == ""
    assert cfg.max_batch_size == 32 and list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert list(cfg.version_policy.specific.versions) == [3]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message shown where there is no GPU"
)
def test_tensorrt_export_without_a_gpu_says_what_it_needs(tiny_checkpoint, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tiny_checkpoint),
                "--repository",
                str(tmp_path / "r"),
                "--backend",
                "tensorrt",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("NVIDIA GPU" in err[0] or "CUDA GPU" in err[0])
    assert not (tmp_path / "r").exists()


def test_second_export_adds_version_two_and_keeps_version_one(tiny_checkpoint, tmp_path):
    repo = tmp_path / "repo"
    export(tiny_checkpoint, repo, ExportOptions(), log=lambda *_: None)
    export(tiny_checkpoint, repo, ExportOptions(), log=lambda *_: None)
    for name in ("vaegan_encoder", "vaegan_decoder"):
        assert sorted(p.name for p in (repo / name).iterdir()) == ["1", "2", "config.pbtxt"]
        cfg = _parse(repo / name / "config.pbtxt")
        assert list(cfg.version_policy.specific.versions) == [2]
        assert set(json.loads(cfg.parameters["vaegan.version_facts"].string_value)) == {"1", "2"}


def test_bad_exports_end_with_one_line_and_leave_the_repository_untouched(
    tiny_checkpoint, shapes_dataset, tmp_path, capsys
):
    from dataclasses import replace

    from vaegan.training.config import ModelConfig, TrainConfig
    from vaegan.training.train import train

    repo = tmp_path / "repo"
    export(tiny_checkpoint, repo, ExportOptions(), log=lambda *_: None)
    before = tree_digest(repo)
    other = tmp_path / "other"  # same data, another latent size
    train(
        replace(
            TrainConfig(model=ModelConfig(width=8, latent_dim=12)),
            steps=2,
            batch_size=16,
            eval_every=2,
            checkpoint_every=2,
            num_samples=4,
        ),
        shapes_dataset,
        other,
        progress=False,
    )
    (tmp_path / "not_a_checkpoint.pt").write_bytes(b"garbage")
    (tmp_path / "a_file").write_text("x")
    cases = [
        ([str(tmp_path / "missing.pt"), str(repo)], "does not exist"),
        ([str(tmp_path / "not_a_checkpoint.pt"), str(repo)], "not a readable vaegan checkpoint"),
        ([str(other / "checkpoints" / "last.pt"), str(repo)], "serves another shape"),
        (
            [str(tiny_checkpoint), str(tmp_path / "a_file" / "repo")],
            "cannot write the model repository",
        ),
    ]
    for (ck, rp), message in cases:
        assert main(["export", "--checkpoint", ck, "--repository", rp]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert tree_digest(repo) == before


def test_python_backend_refuses_an_environment_with_numpy_2(tiny_checkpoint, tmp_path):
    # Our own venv has numpy 2: Triton 2.51's stub would answer with empty tensors there.
    with pytest.raises(VaeganError, match="needs numpy<2"):
        export(
            tiny_checkpoint,
            tmp_path / "r",
            ExportOptions(backend="python", execution_env=sys.prefix),
            log=lambda *_: None,
        )
    assert not (tmp_path / "r").exists()
