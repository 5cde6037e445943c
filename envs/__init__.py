"""MuJoCo gymnasium environments, scripted experts and batched rollouts (no torch)."""
