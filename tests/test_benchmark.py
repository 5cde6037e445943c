"""dp-benchmark's inference section: every cell times plain, eager and (with --backend) onnx
or bf16 back to back and reports each one's ratio to plain (rtc calls: to eager); the JSON records
the machine, the date and the thread count. Tiny networks stand in for the real ones (the cost
is not tested here, only what is measured and recorded). The interop section: one row per
conversion, its rates consistent with its times."""

import json

import pytest
import torch
import tyro

from dplite.scripts import benchmark
from dplite.scripts.benchmark import models

TINY = {"tiny unet": {"down_dims": (8, 16, 32), "diffusion_step_embed_dim": 8}}


@pytest.fixture(autouse=True)
def _restore_threads():
    """--threads sets torch's thread count for the whole process: put it back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("backend", ["eager", "onnx", "bf16"])
def test_every_cell_times_plain_and_reports_ratios(monkeypatch, tmp_path, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")  # torch's exporter imports it
    monkeypatch.setattr(models, "NETWORKS", TINY)
    monkeypatch.setattr(benchmark, "NETWORKS", TINY)
    out = tmp_path / "bench.json"
    args = ["--sections", "inference", "--repeats", "1", "--threads", "1", "--backend", backend,
            "--networks", "tiny unet", "--samplers", "ddim:2", "consistency:1",
            "--json", str(out)]  # fmt: skip
    benchmark.main(tyro.cli(benchmark.Config, args=args))
    results = json.loads(out.read_text())
    machine = results["machine"]
    assert machine["threads"] == 1 and machine["date"] and machine["cpu"]
    assert machine["utc"].startswith(machine["date"]) and machine["load_average_1m"] >= 0
    rows = results["inference"]
    cells = {(r["model"], r["batch"], r["sampler"], r["k"]) for r in rows}
    samplers = [("ddim", 2), ("consistency", 1)]
    assert cells == {
        ("tiny unet", b, s, k) for b in models.BATCHES for s, k in samplers
    }  # one row per cell, every batch size
    modes = ["eager"] if backend == "eager" else ["eager", backend]
    for r in rows:
        assert r["plain_ms"] > 0
        for mode in modes:
            assert r[f"{mode}/plain"] == pytest.approx(r[f"{mode}_ms"] / r["plain_ms"])
    assert ("onnx_ms" in rows[0]) == (backend == "onnx")
    assert ("bf16_ms" in rows[0]) == (backend == "bf16")
    if backend == "onnx":
        assert machine["onnxruntime"]


def test_rtc_cells_time_the_prefixed_call_against_eager(monkeypatch):
    monkeypatch.setattr(models, "NETWORKS", TINY)
    rows = models.bench_inference(
        1, networks=["tiny unet"], batches=[1], samplers=[("ddim", 2), ("consistency", 1)], rtc=True
    )
    by_sampler = {r["sampler"]: r for r in rows}
    ddim = by_sampler["ddim"]
    for method in ("guidance", "inpaint"):
        mode = f"rtc-{method}"
        assert ddim[f"{mode}/eager"] == pytest.approx(ddim[f"{mode}_ms"] / ddim["eager_ms"])
        assert f"{mode}/plain" not in ddim
    assert not any(k.startswith("rtc-") for k in by_sampler["consistency"])  # distilled: none


def test_interop_section_times_each_conversion_in_its_own_process(monkeypatch):
    pytest.importorskip("h5py")
    pytest.importorskip("av")
    pytest.importorskip("pyarrow")
    from dplite.scripts.benchmark import interop

    monkeypatch.setattr(interop, "FRAME_POOL", 8)  # fewer rendered frames: a quicker test
    rows = interop.bench_interop(n_episodes=3, length=6, size=64)
    assert [r["conversion"] for r in rows] == [
        "import robomimic",
        "export lerobot",
        "import lerobot",
    ]
    for r in rows:
        assert r["frames"] == 18
        assert r["CPU s"] > 0 and 0 < r["peak MB"] < 4096
        assert r["frames per CPU s"] == pytest.approx(18 / r["CPU s"])
