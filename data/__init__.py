"""Zarr demonstration datasets: replay buffer, padded windows, torch dataset."""
