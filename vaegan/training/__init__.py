"""Training: dataset preparation, the VAE-GAN model, losses and the training loop."""
