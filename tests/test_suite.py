"""dplite.scripts.suite --quick on the toy task: data, training, evaluation of every method, the
inference-steps sweep, the leaderboard and the plots; then a second run that redoes nothing,
and runs with changed settings that are refused before any work."""

import json
import sys
from pathlib import Path

import pytest
import torch
import tyro

from dplite.envs.tasks import register_task
from dplite.scripts import suite
from dplite.scripts.suite import pipeline, report, settings
from tests.toy_envs import TOY_TASK as TOY  # importing it also registers ToyReach-v0


def run(out, *extra):
    args = ["--tasks", "toy_reach", "--out", str(out), "--quick", "--no-progress",
            "--train-seeds", "0", "1", *extra]  # fmt: skip
    return suite.main(tyro.cli(suite.Config, args=args))


@pytest.fixture
def one_thread():
    """Tiny networks: one torch thread here and in the training subprocesses (several threads
    on a busy machine's shared cores cost far more than they give)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def _boom(*args, **kwargs):
    raise AssertionError("a resumed suite redid finished work")


def test_quick_suite_writes_the_leaderboard_and_plots_and_resumes(
    tmp_path, monkeypatch, capsys, one_thread
):
    register_task(TOY, overwrite=True)
    first = run(tmp_path)

    # every stage ran once: data, 2 methods x 2 seeds of training and evaluation, 2 baselines,
    # 2 sweep settings per diffusion seed
    assert len(first["ran"]) == 1 + 4 + 4 + 2 + 4 and first["skipped"] == []
    for method in ("diffusion", "mse"):
        for seed in (0, 1):
            run_dir = tmp_path / "runs" / "toy_reach" / method / f"seed{seed}"
            assert pipeline.finished_step(run_dir) == 2
    rows = {(r["method"], r["train_seed"]): r for r in first["rows"]}
    assert list(rows) == [("diffusion", 0), ("diffusion", 1), ("mse", 0), ("mse", 1),
                          ("expert", None), ("random", None)]  # fmt: skip
    for r in rows.values():  # the same held-out episodes for every method
        assert r["seeds"] == [100_000, 100_001] and r["eval_time_s"] > 0 and r["latency_ms"] > 0
    diffusion = rows["diffusion", 0]
    assert (diffusion["sampler"], diffusion["inference_steps"]) == ("ddim", 5)  # the default k
    assert (rows["mse", 1]["sampler"], rows["mse", 1]["inference_steps"]) == ("mse", 1)
    assert rows["expert", None]["success_rate"] == 1.0
    assert rows["mse", 0]["train_steps"] == 2 and rows["mse", 0]["train_time_s"] > 0
    assert {m["method"] for m in first["means"]} == {"diffusion", "mse"}

    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert board["rows"] == json.loads(json.dumps(first["rows"]))
    assert board["header"]["torch"] == torch.__version__ and board["header"]["episodes"] == 2
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## toy_reach" in md and "| expert | - | 1.00 (0.34-1.00) |" in md
    assert "| diffusion | **mean** |" in md and torch.__version__ in md
    assert board["header"]["machine"].split(",")[0] in md  # the CPU model
    for kind in ("training", "inference_steps"):
        png = tmp_path / "plots" / f"toy_reach_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](plots/{png.name})" in md
    sweep = tmp_path / "results" / "toy_reach" / "diffusion_sweep"
    assert sorted(p.name for p in sweep.glob("*.json")) == [
        "seed0_ddim1.json", "seed0_ddim1.settings.json", "seed0_ddim2.json",
        "seed0_ddim2.settings.json", "seed1_ddim1.json", "seed1_ddim1.settings.json",
        "seed1_ddim2.json", "seed1_ddim2.settings.json",
    ]  # fmt: skip
    # each stage recorded what it ran with beside its output
    record = json.loads(
        (tmp_path / "runs" / "toy_reach" / "mse" / "seed1.settings.json").read_text()
    )
    assert record["stage"] == "toy_reach/mse/seed1: train"
    assert record["settings"]["train_flags"]["objective"] == "mse"
    assert record["settings"]["data"]["episodes"] == 3
    assert "-m dplite.scripts.train" in record["info"]["command"]
    data = json.loads((tmp_path / "data" / "toy_reach.settings.json").read_text())["settings"]
    assert (data["action_noise"], data["env"]["env_id"]) == (0.0, "ToyReach-v0")

    # a second run finds everything done: no worker may be called, no file is rewritten
    work = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    work |= {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*") if p.is_file()}
    work |= {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file()}
    for name in ("train", "collect", "evaluate_learned", "evaluate_baseline"):
        monkeypatch.setattr(pipeline.Suite, name, _boom)
    monkeypatch.setattr(pipeline, "evaluate_policy", _boom)
    monkeypatch.setattr(pipeline, "evaluate_baseline", _boom)
    second = run(tmp_path)
    assert second["ran"] == [] and second["skipped"] == first["ran"]
    assert second["rows"] == first["rows"]
    assert {p: p.stat().st_mtime_ns for p in work} == work

    # changed settings: refused before any work, naming every stage and field that differ
    with pytest.raises(settings.SettingsMismatch) as refused:
        run(tmp_path, "--action-noise", "0.5")
    msg = str(refused.value)
    assert "toy_reach: collect" in msg and "action_noise: 0.0 -> 0.5" in msg
    assert "train.data.action_noise: 0.0 -> 0.5" in msg  # and every result downstream
    assert "toy_reach/expert: evaluate" not in msg  # the baselines do not use the data
    assert "a new --out" in msg and f"rm -r {tmp_path / 'data' / 'toy_reach.zarr'}" in msg
    # ... through the command line: one error line (and the fields), exit status 2
    args = ["dp-suite", "--tasks", "toy_reach", "--out", str(tmp_path), "--quick",
            "--no-progress", "--train-steps", "3"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exit_:
        suite.cli()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("dp-suite: error: ")
    assert "toy_reach/mse/seed1: train" in err and "train_flags.steps: 2 -> 3" in err
    assert {p: p.stat().st_mtime_ns for p in work} == work

    # ... and redoes exactly what is missing; a record without its output is replaced
    monkeypatch.undo()
    untrained = tmp_path / "results" / "toy_reach" / "random" / "untrained.json"
    untrained.unlink()
    stale = untrained.with_name("untrained.settings.json")
    stale.write_text(json.dumps({"stage": "old", "settings": {"episodes": 7}}))
    assert run(tmp_path)["ran"] == ["toy_reach/random: evaluate"]
    assert json.loads(stale.read_text())["settings"]["episodes"] == 2


def test_settings_differences_name_nested_fields():
    old = {"a": 1, "train": {"flags": {"steps": 2, "seed": 0}}, "gone": True}
    new = {"a": 1, "train": {"flags": {"steps": 3, "seed": 0}}, "added": [1, 2]}
    assert settings.differences(old, new) == [
        "train.flags.steps: 2 -> 3",
        "gone: true -> (not set)",
        "added: (not recorded) -> [1, 2]",
    ]
    assert settings.differences(old, old) == []


def test_training_time_adds_up_log_intervals_across_a_resume(tmp_path):
    records = [
        {"step": 100, "loss": 1.0, "it_s": 10.0},
        {"step": 200, "loss": 0.9, "it_s": 20.0},
        {"step": 200, "eval_success": 0.5, "eval_s": 5.0},
        {"step": 300, "loss": 0.8, "it_s": 1.0},  # killed after this, resumed from step 200
        {"step": 300, "loss": 0.8, "it_s": 50.0},
        {"step": 400, "loss": 0.7, "it_s": 25.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    t = report.training_time(tmp_path)
    assert t["train_time_s"] == pytest.approx(100 / 10 + 100 / 20 + 100 / 50 + 100 / 25)
    assert t["train_steps"] == 400 and t["train_rollout_eval_s"] == 5.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sweep=("ddim0",)), "--sweep entry 'ddim0'"),
        (dict(sweep=("euler5",)), "--sweep entry 'euler5'"),
        (dict(methods=("mse", "mse")), r"--methods \('mse', 'mse'\) repeats"),
        (dict(episodes=0), "--episodes must be >= 1"),
        (dict(methods=("mse",), train_seeds=()), "no --train-seeds"),
        (dict(latency_steps=-1), "--execution / --latency-steps: latency_steps must be >= 0"),
        (dict(latency_steps=3), "--latency-steps 3 > Ta = 2"),
        (dict(latency_steps=5, n_action_steps=4), "--latency-steps 5 > Ta = 4"),
        (dict(n_action_steps=0), "--n-action-steps must be >= 1"),
        (dict(rtc_method="inpaint"), "--rtc-method inpaint needs --execution rtc"),
        (dict(train_max_delay=-1), "--train-max-delay must be >= 0"),
        (
            dict(execution="rtc", latency_steps=2, rtc_method="conditioned", train_max_delay=1),
            "needs --train-max-delay >= 2",
        ),
        (dict(anchor_last_k=-1), "--anchor-last-k must be >= 0"),
        (dict(anchor_last_k=3), "--anchor-last-k 3 needs --train-steps"),
        (dict(anchor_last_k=3, train_steps=1000), "--train-steps 1000 is not a multiple"),
        (dict(anchor_last_k=2, methods=("expert",), train_steps=4), "has none"),
    ],
)
def test_bad_suite_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        suite.Config(**kwargs)


def test_quick_suite_with_transformer_anchor_metric_and_delayed_execution(tmp_path, one_thread):
    """diffusion_transformer trains with dp-train --backbone transformer; --anchor-last-k 2
    keeps and evaluates each run's last 2 checkpoints; --execution rtc --latency-steps 1
    applies to the diffusion rows only; a later command without those options is refused."""
    register_task(TOY, overwrite=True)
    extra = ["--methods", "diffusion_transformer", "mse", "--sweep", "--anchor-last-k", "2",
             "--execution", "rtc", "--latency-steps", "1"]  # fmt: skip
    first = run(tmp_path, *extra)
    # 4 trainings, 4 leaderboard evaluations, 2 checkpoints x 4 runs
    assert len(first["ran"]) == 1 + 4 + 4 + 8
    runs = tmp_path / "runs" / "toy_reach"
    config = json.loads((runs / "diffusion_transformer" / "seed0" / "config.json").read_text())
    assert config["backbone"] == "transformer" and config["keep_checkpoints"] == 2
    assert json.loads((runs / "mse" / "seed1" / "config.json").read_text())["backbone"] == "unet"
    # the checkpoints the anchor stages were planned on are the ones training kept
    for method in ("diffusion_transformer", "mse"):
        kept = sorted(p.name for p in (runs / method / "seed1" / "checkpoints").glob("step_*"))
        assert kept == ["step_0000001", "step_0000002"]

    rows = {(r["method"], r["train_seed"]): r for r in first["rows"]}
    transformer, mse = rows["diffusion_transformer", 0], rows["mse", 0]
    assert (transformer["execution"], transformer["latency_steps"]) == ("rtc", 1)
    assert (mse["execution"], mse["latency_steps"]) == ("sync", 0)  # regression: no delay
    assert transformer["latency_ms"] > 0 and transformer["train_time_s"] > 0
    for r in (transformer, mse):
        assert r["boundary_jerk"] is not None and r["within_jerk"] is not None
    # the anchor numbers are the max and the mean of the checkpoints' own results
    for (method, _), r in rows.items():
        anchor = r["anchor"]
        assert anchor["checkpoint_steps"] == [1, 2] and anchor["last_k"] == 2
        results = [json.loads(Path(p).read_text()) for p in anchor["results"]]
        assert [x["train_step"] for x in results] == [1, 2]
        assert all(x["seeds"] == r["seeds"] for x in results)  # the same episodes
        rewards = [x["mean_max_reward"] for x in results]
        assert anchor["mean_max_reward"]["max"] == pytest.approx(max(rewards))
        assert anchor["mean_max_reward"]["last_k_mean"] == pytest.approx(sum(rewards) / 2)
        assert results[0]["execution"] == ("rtc" if method == "diffusion_transformer" else "sync")
    means = {m["method"]: m for m in first["means"]}
    per_seed = [rows["mse", s]["anchor"]["mean_max_reward"]["max"] for s in (0, 1)]
    assert means["mse"]["anchor"]["mean_max_reward"]["max"] == pytest.approx(sum(per_seed) / 2)

    md = (tmp_path / "leaderboard.md").read_text()
    assert "success, max / mean of last 2 ckpts" in md and "| boundary jerk | within jerk |" in md
    assert "rtc (guidance) execution, 1-step delay" in md
    lines = [line for line in md.splitlines() if line.startswith("| mse | **mean** |")]
    reward = means["mse"]["anchor"]["mean_max_reward"]
    assert f"| {reward['max']:.3f} / {reward['last_k_mean']:.3f} |" in lines[0]
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert board["header"]["anchor"] == {"last_k": 2, "checkpoint_steps": [1, 2]}
    assert board["header"]["execution"]["execution"] == "rtc"

    # the same folder without the delay: every diffusion evaluation differs, mse's do not
    with pytest.raises(settings.SettingsMismatch) as refused:
        run(tmp_path, *extra[:-4])
    msg = str(refused.value)
    assert 'execution: "rtc" -> (not set)' in msg and "latency_steps: 1 -> (not set)" in msg
    assert "toy_reach/diffusion_transformer/seed0: anchor step 2" in msg
    assert "toy_reach/mse/seed0: evaluate" not in msg


def test_default_settings_are_those_of_suites_before_the_new_options():
    """A suite folder written before --execution, --latency-steps, --anchor-last-k and
    diffusion_transformer resumes: the default command plans the same stages with the same
    recorded settings (fields written out by hand from the earlier records)."""
    register_task(TOY, overwrite=True)
    cfg = suite.Config(tasks=("toy_reach",), methods=("diffusion", "mse", "random"),
                       train_seeds=(0,), sweep=("ddim1", "ddim5"))  # fmt: skip
    stages = {s.name: s for s in pipeline.Suite(cfg).stages()}
    assert list(stages) == [
        "toy_reach: collect", "toy_reach/diffusion/seed0: train", "toy_reach/mse/seed0: train",
        "toy_reach/diffusion/seed0: evaluate", "toy_reach/mse/seed0: evaluate",
        "toy_reach/random: evaluate", "toy_reach/diffusion/seed0: sweep ddim1",
    ]  # fmt: skip
    train = stages["toy_reach/diffusion/seed0: train"].settings
    assert train["train_flags"] == {"objective": "diffusion", "seed": 0}
    assert stages["toy_reach/mse/seed0: train"].settings["train_flags"] == {
        "objective": "mse",
        "seed": 0,
    }
    assert stages["toy_reach/diffusion/seed0: evaluate"].settings == {
        "method": "diffusion", "sampler": "ddim", "inference_steps": 5, "episodes": 50,
        "seeds": "100000..100049", "noise_seed": 0, "latency_calls": 20, "train": train,
    }  # fmt: skip
    assert set(stages["toy_reach/random: evaluate"].settings) == {
        "method", "sampler", "inference_steps", "episodes", "seeds", "noise_seed",
        "latency_calls", "n_action_steps", "env",
    }  # fmt: skip


def test_anchor_checkpoint_steps_and_flags():
    # TrainLoop saves at multiples of --save-every and at the last step, keeping the newest
    assert pipeline.kept_checkpoint_steps(9000, 900, 10) == list(range(900, 9001, 900))
    assert pipeline.kept_checkpoint_steps(1000, 333, 3) == [666, 999, 1000]
    assert pipeline.kept_checkpoint_steps(2, 2, 1) == [2]
    register_task(TOY, overwrite=True)
    cfg = suite.Config(tasks=("toy_reach",), methods=("diffusion_transformer",), train_seeds=(3,),
                       train_steps=9000, anchor_last_k=10, sweep=())  # fmt: skip
    s = pipeline.Suite(cfg)
    flags = s.train_flags("diffusion_transformer", 3)
    assert flags == {"objective": "diffusion", "backbone": "transformer", "seed": 3,
                     "steps": 9000, "save-every": 900, "keep-checkpoints": 10}  # fmt: skip
    anchors = [st for st in s.stages() if ": anchor step" in st.name]
    assert [st.settings["checkpoint_step"] for st in anchors] == list(range(900, 9001, 900))
    assert anchors[-1].output.name == "seed3_step0009000.json"
    assert "latency_calls" not in anchors[0].settings  # checkpoints are not timed
    # --quick caps K at its training steps
    quick = suite.effective(suite.Config(quick=True, anchor_last_k=10, tasks=("toy_reach",)))
    assert quick.anchor_last_k == 2


def test_mean_anchor_is_the_papers_max_and_last_k_mean_over_seeds():
    def row(seed, success, reward):
        scored = {"scores": success, "max": max(success), "last_k_mean": sum(success) / 2}
        return {"train_seed": seed, "anchor": {"last_k": 2, "success_rate": scored,
                                               "mean_max_reward": reward}}  # fmt: skip

    out = report.mean_anchor([row(0, [0.6, 0.8], None), row(1, [0.9, 0.5], None)])
    # per seed: max 0.8 and 0.9, mean of the last 2 0.7 and 0.7
    assert out["success_rate"]["max"] == pytest.approx(0.85)
    assert out["success_rate"]["last_k_mean"] == pytest.approx(0.7)
    assert out["mean_max_reward"] is None  # a checkpoint without the score: none
    assert report.mean_anchor([{"train_seed": 0}, row(1, [0.9, 0.5], None)]) is None


def test_successes_by_outcome_are_tabled_per_seed_and_pooled_over_seeds(tmp_path):
    """Hand-made rows of a two-way task: the mean row adds the seeds' counts, the table shows
    them in their own column, and a task without outcomes gets no such column."""

    def row(task, seed, wins, outcomes=None):
        r = {"task": task, "method": "diffusion", "train_seed": seed, "episodes": 4,
             "successes": [True] * wins + [False] * (4 - wins), "success_rate": wins / 4,
             "success_ci95": [0.0, 1.0], "mean_max_reward": 0.5}  # fmt: skip
        return r if outcomes is None else {**r, "success_by_outcome": outcomes}

    rows = [
        row("stack", 0, 3, {"a_on_b": 2, "b_on_a": 1}),
        row("stack", 1, 2, {"a_on_b": 2}),
        row("lift", 0, 4),
        row("lift", 1, 4),
    ]
    means = {m["task"]: m for m in report.mean_rows(rows)}
    assert means["stack"]["success_by_outcome"] == {"a_on_b": 4, "b_on_a": 1}
    assert "success_by_outcome" not in means["lift"]
    head = {"quick": False, "episodes": 4, "eval_seeds": [0, 3], "demo_episodes": 10,
            "train_seeds": [0, 1], "samplers": {"diffusion": "DDIM"}, "machine": "m",
            "device": "cpu", "torch": "t", "date": "d", "latency_calls": 1}  # fmt: skip
    md = report.markdown(head, rows, list(means.values()), {}, tmp_path)
    stack, lift = md.split("## lift")
    assert "successes by outcome" in stack and "successes by outcome" not in lift
    assert "| a_on_b 2, b_on_a 1 |" in stack and "| a_on_b 2 |" in stack
    assert "| a_on_b 4, b_on_a 1 |" in stack  # the mean row: pooled


def test_n_action_steps_reaches_training_only_when_set():
    """--n-action-steps becomes dp-train's flag of that name for every learned method; unset,
    no flag (dp-train's default Ta, which the suite's delay check assumes) and so the train
    settings of suites from before the option are unchanged."""
    from dplite.scripts.train import Config as TrainConfig

    assert TrainConfig.n_action_steps == pipeline.TRAIN_ACTION_STEPS
    register_task(TOY, overwrite=True)
    cfg = suite.Config(tasks=("toy_reach",), methods=("diffusion", "mse"), n_action_steps=4,
                       execution="async", latency_steps=4)  # fmt: skip
    for method in ("diffusion", "mse"):
        assert pipeline.Suite(cfg).train_flags(method, 0)["n-action-steps"] == 4
    plain = pipeline.Suite(suite.Config(tasks=("toy_reach",))).train_flags("diffusion", 0)
    assert "n-action-steps" not in plain


def test_conditioned_rtc_trains_with_delays_and_evaluates_with_them(tmp_path, one_thread):
    """--train-max-delay reaches dp-train for the diffusion methods only; --rtc-method
    conditioned evaluates their rows with it (recorded in results, settings and header), and a
    later command with another rtc method is refused for the diffusion rows alone."""
    register_task(TOY, overwrite=True)
    cfg = suite.Config(tasks=("toy_reach",), methods=("diffusion", "mse"), execution="rtc",
                       latency_steps=1, rtc_method="conditioned", train_max_delay=1)  # fmt: skip
    plan = pipeline.Suite(cfg)
    assert plan.train_flags("diffusion", 0)["train-max-delay"] == 1
    assert "train-max-delay" not in plan.train_flags("mse", 0)
    assert plan.execution_settings("diffusion")["rtc_method"] == "conditioned"
    assert "rtc_method" not in plan.execution_settings("mse")  # mse always runs sync
    plain = suite.Config(tasks=("toy_reach",), execution="rtc", latency_steps=1)
    assert "rtc_method" not in pipeline.Suite(plain).execution_settings("diffusion")

    extra = ["--methods", "diffusion", "mse", "--sweep", "--execution", "rtc", "--latency-steps",
             "1", "--train-seeds", "0", "--train-max-delay", "1", "--rtc-method", "conditioned"]  # fmt: skip
    first = run(tmp_path, *extra)
    runs = tmp_path / "runs" / "toy_reach"
    assert json.loads((runs / "diffusion/seed0/config.json").read_text())["train_max_delay"] == 1
    assert json.loads((runs / "mse/seed0/config.json").read_text())["train_max_delay"] == 0
    rows = {r["method"]: r for r in first["rows"]}
    assert rows["diffusion"]["rtc_method"] == "conditioned" and rows["diffusion"]["latency_ms"] > 0
    assert "rtc_method" not in rows["mse"]
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert board["header"]["execution"]["rtc_method"] == "conditioned"
    assert "rtc (conditioned) execution" in (tmp_path / "leaderboard.md").read_text()

    with pytest.raises(settings.SettingsMismatch) as refused:
        run(tmp_path, *extra[:-2], "--rtc-method", "inpaint")
    msg = str(refused.value)
    assert 'rtc_method: "conditioned" -> "inpaint"' in msg
    assert "toy_reach/diffusion/seed0: evaluate" in msg
    assert "toy_reach/mse/seed0: evaluate" not in msg
