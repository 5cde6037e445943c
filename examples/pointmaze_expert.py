"""Scripted expert for gymnasium-robotics' ``PointMaze_Medium-v3`` (any PointMaze map works).

Each step it lists the near-shortest routes over the maze's free cells (BFS-pruned search),
pulls each one taut through the cell edges it crosses (funnel algorithm, kept off wall
corners), and tracks a velocity along the chosen one: towards the point ``lookahead`` ahead,
slowing before sharp turns. Routes within ``tie_tolerance`` (one cell) of the shortest, such as
the two ways round the Medium maze's central wall block, are both open, and the episode's mode
picks: ``"left"`` takes the one furthest to the left seen in the direction of travel,
``"right"`` the one furthest to the right. Without a near-tie the shortest route is taken.

The protocol for user experts, which ``scripts/collect.py --expert MODULE:FACTORY`` calls::

    def make_expert(env: gym.Env) -> Expert   # here: examples.pointmaze_expert:make_expert
    class Expert:
        def reset(self, seed: int) -> None    # right after env.reset(seed=seed): draw the mode
                                              # from np.random.default_rng([seed, STREAM])
        def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray  # action
        mode: str                             # optional: the episode's strategy (recorded)
        MODES: tuple[str, ...]                # optional: all modes, for stable mode indices

``obs`` is the env's dict observation flattened to one key per leaf: here ``"observation"``
(4,) = [x, y, vx, vy], ``"achieved_goal"`` (2,) and ``"desired_goal"`` (2,); the action is
(2,) float32 in [-1, 1]. Here the action is a function of ``obs`` and ``mode`` alone (no
timers, no plan kept between steps; the caches only save time), so it is easy to imitate.
Only numpy is needed; gymnasium-robotics only to make the env (``continuing_task=False``).
"""

from __future__ import annotations

from collections import deque
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import gymnasium as gym

Cell = tuple[int, int]

# Mixed into the seed so that the mode draw is independent of the env's np_random (which
# gymnasium seeds from the bare seed); the same tag as the PushT expert's (envs.experts).
EXPERT_STREAM = 0xE4BE27
MODES = ("left", "right")
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def free_cells(maze_map: list[list[Any]]) -> np.ndarray:
    """Boolean grid, True where the ball may go (1 = wall; 0, "r", "g", "c" are all free)."""
    return np.array([[c != 1 for c in row] for row in maze_map], dtype=bool)


def _neighbours(free: np.ndarray, cell: Cell) -> list[Cell]:
    rows, cols = free.shape
    cand = [(cell[0] + di, cell[1] + dj) for di, dj in _STEPS]
    return [(i, j) for i, j in cand if 0 <= i < rows and 0 <= j < cols and free[i, j]]


def bfs_distances(free: np.ndarray, goal: Cell) -> np.ndarray:
    """Moves from every cell to ``goal`` through 4-connected free cells (-1: unreachable)."""
    dist = np.full(free.shape, -1, dtype=int)
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        cell = queue.popleft()
        for n in _neighbours(free, cell):
            if dist[n] < 0:
                dist[n] = dist[cell] + 1
                queue.append(n)
    return dist


def cell_routes(free: np.ndarray, start: Cell, goal: Cell, slack: int = 0) -> list[list[Cell]]:
    """Every simple cell path start -> goal at most ``slack`` moves longer than the shortest.

    Shortest first; ``slack=0`` gives all shortest paths. The BFS distance field prunes the
    search, so only near-shortest paths are ever expanded.
    """
    dist = bfs_distances(free, goal)
    if not free[start] or dist[start] < 0:
        raise ValueError(f"no path from {start} to {goal}")
    budget = dist[start] + slack
    routes: list[list[Cell]] = []

    def extend(path: list[Cell]) -> None:
        if path[-1] == goal:
            routes.append(path)
            return
        for n in _neighbours(free, path[-1]):
            if n not in path and len(path) + dist[n] <= budget:
                extend([*path, n])

    extend([start])
    return sorted(routes, key=len)


def _signed_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the loop ``a`` then ``b`` backwards (same ends): < 0 when ``a`` lies left of ``b``."""
    loop = np.concatenate([a, b[::-1]])
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _cross(o: tuple, a: tuple, b: tuple) -> float:
    """z of (a - o) x (b - o): > 0 when b is left of the ray o -> a (x right, y up)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def funnel(start: tuple, portals: list[tuple[tuple, tuple]], goal: tuple) -> np.ndarray:
    """Shortest polyline start -> goal through ``portals`` ((left, right) points in travel order).

    The "simple stupid funnel" string-pull (Mononen 2010). Its vertices are portal ends, so the
    path, and with it the steering, moves continuously with ``start``.
    """
    portals = [(start, start), *portals, (goal, goal)]
    path, apex, left, right = [start], start, start, start
    i, i_left, i_right = 1, 0, 0
    while i < len(portals):
        p_left, p_right = portals[i]
        if _cross(apex, right, p_right) >= 0:  # the right side narrows the funnel...
            if apex != right and _cross(apex, left, p_right) >= 0:  # ...past the left side:
                path.append(left)  # the left end is a corner of the path; go on from there
                apex, right, i_right, i = left, left, i_left, i_left + 1
                continue
            right, i_right = p_right, i
        if _cross(apex, left, p_left) <= 0:  # the same, mirrored
            if apex != left and _cross(apex, right, p_left) <= 0:
                path.append(right)
                apex, left, i_left, i = right, right, i_right, i_right + 1
                continue
            left, i_left = p_left, i
        i += 1
    if path[-1] != goal:
        path.append(goal)
    return np.array(path, dtype=np.float64)


class PointMazeExpert:
    """Taut shortest-route follower for a PointMaze; see the module docstring.

    The class attributes below are its tuning (metres, seconds); the defaults give 100% success
    on PointMaze_Medium-v3 with the ball at least 0.2 m (centre) from every wall.
    """

    MODES = MODES  # the collect script reads this for stable mode indices
    inset = 0.4  # route corners stay this far from wall corners (ball radius is 0.1)
    fade = 0.25  # ... until the ball is this close to the edge they are on
    lookahead = 0.4  # steer at the route point this far ahead (metres)
    chord = 0.4  # turns are measured between chords this long (metres)
    preview = 2.0  # corners further along the route than this cannot slow the ball yet
    v_max = 3.5  # m/s; the env clips speed at 5, and slower is easier to imitate
    a_turn = 8.0  # lateral acceleration allowed in turns (m/s^2): ~1.4 m/s round a corner
    a_brake = 8.0  # deceleration planned before corners (full force gives ~24 m/s^2)
    k_v = 0.4  # action per m/s of velocity error: no bang-bang, yet tight tracking

    def __init__(self, maze: Any, slack: int = 3, tie_tolerance: float = 1.0) -> None:
        """``maze``: a gymnasium-robotics ``Maze`` (``env.unwrapped.maze``)."""
        self.maze = maze
        self.free = free_cells(maze.maze_map)
        self.slack = slack
        self.tie_tolerance = tie_tolerance * maze.maze_size_scaling
        # Two routes round a wall block enclose at least the block: 1 cell. Less is one route.
        self.min_area = 0.8 * maze.maze_size_scaling**2
        half = 0.5 * maze.maze_size_scaling
        walls = np.array([maze.cell_rowcol_to_xy(c) for c in np.argwhere(~self.free)])
        self._lo, self._hi = walls - half, walls + half
        self._routes: dict[tuple[Cell, Cell], list[list[Cell]]] = {}
        self._portals: dict[tuple[Cell, ...], list[tuple[tuple, ...]]] = {}
        self.mode = MODES[0]

    def reset(self, seed: int) -> None:
        """Start an episode: draw its mode from ``seed`` (independently of the env's draws)."""
        rng = np.random.default_rng([seed, EXPERT_STREAM])
        self.mode = MODES[int(rng.integers(len(MODES)))]

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The action, (2,) float32 in [-1, 1], for a flattened observation."""
        state = np.asarray(obs["observation"], dtype=np.float64)
        pos, vel = state[:2], state[2:4]
        path = self.route(pos, np.asarray(obs["desired_goal"], dtype=np.float64))
        # Sample the route ahead: steer at the point `lookahead` along it (corners get rounded
        # off, not stopped at), and read its turns from chords `chord` long, which see the
        # funnel's two 45 degree kinks round a wall corner as the one 90 degree turn they are.
        t = np.arange(0.0, self.preview + 1e-9, 0.1)
        m = round(self.chord / 0.1)
        pts = _sample(path, np.concatenate([[self.lookahead], t]))
        heading = pts[0] - pos
        heading /= max(float(np.linalg.norm(heading)), 1e-9)
        chords = pts[1 + m :] - pts[1:-m]
        chords /= np.maximum(np.linalg.norm(chords, axis=1), 1e-9)[:, None]
        turn = np.arccos(np.clip(np.sum(chords[:-m] * chords[m:], axis=1), -1.0, 1.0))
        # Curvature ~ turn / chord caps the speed (lateral acceleration v^2 * curvature <=
        # a_turn), and braking at a_brake reaches that cap in time. The path moves continuously
        # with the ball, and so does this limit.
        v_turn = np.sqrt(self.a_turn * self.chord / np.maximum(turn, 1e-6))
        speed = min(self.v_max, float(np.min(np.sqrt(v_turn**2 + 2 * self.a_brake * t[m:-m]))))
        action = self.k_v * (speed * heading - vel)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def route(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The polyline (pos, ..., goal) this episode's mode follows from ``pos``."""
        start = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(pos))
        end = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(goal))
        if (start, end) not in self._routes:
            self._routes[start, end] = cell_routes(self.free, start, end, self.slack)
        a, b = (float(pos[0]), float(pos[1])), (float(goal[0]), float(goal[1]))
        paths = [funnel(a, self.portals(r, a), b) for r in self._routes[start, end]]
        lengths = np.array([np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in paths])
        best = int(np.argmin(lengths))
        # Near-ties: routes within tolerance of the shortest. The area between a route and the
        # shortest says on which side it passes (< 0: left); cell paths that pull taut to the
        # same line (say, either way across an open 2 x 2 block) enclose none: one route.
        side = -1.0 if self.mode == "left" else 1.0
        scores = []
        for k in np.flatnonzero(lengths <= lengths[best] + self.tie_tolerance):
            area = side * _signed_area(paths[k], paths[best])
            scores.append((area if abs(area) > self.min_area else 0.0, -lengths[k], k))
        return paths[max(scores)[2]]

    def portals(self, cells: list[Cell], pos: tuple) -> list[tuple[tuple, tuple]]:
        """(left, right) ends of the edges a cell route crosses, pulled in from wall corners.

        The pull-in fades out as the ball nears an edge, so crossing it (and so leaving the
        route's first cell) never makes the path jump, even when the ball is off-centre.
        """
        key = tuple(cells)
        if key not in self._portals:
            self._portals[key] = [self._edge(a, b) for a, b in pairwise(cells)]
        out = []
        for (l0, l1), (r0, r1), (ldx, ldy), (rdx, rdy) in self._portals[key]:
            f = min(1.0, _segment_distance(pos, (l0, l1), (r0, r1)) / self.fade)
            out.append(((l0 + f * ldx, l1 + f * ldy), (r0 + f * rdx, r1 + f * rdy)))
        return out

    def _edge(self, a: Cell, b: Cell) -> tuple[tuple, ...]:
        """Left corner, right corner, and the pull-in of each, of the edge from cell a to b."""
        ca, cb = self.maze.cell_rowcol_to_xy(np.array(a)), self.maze.cell_rowcol_to_xy(np.array(b))
        along = (cb - ca) / np.linalg.norm(cb - ca)
        left = np.array([-along[1], along[0]])
        corners, pulls = [], []
        for side in (left, -left):
            corner = (ca + cb) / 2 + side * 0.5 * self.maze.maze_size_scaling
            # Only a lone wall cell at the corner juts into the route (a convex corner to
            # round); two make a straight wall, which the route never runs along.
            touching = np.all((self._lo <= corner) & (corner <= self._hi), axis=1).sum()
            corners.append(tuple(float(v) for v in corner))
            pulls.append(tuple(float(v) for v in -side * self.inset * (touching == 1)))
        return corners[0], corners[1], pulls[0], pulls[1]

    def wall_distance(self, pts: np.ndarray) -> np.ndarray:
        """Distance from each point (N, 2) to the nearest wall cell."""
        gap = np.maximum(np.maximum(self._lo - pts[:, None], pts[:, None] - self._hi), 0.0)
        return np.linalg.norm(gap, axis=2).min(axis=1)


def _segment_distance(p: tuple, a: tuple, b: tuple) -> float:
    abx, aby = b[0] - a[0], b[1] - a[1]
    t = ((p[0] - a[0]) * abx + (p[1] - a[1]) * aby) / (abx * abx + aby * aby)
    t = min(1.0, max(0.0, t))
    return float(np.hypot(p[0] - a[0] - t * abx, p[1] - a[1] - t * aby))


def _sample(path: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at arc lengths ``s`` along ``path``, continued straight on past its end."""
    seg = np.diff(path, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    keep = seg_len > 1e-9  # the funnel can repeat a vertex
    if not keep.any():
        return np.repeat(path[:1], len(s), axis=0)
    tail = seg[keep][-1] / seg_len[keep][-1]
    pts = np.vstack([path[:1], path[1:][keep], path[-1] + tail * (s.max() + 1.0)])
    cum = np.concatenate([[0.0], np.cumsum(seg_len[keep]), [seg_len.sum() + s.max() + 1.0]])
    return np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1)


def make_expert(env: gym.Env) -> PointMazeExpert:
    """Factory for the collect script: an expert for ``env``'s maze (call ``reset(seed)`` next)."""
    return PointMazeExpert(env.unwrapped.maze)
