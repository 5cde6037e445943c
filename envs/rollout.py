"""Batched receding-horizon evaluation of any policy callable over many seeded episodes.

All episodes run at once: each replanning step stacks the To-step observation history of every
unfinished episode, makes ONE policy call for all of them, then executes Ta actions in each env
(Chi et al. 2023, receding-horizon control). An episode that ends (success or time limit) drops
out of later batches. No torch here: the policy is a callable on numpy arrays, so the same loop
evaluates a diffusion policy, an expert or a random baseline.

The policy also receives the seed of each batch row, so a stochastic policy can draw its noise
per episode: an episode's result then depends on its seed only, not on which other episodes
share the batch. A policy with an ``episode_started(seed, env)`` method is told each episode's
env right after its reset (a scripted expert builds itself on it). An environment that raises,
returns a non-finite observation, or reports ``info["failure"]`` (a physics blow-up, say) ends
that episode as failed with the reason in ``EpisodeResult.error``; the other episodes go on.
Frames are kept for the first ``n_videos`` episodes only, whatever the envs' render modes.

Inference delay (``ChunkExecution``): on a robot the next chunk is computed while the current one
runs. With a delay of d control steps, the chunk planned from the observation at step t is
available at t + d; until then the previous chunk keeps executing. Replanning stays every Ta
steps (t = 0, Ta, 2 Ta, ...); the first chunk is waited for (the robot starts at rest), so it
runs from step 0. The execution modes:

    sync      the world waits for every chunk: d does not matter (the rollout of no delay)
    async     switch to each new chunk when it arrives, at its first not-yet-past action
    ensemble  like async, but during the first ``blend_steps`` steps after a chunk arrives the
              executed action is the average of every chunk that plans that step, weighted
              exp(-m i) with i = 0 for the oldest (ACT's temporal ensembling, Zhao et al. 2023)
    rtc       like async, but each chunk is sampled knowing what the previous chunk commits
              to during the delay: its first d actions are frozen to those and the next
              ``blend_steps`` softly weighted toward the previous chunk (real-time chunking,
              Black et al. 2025, arXiv 2506.07339); the policy must accept a prefix

Timeline for Ta = 4, d = 2 (chunk k planned at step 4k, the letters are the executed chunk):

    step      0 1 2 3 4 5 6 7 8 9 ...
    plans     0       1       2
    executes  0 0 0 0 0 0 1 1 1 1 2 ...   (chunk 1 from its index d = 2, the step it arrives)

``blend_steps`` defaults to d, so that with d = 0 every mode executes exactly the actions of the
rollout without delay. A chunk that runs out before the next one arrives (Ta + d beyond the
actions it returned) holds its last action, as a position controller holds its last target.
Each result keeps the executed actions and which chunk led each step, from which ``summarize``
reports the smoothness at chunk boundaries and within chunks (``action_jerk``).

Policy protocol: ``policy(obs {key: (B, To, ...)}, seeds (B,)) -> actions (B, >= Ta, Da)``, the
actions from the newest observation's step on. For ``rtc`` the policy also has
``accepts_prefix = True`` and takes ``prefix=`` (B, P, Da) and ``prefix_weights=`` (P,): the
actions its chunk should start with (aligned with its first returned action) and how firmly
(1 frozen, 0 free).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np

from dplite.envs.tasks import DEFAULT_SUCCESS_KEY, flatten_obs, is_success, non_finite_keys

log = logging.getLogger(__name__)

# (obs {key: (B, To, ...)}, seeds (B,)) -> actions (B, >= Ta, Da)
PolicyFn = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
Execution = Literal["sync", "async", "ensemble", "rtc"]
EXECUTIONS: tuple[str, ...] = ("sync", "async", "ensemble", "rtc")
ACT_DECAY = 0.01
"""ACT's temporal-ensembling constant m (Zhao et al. 2023, weights exp(-m i))."""


class EnvFailure(RuntimeError):
    """The environment reported ``info["failure"]``: its episode ends as failed."""


@dataclass(frozen=True)
class ChunkExecution:
    """How chunks are executed under an inference delay (see the module docstring)."""

    mode: Execution = "sync"
    latency_steps: int = 0
    """d: control steps between the observation a chunk is planned from and its arrival."""
    blend_steps: int | None = None
    """ensemble / rtc: steps after the committed ones over which the previous chunk still
    counts (averaged in, or softly weighted). None: d. A large value gives the papers' full
    overlap (every step the previous chunk still plans)."""
    ensemble_decay: float = ACT_DECAY
    """m of ACT's weights exp(-m i), i = 0 the oldest chunk; 0 averages uniformly."""

    def __post_init__(self) -> None:
        if self.mode not in EXECUTIONS:
            raise ValueError(f"unknown execution {self.mode!r}; use one of {EXECUTIONS}")
        if self.latency_steps < 0:
            raise ValueError(f"latency_steps must be >= 0, got {self.latency_steps}")
        if self.blend_steps is not None and self.blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0 or None, got {self.blend_steps}")
        if not (self.ensemble_decay >= 0 and math.isfinite(self.ensemble_decay)):
            raise ValueError(f"ensemble_decay must be finite and >= 0, got {self.ensemble_decay}")

    @property
    def delay(self) -> int:
        """The delay the world sees: none in sync mode, where it waits for every chunk."""
        return 0 if self.mode == "sync" else self.latency_steps

    @property
    def blend(self) -> int:
        if self.mode not in ("ensemble", "rtc"):
            return 0
        return self.latency_steps if self.blend_steps is None else self.blend_steps

    def record(self) -> dict:
        """The settings, as results-JSON fields."""
        return {
            "execution": self.mode,
            "latency_steps": self.latency_steps,
            "blend_steps": self.blend,
            "ensemble_decay": self.ensemble_decay if self.mode == "ensemble" else None,
        }


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    max_reward: float
    final_reward: float
    steps: int
    error: str | None = None
    """Why the episode was cut short by its environment (it then counts as failed)."""
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    actions: list[np.ndarray] = field(default_factory=list, repr=False)
    """The executed actions, one per step taken."""
    leads: list[int] = field(default_factory=list, repr=False)
    """For each executed action, the step its leading chunk was planned at (a change between
    two steps is a chunk boundary)."""
    outcome: str | None = None
    """``info[outcome_key]`` at the first successful step (at the last step if none was), for
    tasks solvable more than one way; None when the rollout was given no outcome_key."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a success rate (well behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def action_jerk(actions: np.ndarray, leads: Sequence[int]) -> tuple[float, int, float, int]:
    """|delta action| (Euclidean norm) between consecutive executed actions (N, Da), split by
    whether the leading chunk changed between them: (boundary sum, boundary count, within
    sum, within count)."""
    actions = np.asarray(actions, dtype=np.float64).reshape(len(leads), -1)  # (N, Da)
    if len(leads) < 2:
        return 0.0, 0, 0.0, 0
    delta = np.linalg.norm(np.diff(actions, axis=0), axis=1)  # (N - 1,)
    switch = np.diff(np.asarray(leads)) != 0  # (N - 1,)
    return (
        float(delta[switch].sum()),
        int(switch.sum()),
        float(delta[~switch].sum()),
        int((~switch).sum()),
    )


def summarize(results: Sequence[EpisodeResult]) -> dict:
    """Success rate with its 95 % CI, the mean of per-episode maximum reward (over episodes
    that took a step; None if none did), env errors, and the mean |delta action| across chunk
    boundaries and within chunks over all episodes (None where there was no such pair). Where
    episodes recorded an outcome: each episode's (``outcomes``) and the successes per outcome
    (``success_by_outcome``, sorted by outcome)."""
    n, wins = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(wins, n)
    stepped = [r.max_reward for r in results if r.steps > 0]  # an env error at reset has none
    b_sum = b_n = w_sum = w_n = 0
    for r in results:
        if r.actions:
            bs, bn, ws, wn = action_jerk(np.stack(r.actions), r.leads)
            b_sum, b_n, w_sum, w_n = b_sum + bs, b_n + bn, w_sum + ws, w_n + wn
    record = {
        "success_rate": wins / n if n else 0.0,
        "success_ci95": [lo, hi],
        "mean_max_reward": float(np.mean(stepped)) if stepped else None,
        "episodes": n,
        "seeds": [r.seed for r in results],
        "successes": [r.success for r in results],
        "mean_steps": float(np.mean([r.steps for r in results])) if n else 0.0,
        "errors": [{"seed": r.seed, "error": r.error} for r in results if r.error],
        "boundary_jerk": b_sum / b_n if b_n else None,
        "within_jerk": w_sum / w_n if w_n else None,
    }
    if any(r.outcome is not None for r in results):
        record["outcomes"] = [r.outcome for r in results]
        won = Counter(r.outcome for r in results if r.success)
        record["success_by_outcome"] = {k: won[k] for k in sorted(won)}
    return record


def ensemble_weights(n: int, decay: float = ACT_DECAY) -> np.ndarray:
    """ACT's temporal-ensembling weights for n predictions of one step, oldest first:
    exp(-m i) for i = 0 .. n - 1, normalized to sum to 1 (Zhao et al. 2023)."""
    w = np.exp(-decay * np.arange(n))  # (n,)
    return w / w.sum()


def rtc_prefix_weights(frozen: int, soft: int) -> np.ndarray:
    """The soft mask of real-time chunking (Black et al. 2025) over the first
    frozen + soft actions of a new chunk: 1 on the frozen (committed) ones, then
    c (e^c - 1) / (e - 1) with c = (soft - j) / (soft + 1) for the j-th of the soft ones, which
    decays from near 1 toward 0 (the paper's c_i = (H - s - i) / (H - s - d + 1) with d = frozen
    and H - s = frozen + soft, where the previous chunk's plan ends)."""
    c = (soft - np.arange(soft)) / (soft + 1)  # (soft,)
    return np.concatenate([np.ones(frozen), c * np.expm1(c) / (math.e - 1)])  # (frozen + soft,)


@dataclass
class _Chunk:
    start: int  # the step it was planned at (its first action is for this step)
    arrival: int  # the first step it may act
    actions: np.ndarray  # (L, Da) from the planning step on


def _step_action(
    chunks: Sequence[_Chunk], step: int, execution: ChunkExecution
) -> tuple[np.ndarray, int]:
    """The action executed at `step` and the planning step of the chunk that leads it."""
    lead = max(j for j, c in enumerate(chunks) if c.arrival <= step)
    c = chunks[lead]
    own = c.actions[min(step - c.start, len(c.actions) - 1)]  # holds its last action
    if execution.mode != "ensemble":
        return own, c.start
    members = [
        old.actions[step - old.start]
        for old, nxt in zip(chunks[:lead], chunks[1 : lead + 1], strict=True)
        if step < nxt.arrival + execution.blend and step - old.start < len(old.actions)
    ]
    if not members:
        return own, c.start  # exactly the lead's action, not a one-term average
    w = ensemble_weights(len(members) + 1, execution.ensemble_decay)  # oldest first
    return np.tensordot(w, np.stack([*members, own]), axes=1).astype(own.dtype), c.start


def _prefix(chunks: Sequence[_Chunk], now: int, execution: ChunkExecution, soft: int) -> np.ndarray:
    """rtc: what a chunk planned at `now` should start with, (d + soft, Da): the actions
    executed during its delay (committed), then the previous chunk's plan for the next `soft`
    steps."""
    d = execution.delay
    committed = [_step_action(chunks, now + i, execution)[0] for i in range(d)]
    prev = chunks[-1]
    planned = [prev.actions[now + d + j - prev.start] for j in range(soft)]
    return np.stack([*committed, *planned])  # (d + soft, Da)


def rollout(
    policy: PolicyFn,
    make_env: Callable[[bool], gym.Env],
    seeds: Sequence[int],
    n_obs_steps: int,
    n_action_steps: int,
    n_videos: int = 0,
    progress: Callable[[int], None] | None = None,
    success_key: str = DEFAULT_SUCCESS_KEY,
    execution: ChunkExecution | None = None,
    outcome_key: str | None = None,
) -> list[EpisodeResult]:
    """Run one episode per seed, all batched together; return per-episode results in seed order.

    make_env(render) builds one env (render=True for the first n_videos episodes, whose frames
    are kept in EpisodeResult.frames). Observations reach the policy flattened (envs.tasks:
    a Box is ``state``, a dict one key per leaf) and copied. Success is ``info[success_key]``
    (``info["success"]`` when the default key is absent). progress(n) is called with the
    number of env steps taken. ``execution`` (default: sync, no delay) sets the inference delay
    and how chunks follow each other; a delay longer than Ta is refused (a chunk would be
    asked for before the previous one arrived). ``outcome_key``: an info key recorded per
    episode as EpisodeResult.outcome (how it was solved, for tasks with several ways).
    """
    execution = execution or ChunkExecution()
    if n_obs_steps < 1 or n_action_steps < 1:
        raise ValueError(
            f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}"
        )
    d = execution.delay
    if d > n_action_steps:
        raise ValueError(
            f"latency_steps d={d} > n_action_steps Ta={n_action_steps}: each chunk would be "
            f"requested before the previous one arrives; use Ta >= d ({execution.mode} execution)"
        )
    if execution.mode == "rtc" and not getattr(policy, "accepts_prefix", False):
        raise ValueError(
            f"execution 'rtc' needs a policy that takes a committed prefix (accepts_prefix = "
            f"True, called with prefix= and prefix_weights=); {type(policy).__name__} does not"
        )
    envs = [make_env(i < n_videos) for i in range(len(seeds))]
    # max_reward starts below any reward: environments with only negative rewards exist
    results = [EpisodeResult(int(s), False, -math.inf, 0.0, 0) for s in seeds]
    history: list[deque] = []
    chunks: list[list[_Chunk]] = [[] for _ in seeds]
    active = []
    for i, (env, seed, res) in enumerate(zip(envs, seeds, results, strict=True)):
        try:
            obs = _checked(flatten_obs(env.reset(seed=int(seed))[0]))
        except Exception as e:  # noqa: BLE001 -- reported per episode, see _fail
            _fail(res, "reset", e)
            history.append(deque())
            continue
        # before the first step there is no past: repeat the first observation To times
        history.append(deque([obs] * n_obs_steps, maxlen=n_obs_steps))
        active.append(i)
        if hasattr(policy, "episode_started"):
            policy.episode_started(int(seed), env)
        if i < n_videos:
            res.frames.append(env.render())
    t_policy, now = 0.0, 0  # `now`: the step every active episode is at (they run in lockstep)
    while active:
        keys = history[active[0]][0].keys()
        batch = {
            key: np.stack([np.stack([o[key] for o in history[i]]) for i in active])  # (B, To, ...)
            for key in keys
        }
        seeds_now = np.array([results[i].seed for i in active])
        kwargs = {}
        if execution.mode == "rtc" and now > 0:
            # the previous chunk's plan beyond the committed steps, as far as it goes
            left = len(chunks[active[0]][-1].actions) - (n_action_steps + d)
            soft = max(0, min(execution.blend, left))
            if d + soft > 0:
                kwargs["prefix"] = np.stack(
                    [_prefix(chunks[i], now, execution, soft) for i in active]
                )  # (B, d + soft, Da)
                kwargs["prefix_weights"] = rtc_prefix_weights(d, soft)  # (d + soft,)
        t0 = time.perf_counter()
        actions = np.asarray(policy(batch, seeds_now, **kwargs))
        t_policy += time.perf_counter() - t0
        if (
            actions.ndim != 3
            or actions.shape[0] != len(active)
            or actions.shape[1] < n_action_steps
        ):
            raise ValueError(
                f"policy returned actions of shape {actions.shape}; expected ({len(active)}, >= {n_action_steps}, Da)"
            )
        still_active, steps_taken = [], 0
        for row, i in enumerate(active):
            env, res, done = envs[i], results[i], False
            own = chunks[i]
            # a copy: a policy may reuse its output buffer between calls
            own.append(_Chunk(now, now + d if now > 0 else 0, np.array(actions[row])))
            # chunks that no longer lead nor blend into any step from now on
            while len(own) > 1 and own[1].arrival + execution.blend <= now:
                own.pop(0)
            for step in range(now, now + n_action_steps):
                a, lead = _step_action(own, step, execution)
                try:
                    obs, reward, terminated, truncated, info = env.step(a)
                    obs = _checked(flatten_obs(obs))
                    if not np.isfinite(reward):
                        raise FloatingPointError(f"non-finite reward {reward}")
                    if info.get("failure"):
                        raise EnvFailure(str(info["failure"]))
                except Exception as e:  # noqa: BLE001 -- reported per episode, see _fail
                    _fail(res, f"step {res.steps}", e)
                    done = True
                    break
                history[i].append(obs)
                res.actions.append(a)
                res.leads.append(lead)
                res.steps += 1
                steps_taken += 1
                res.max_reward = max(res.max_reward, float(reward))
                res.final_reward = float(reward)
                if outcome_key is not None and not res.success:
                    res.outcome = str(info.get(outcome_key))
                res.success = res.success or is_success(info, success_key)
                if i < n_videos:
                    res.frames.append(env.render())
                if terminated or truncated:
                    done = True
                    break
            if not done:
                still_active.append(i)
        active = still_active
        now += n_action_steps
        if progress is not None:
            progress(steps_taken)
    for env in envs:
        env.close()
    log.debug("rollout: %.2f s in policy calls", t_policy)
    return results


def _checked(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    bad = non_finite_keys(obs)
    if bad:
        raise FloatingPointError(f"non-finite observation in {bad}")
    return obs


def _fail(res: EpisodeResult, where: str, e: Exception) -> None:
    """An env failure ends its own episode only: failed, with the reason kept for the report."""
    res.success = False
    res.error = f"{where}: {type(e).__name__}: {e}"
    log.warning("episode seed %d failed at %s", res.seed, res.error)
