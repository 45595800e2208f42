"""vaegan: train a VAE-GAN on a folder of images, export it to Triton, serve its latent space."""

__version__ = "0.1.0"
