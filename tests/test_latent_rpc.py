"""ListAttributes, Edit and Analogy over real gRPC, through the embedded backend and the
real local Triton, on the tiny model with a stored attribute and principal directions."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from gateway_harness import GatewayThread

from vaegan import repository as store
from vaegan.export.local_triton import LocalTriton
from vaegan.service.settings import Settings
from vaegan.v1 import vaegan_pb2 as pb
from vaegan.v1 import vaegan_pb2_grpc as pb_grpc

RAW = pb.OutputOptions(format=pb.IMAGE_FORMAT_RAW)


@pytest.fixture(scope="module", params=["embedded", "triton"])
def stub(request, latent_repo):
    if request.param == "embedded":
        settings = Settings(model_repository=str(latent_repo))
        with GatewayThread(settings) as gw:
            yield pb_grpc.LatentServiceStub(grpc.insecure_channel(gw.target))
    else:
        with LocalTriton(latent_repo) as triton:
            settings = Settings(triton_url=triton.grpc_url, directions_repository=str(latent_repo))
            with GatewayThread(settings) as gw:
                yield pb_grpc.LatentServiceStub(grpc.insecure_channel(gw.target))


def _emb(v) -> pb.Keyframe:
    return pb.Keyframe(embedding=pb.Embedding(values=list(map(float, v))))


def _pixels(image: pb.Image) -> np.ndarray:
    return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 3)


def test_list_attributes_shows_attributes_and_principal_directions(stub):
    r = stub.ListAttributes(pb.ListAttributesRequest(), timeout=30)
    by_name = {a.name: a for a in r.attributes}
    assert set(by_name) == {"round", "pc1", "pc2", "pc3"} and r.decoder_version == "1"
    assert by_name["round"].kind == "attribute" and by_name["round"].HasField("auc")
    assert dict(by_name["round"].counts) == {"with": 20, "without": 20}
    assert by_name["pc1"].kind == "principal" and not by_name["pc1"].HasField("auc")


def test_edit_moves_the_embedding_by_weight_times_scale_and_decodes_it(stub, latent_repo):
    d = store.load_directions(latent_repo, "1")["round"]
    z0 = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    r = stub.Edit(pb.EditRequest(source=_emb(z0), weights={"round": 1.5}, output=RAW), timeout=30)
    expected = z0 + 1.5 * d.scale * d.array()
    assert np.allclose(r.embeddings[0].values, expected, atol=1e-5)
    same = stub.Generate(
        pb.GenerateRequest(embeddings=pb.EmbeddingList(items=[r.embeddings[0]]), output=RAW)
    )
    assert np.array_equal(_pixels(r.images[0]), _pixels(same.images[0]))


def test_edit_of_an_image_starts_from_its_encoding(stub, latent_repo):
    image = next((latent_repo.parent / "squares").iterdir()).read_bytes()
    mu = stub.Encode(pb.EncodeRequest(images=[image]), timeout=30).encodings[0].mu.values
    r = stub.Edit(pb.EditRequest(source=pb.Keyframe(image=image), weights={"pc1": 0}), timeout=30)
    assert np.allclose(r.embeddings[0].values, mu, atol=1e-6) and r.encoder_version == "1"


def test_an_edit_sweep_returns_one_image_per_weight(stub, latent_repo):
    d = store.load_directions(latent_repo, "1")["pc2"]
    sweep = pb.Sweep(name="pc2", low=-2, high=2, steps=5)
    r = stub.Edit(pb.EditRequest(source=_emb(np.zeros(16)), sweep=sweep, output=RAW), timeout=30)
    assert list(r.sweep_weights) == [-2, -1, 0, 1, 2] and len(r.images) == 5
    z = np.array([e.values for e in r.embeddings])
    assert np.allclose(z, np.outer([-2, -1, 0, 1, 2], d.scale * d.array()), atol=1e-5)


def test_fitted_prior_draws_come_from_the_stored_mixture_and_repeat_with_the_seed(
    stub, latent_repo
):
    mixture = store.load_prior(latent_repo, "1")
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).fitted_prior
    sample = pb.Sample(count=6, seed=11, temperature=0.5, prior=pb.PRIOR_FITTED)
    r = stub.Generate(pb.GenerateRequest(sample=sample, output=RAW), timeout=30)
    z = np.array([e.values for e in r.embeddings])
    expected = mixture.sample(6, np.random.default_rng(11), 0.5)
    assert np.allclose(z, expected, atol=1e-6) and len(r.images) == 6
    again = stub.Generate(pb.GenerateRequest(sample=sample, output=RAW), timeout=30)
    assert [i.data for i in again.images] == [i.data for i in r.images]
    standard = pb.Sample(count=6, seed=11, temperature=0.5)  # unspecified = N(0, I)
    plain = stub.Generate(pb.GenerateRequest(sample=standard, output=RAW), timeout=30)
    z0 = np.random.default_rng(11).standard_normal((6, 16)) * 0.5
    assert np.allclose([e.values for e in plain.embeddings], z0, atol=1e-6)


@pytest.mark.parametrize("prior", [pb.PRIOR_STANDARD, pb.PRIOR_FITTED])
def test_refined_draws_are_the_codes_of_their_own_decoded_images(stub, prior):
    # Done by hand through the public calls: draw, then twice encode the image and decode
    # the code. The refined call must land on the same vectors and images.
    sample = pb.Sample(count=5, seed=4, prior=prior)
    images = stub.Generate(pb.GenerateRequest(sample=sample), timeout=30).images
    for _ in range(2):
        mu = stub.Encode(pb.EncodeRequest(images=[i.data for i in images]), timeout=30)
        items = [pb.Embedding(values=e.mu.values) for e in mu.encodings]
        by_hand = stub.Generate(
            pb.GenerateRequest(embeddings=pb.EmbeddingList(items=items)), timeout=30
        )
        images = by_hand.images
    sample.refine_steps = 2
    refined = stub.Generate(pb.GenerateRequest(sample=sample), timeout=30)
    got, want = ([e.values for e in r.embeddings] for r in (refined, by_hand))
    assert np.allclose(got, want, atol=1e-4)
    assert [i.data for i in refined.images] == [i.data for i in by_hand.images]
    drawn = stub.Generate(pb.GenerateRequest(sample=pb.Sample(count=5, seed=4, prior=prior)))
    assert not np.allclose(got, [e.values for e in drawn.embeddings], atol=1e-2)


def test_analogy_is_a_minus_b_plus_c_with_terms_averaged(stub):
    rng = np.random.default_rng(2)
    a, b, c1, c2 = rng.standard_normal((4, 16)).astype(np.float32)
    req = pb.AnalogyRequest(
        a=pb.Term(items=[_emb(a)]),
        b=pb.Term(items=[_emb(b)]),
        c=pb.Term(items=[_emb(c1), _emb(c2)]),
        output=RAW,
    )
    r = stub.Analogy(req, timeout=30)
    assert np.allclose(r.embedding.values, a - b + (c1 + c2) / 2, atol=1e-5)
    assert _pixels(r.image).shape == (32, 32, 3) and r.encoder_version == ""


BAD = {
    "unknown_attribute": (
        lambda s: s.Edit(pb.EditRequest(source=_emb(np.zeros(16)), weights={"smiling": 1})),
        grpc.StatusCode.NOT_FOUND,
        "no direction 'smiling'",
    ),
    "weights_and_sweep": (
        lambda s: s.Edit(
            pb.EditRequest(
                source=_emb(np.zeros(16)), weights={"pc1": 1}, sweep=pb.Sweep(name="pc1", steps=3)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "either weights",
    ),
    "one_step_sweep": (
        lambda s: s.Edit(
            pb.EditRequest(source=_emb(np.zeros(16)), sweep=pb.Sweep(name="pc1", steps=1))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sweep.steps: 1",
    ),
    "nan_weight": (
        lambda s: s.Edit(pb.EditRequest(source=_emb(np.zeros(16)), weights={"pc1": float("nan")})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected a number in -100..100",
    ),
    "weight_that_would_overflow": (  # 1e38 x scale is Inf in float32
        lambda s: s.Edit(pb.EditRequest(source=_emb(np.zeros(16)), weights={"dim0": 1e38})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "weights['dim0']: 1e+38; expected a number in -100..100",
    ),
    "sweep_that_would_overflow": (
        lambda s: s.Edit(
            pb.EditRequest(
                source=_emb(np.zeros(16)),
                sweep=pb.Sweep(name="dim0", low=-3e38, high=3e38, steps=3),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected numbers in -100..100",
    ),
    "analogy_that_overflows": (  # every input finite, A - B + C is not
        lambda s: s.Analogy(
            pb.AnalogyRequest(
                a=pb.Term(items=[_emb(np.full(16, 3e38))]),
                b=pb.Term(items=[_emb(np.full(16, -3e38))]),
                c=pb.Term(items=[_emb(np.zeros(16))]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "are not finite",
    ),
    "axis_name_of_5000_digits": (  # NOT_FOUND, not INTERNAL from int()
        lambda s: s.Edit(
            pb.EditRequest(source=_emb(np.zeros(16)), weights={"dim" + "9" * 5000: 1})
        ),
        grpc.StatusCode.NOT_FOUND,
        "no direction 'dim99999",
    ),
    "no_source": (
        lambda s: s.Edit(pb.EditRequest(weights={"pc1": 1})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source",
    ),
    "empty_term": (
        lambda s: s.Analogy(pb.AnalogyRequest(a=pb.Term(items=[_emb(np.zeros(16))]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "b: at least one",
    ),
    "short_embedding": (
        lambda s: s.Analogy(
            pb.AnalogyRequest(**{t: pb.Term(items=[_emb(np.zeros(8))]) for t in "abc"})
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a.items[0].embedding",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_latent_request_gets_its_status_and_the_next_call_succeeds(stub, case):
    call, code, message = BAD[case]
    with pytest.raises(grpc.RpcError) as e:
        call(stub)
    assert e.value.code() == code and message in e.value.details(), e.value.details()
    assert stub.ListAttributes(pb.ListAttributesRequest(), timeout=30).attributes


def test_directions_of_another_model_version_are_refused_not_used(stub, latent_repo):
    path = latent_repo / "vaegan_decoder" / "1" / store.DIRECTIONS_FILE
    original = path.read_text()
    data = json.loads(original)
    data["model"]["vaegan_decoder_onnx_sha256"] = "0" * 64  # as if copied from another export
    path.write_text(json.dumps(data))
    try:
        with pytest.raises(grpc.RpcError) as e:
            stub.Edit(pb.EditRequest(source=_emb(np.zeros(16)), weights={"round": 1}), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "was written for other graphs" in e.value.details()
    finally:
        path.write_text(original)
    r = stub.Edit(pb.EditRequest(source=_emb(np.zeros(16)), weights={"round": 1}), timeout=30)
    assert len(r.images) == 1


def test_a_stored_direction_named_like_markup_is_refused_and_its_file_not_echoed(stub, latent_repo):
    path = latent_repo / "vaegan_decoder" / "1" / store.DIRECTIONS_FILE
    original = path.read_text()
    data = json.loads(original)
    payload = "<script>" + "x" * 500 + "</script>"  # as a person editing the file might
    data["directions"][payload] = {**data["directions"]["round"], "name": payload}
    path.write_text(json.dumps(data))
    try:
        with pytest.raises(grpc.RpcError) as e:
            stub.ListAttributes(pb.ListAttributesRequest(), timeout=30)
        details = e.value.details()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
        assert "directions.json of version 1" in details and "a letter, then letters" in details
        assert str(latent_repo) not in details and len(details) < 400  # no path, bounded echo
    finally:
        path.write_text(original)
    assert stub.ListAttributes(pb.ListAttributesRequest(), timeout=30).attributes


def test_streamed_interpolation_sends_the_same_frames_in_order(stub):
    rng = np.random.default_rng(4)
    keys = [_emb(v) for v in rng.standard_normal((3, 16))]
    req = pb.InterpolateRequest(keyframes=keys, steps=9, output=RAW)
    whole = stub.Interpolate(req, timeout=30)
    frames = list(stub.InterpolateStream(req, timeout=30))
    assert [f.index for f in frames] == list(range(21)) and {f.total for f in frames} == {21}
    for f, image, emb in zip(frames, whole.images, whole.embeddings, strict=True):
        assert np.array_equal(_pixels(f.image), _pixels(image))
        assert np.allclose(f.embedding.values, emb.values)


def test_a_bad_streamed_interpolation_fails_before_any_frame(stub):
    req = pb.InterpolateRequest(keyframes=[_emb(np.zeros(16))] * 2, steps=10_000)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.InterpolateStream(req, timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "steps" in e.value.details()


def test_interpolate_cli_writes_an_animated_gif_from_the_stream(latent_repo, tmp_path, capsys):
    from PIL import Image, ImageSequence

    from vaegan.cli import main

    ends = [tmp_path / "a.npy", tmp_path / "b.npy"]
    np.save(ends[0], np.full(16, -3, np.float32))
    np.save(ends[1], np.full(16, 3, np.float32))
    with GatewayThread(Settings(model_repository=str(latent_repo))) as gw:
        out = tmp_path / "walk.gif"
        args = ["interpolate", *map(str, ends), "--steps", "6", "--out", str(out), "--bounce"]
        assert main([*args, "--fps", "10", "--target", gw.target, "--quiet"]) == 0
    assert "wrote 14 frames" in capsys.readouterr().out  # 8 frames, then back without repeats
    gif = Image.open(out)
    assert gif.format == "GIF" and gif.size == (32, 32) and gif.n_frames > 1
    # GIF merges identical neighbouring frames into one longer frame: the time adds up.
    assert sum(f.info["duration"] for f in ImageSequence.Iterator(gif)) == 14 * 100
