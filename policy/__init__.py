"""Pure-torch diffusion policy: noise schedule, temporal UNet, encoders, normalizer."""
