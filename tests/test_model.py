"""The networks and the gradient rules of one VAE-GAN step."""

from __future__ import annotations

import pytest
import torch

from vaegan.errors import VaeganError
from vaegan.training.config import ModelConfig, TrainConfig
from vaegan.training.distributed import SINGLE
from vaegan.training.model import VAEGAN, from_pixels, to_pixels
from vaegan.training.step import Nets, Optimizers, train_step


@pytest.mark.parametrize("size, width, latent", [(64, 8, 100), (32, 4, 16), (128, 4, 8)])
def test_networks_map_images_and_latents_with_the_configured_shapes(size, width, latent):
    model = VAEGAN(ModelConfig(image_size=size, width=width, latent_dim=latent))
    x = torch.randn(3, 3, size, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, latent)
    img = model.decode(mu)
    assert img.shape == (3, 3, size, size) and img.abs().max() <= 1
    logit, features = model.discriminator(x)
    assert logit.shape == (3,)
    assert features.shape == (3, 4 * width, size // 8, size // 8)  # block 3 of the trunk


def test_the_resize_decoder_has_no_transposed_convolution_after_the_first_block():
    # Transposed convs with stride 2 overlap unevenly: the checkerboard of every old grid.
    resize = VAEGAN(ModelConfig(image_size=32, width=4, latent_dim=8)).decoder
    convt = [m for m in resize.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convt) == 1 and convt[0].stride == (1, 1)  # latent 1x1 -> 4x4 only
    legacy = VAEGAN(ModelConfig(image_size=32, width=4, latent_dim=8, upsample="transpose"))
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in legacy.decoder.modules()) == 4


@pytest.mark.parametrize("d_norm", ["batch", "spectral"])
def test_the_layers_between_4x4_and_1x1_compute_the_convolutions_they_stand_for(d_norm):
    # Computed as matrix products (torch.compile's CUDA backward fails on the convolutions),
    # they must still be those convolutions: same outputs, any memory format.
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = VAEGAN(ModelConfig(image_size=32, width=4, latent_dim=8, d_norm=d_norm)).eval()
    model.discriminator.head.bias.data.normal_()  # a zero bias would hide a misplaced one
    z = torch.randn(5, 8)
    expand = model.decoder.net[0]
    want = F.conv_transpose2d(z[:, :, None, None], expand.weight)
    assert torch.allclose(expand(z[:, :, None, None]), want, atol=1e-6)
    x = torch.randn(5, 16, 4, 4)
    for head in (model.encoder.head, model.discriminator.head):
        want = F.conv2d(x, head.weight, head.bias)
        for form in (torch.contiguous_format, torch.channels_last):
            assert torch.allclose(head(x.contiguous(memory_format=form)), want, atol=1e-6)


def test_checkpoints_from_before_a_model_option_existed_rebuild_their_old_networks():
    old = {"image_size": 32, "latent_dim": 8, "width": 4, "feature_layer": 3}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.upsample, cfg.d_norm) == ("transpose", "batch")


def test_the_spectral_discriminator_has_no_batchnorm_and_normalised_weights():
    torch.manual_seed(0)
    d = VAEGAN(ModelConfig(image_size=32, width=4, latent_dim=8, d_norm="spectral")).discriminator
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    conv = d.blocks[1][0]
    for _ in range(20):  # power iteration converges as the network runs
        d(torch.randn(2, 3, 32, 32))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=0.05)


def test_diffaugment_draws_for_the_global_batch_so_a_rank_transforms_its_share_alike():
    from vaegan.training.augment import POLICIES, diff_augment

    x = torch.rand(16, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    whole = diff_augment(x, POLICIES)
    torch.manual_seed(0)
    share = diff_augment(x[8:], POLICIES, n=16, share=slice(8, 16))
    assert torch.equal(whole[8:], share)
    assert not torch.equal(whole, x)


def test_diffaugment_passes_gradients_back_to_the_images():
    from vaegan.training.augment import POLICIES, diff_augment

    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_()
    diff_augment(x, POLICIES).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_options_are_refused_with_the_choices():
    with pytest.raises(VaeganError, match="translation"):
        TrainConfig(diffaugment="color,rotate")
    with pytest.raises(VaeganError, match="hinge"):
        TrainConfig(gan_loss="wasserstein")
    with pytest.raises(VaeganError, match="resize"):
        ModelConfig(upsample="pixelshuffle")


def test_bad_model_shapes_are_refused():
    with pytest.raises(VaeganError, match="power of two"):
        ModelConfig(image_size=48)
    with pytest.raises(VaeganError, match="feature_layer"):
        ModelConfig(image_size=32, feature_layer=4)


def test_prior_samples_come_from_the_unit_gaussian():
    # Regression: the original tool sampled 5*N(0, I) instead of the prior it trained on.
    model = VAEGAN(ModelConfig(image_size=32, width=2, latent_dim=50))
    z = model.sample_prior(4000, torch.Generator().manual_seed(0))
    assert abs(float(z.mean())) < 0.02
    assert 0.97 < float(z.std()) < 1.03


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_mixed_prior_draws_lie_between_two_of_the_batchs_codes(share):
    from vaegan.training.step import _mixup

    codes = torch.eye(8)  # one-hot: a mixture of two shows as two weights summing to 1
    normal = torch.randn(8, 8)
    out = _mixup(normal, codes, share, 8, slice(0, 8), SINGLE)
    mixed = round(share * 8)
    assert torch.equal(out[mixed:], normal[mixed:])  # the rest stay N(0, I) draws
    for row in out[:mixed]:
        assert (row >= 0).all() and int((row > 0).sum()) <= 2
        assert float(row.sum()) == pytest.approx(1.0)
    with pytest.raises(VaeganError, match="prior_mixup"):
        TrainConfig(prior_mixup=1.5)


def test_mmd_is_near_zero_for_prior_draws_and_grows_as_codes_leave_the_prior():
    from vaegan.training.losses import mmd_imq

    g = torch.Generator().manual_seed(0)

    def mean_mmd(shift: float, scale: float) -> float:
        runs = [
            mmd_imq(
                torch.randn(64, 32, generator=g) * scale + shift, torch.randn(64, 32, generator=g)
            )
            for _ in range(10)
        ]
        return float(sum(runs)) / len(runs)

    assert abs(mean_mmd(0.0, 1.0)) < 0.01  # unbiased: about 0 when the codes are the prior
    shifted = [mean_mmd(s, 1.0) for s in (0.1, 0.3, 1.0, 3.0)]
    assert shifted == sorted(shifted) and shifted[0] > 0.005
    # Codes bunched tighter than the prior (what leaves holes in it) count as well.
    assert mean_mmd(0.0, 0.5) > 0.3


def test_the_mmd_term_moves_the_encoders_codes_toward_the_prior():
    # Only the MMD weighs on the encoder: a few steps on one batch must shrink it. Codes of
    # an untrained encoder sit bunched near 0, far from N(0, I).
    from vaegan.training.losses import mmd_imq

    cfg, model, nets, opts, x = _step_setup(
        kl_weight=0.0, llike_weight=0.0, pixel_weight=0.0, mmd_weight=10.0, lr_enc=1e-2
    )
    x = torch.rand(32, 3, 32, 32) * 2 - 1
    prior = torch.randn(512, 8, generator=torch.Generator().manual_seed(1))

    def mmd_of_codes() -> float:
        with torch.no_grad():
            mu, _ = model.encoder(x)
        return float(mmd_imq(mu, prior))

    before = mmd_of_codes()
    for _ in range(20):
        losses = train_step(nets, opts, x, cfg)
    assert float(losses.mmd.detach()) != 0  # computed and logged
    assert mmd_of_codes() < 0.5 * before
    with pytest.raises(VaeganError, match="mmd_weight"):
        TrainConfig(mmd_weight=-1)


def test_pixels_round_trip_between_uint8_and_model_range():
    px = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    assert torch.equal(to_pixels(from_pixels(px)), px)


def _step_setup(**cfg_kw):
    torch.manual_seed(0)
    cfg = TrainConfig(model=ModelConfig(image_size=32, width=4, latent_dim=8), **cfg_kw)
    model = VAEGAN(cfg.model)
    opts = Optimizers(
        torch.optim.Adam(model.encoder.parameters(), lr=cfg.lr_enc),
        torch.optim.Adam(model.decoder.parameters(), lr=cfg.lr_dec),
        torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_dis),
    )
    nets = Nets(model, model.encoder, model.decoder, model.discriminator)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    return cfg, model, nets, opts, x


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(module, before):
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


@pytest.mark.parametrize("mixup", [0.0, 1.0])
def test_gan_gradient_never_reaches_the_encoder(mixup):
    # With every encoder term weighted 0, only L_GAN is left: it must move D and the
    # decoder and leave the encoder exactly where it was, also when the prior draws are
    # mixtures of the encoder's codes.
    cfg, model, nets, opts, x = _step_setup(
        kl_weight=0.0, llike_weight=0.0, pixel_weight=0.0, prior_mixup=mixup
    )
    before = {n: _snapshot(getattr(model, n)) for n in ("encoder", "decoder", "discriminator")}
    train_step(nets, opts, x, cfg)
    assert not _changed(model.encoder, before["encoder"])
    assert _changed(model.decoder, before["decoder"])
    assert _changed(model.discriminator, before["discriminator"])


@pytest.mark.parametrize("frozen", ["encoder", "decoder", "discriminator"])
def test_each_optimiser_updates_only_its_own_network(frozen):
    lrs = {"lr_enc": 1e-3, "lr_dec": 1e-3, "lr_dis": 1e-3}
    lrs[{"encoder": "lr_enc", "decoder": "lr_dec", "discriminator": "lr_dis"}[frozen]] = 0.0
    cfg, model, nets, opts, x = _step_setup(**lrs)
    before = {n: _snapshot(getattr(model, n)) for n in ("encoder", "decoder", "discriminator")}
    train_step(nets, opts, x, cfg)
    for name in before:
        assert _changed(getattr(model, name), before[name]) == (name != frozen), name


def _recorded_step(step: int = 0, **cfg_kw):
    """One step from fixed weights and draws: D's gradients as its optimiser stepped, the
    model after the step, and the step's losses."""
    cfg, model, nets, opts, x = _step_setup(**cfg_kw)
    seen: list[torch.Tensor] = []
    d_step = opts.discriminator.step

    def recording_step(*a, **kw):
        seen.extend(p.grad.clone() for p in model.discriminator.parameters())
        return d_step(*a, **kw)

    opts.discriminator.step = recording_step
    losses = train_step(nets, opts, x, cfg, step=step)
    assert seen, "the discriminator never stepped"
    return seen, model, losses


def test_encoder_decoder_phase_adds_nothing_to_the_discriminator_gradients():
    at_d_step, model, _ = _recorded_step()
    after = [p.grad for p in model.discriminator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(at_d_step, after, strict=True))


def test_r1_is_the_squared_gradient_of_d_at_the_real_images():
    from vaegan.training.losses import r1_penalty

    # A linear D, logit = <w, x>: its gradient at every image is w, so R1 = |w|^2, and the
    # penalty's own gradient with respect to w is 2w.
    w = torch.randn(3, 4, 4, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    r1 = r1_penalty((x * w).sum((1, 2, 3)), x)
    assert torch.allclose(r1, w.pow(2).sum())
    (dw,) = torch.autograd.grad(r1, w)
    assert torch.allclose(dw, 2 * w)


def _d_gradients(step: int, **cfg_kw):
    """D's gradients and the losses of one step, without DiffAugment (so the penalty can be
    computed again here on the same images)."""
    seen, _, losses = _recorded_step(step, diffaugment="", **cfg_kw)
    return seen, losses


def test_lazy_r1_adds_gamma_half_times_every_of_its_gradient_to_d_on_its_steps_only():
    gamma, every = 2.0, 4
    plain, plain_losses = _d_gradients(8)
    on, on_losses = _d_gradients(8, r1_gamma=gamma, r1_every=every)  # 8 % 4 == 0: an R1 step
    off, off_losses = _d_gradients(9, r1_gamma=gamma, r1_every=every)  # 9: not one
    assert float(on_losses.r1) > 0 and float(off_losses.r1) == 0.0
    # Logged apart from the GAN loss, which stays as it was.
    assert float(on_losses.gan_d.detach()) == float(plain_losses.gan_d.detach())
    # The same step without R1 gives D the GAN gradient alone.
    assert all(torch.equal(a, b) for a, b in zip(off, _d_gradients(9)[0], strict=True))
    # On an R1 step the difference is exactly the penalty's gradient at the same weights.
    from vaegan.training.losses import r1_penalty

    _, model, _, _, x = _step_setup(diffaugment="")
    real = x.detach().requires_grad_(True)
    logit, _ = model.discriminator(real)
    penalty = 0.5 * gamma * every * r1_penalty(logit, real)
    params = list(model.discriminator.parameters())
    # The logit's bias does not move the input gradient, so the penalty leaves it alone.
    expected = torch.autograd.grad(penalty, params, allow_unused=True)
    for a, b, e, p in zip(on, plain, expected, params, strict=True):
        assert torch.allclose(a - b, torch.zeros_like(p) if e is None else e, atol=1e-5, rtol=1e-4)


def test_r1_settings_are_checked():
    with pytest.raises(VaeganError, match="r1_gamma must be >= 0"):
        TrainConfig(r1_gamma=-1.0)
    with pytest.raises(VaeganError, match="r1_every >= 1"):
        TrainConfig(r1_gamma=1.0, r1_every=0)
    with pytest.raises(VaeganError, match="compile=false"):
        TrainConfig(r1_gamma=1.0, compile=True)


def test_balancing_pauses_the_discriminator_when_it_wins():
    from vaegan.training.step import balance

    confident_real, confident_fake = torch.full((8,), 8.0), [torch.full((8,), -8.0)] * 2
    assert balance(confident_real, confident_fake, 0.35) == (False, True)
    fooled_real, fooled_fake = torch.full((8,), -8.0), [torch.full((8,), 8.0)] * 2
    assert balance(fooled_real, fooled_fake, 0.35) == (True, False)
    assert balance(confident_real, confident_fake, 0.0) == (True, True)


def test_bf16_autocast_applies_only_where_it_is_faster_than_fp32(monkeypatch):
    from contextlib import nullcontext

    from vaegan.training.step import autocast_for

    cpu = torch.device("cpu")
    assert isinstance(autocast_for(cpu, amp=False), nullcontext)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    assert isinstance(autocast_for(cpu, amp=True), nullcontext)  # emulated bf16 is slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    with autocast_for(cpu, amp=True):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probes
    assert isinstance(autocast_for(cpu, amp=True), nullcontext)


def test_a_bf16_step_runs_the_convolutions_in_bf16_and_keeps_fp32_weights(monkeypatch):
    from vaegan.training.step import autocast_for

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    cfg, model, nets, opts, x = _step_setup()
    model = model.to(memory_format=torch.channels_last)
    seen: set[torch.dtype] = set()
    for m in model.decoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    before = _snapshot(model.decoder)
    losses = train_step(
        nets,
        opts,
        x.contiguous(memory_format=torch.channels_last),
        cfg,
        autocast_for(torch.device("cpu"), amp=True),
    )
    assert seen == {torch.bfloat16}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses)
    assert _changed(model.decoder, before)
    assert all(p.dtype == torch.float32 for p in model.parameters())
