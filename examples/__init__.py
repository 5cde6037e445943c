"""Example user code for the collect script's plug-in protocol (see examples.pointmaze_expert)."""
