"""Planar geometry of the PushT block: the T's rectangles, keypoints and exact goal coverage.

Everything here is in the Diffusion Policy reference's 512 x 512 pixel frame (Chi et al. 2023,
arXiv 2303.04137; their pymunk ``add_tee``): x to the right, y *down* (image rows), angles
measured from +x towards +y (clockwise on screen). A pose is ``(x, y, theta)`` of the T's body
frame, whose origin is the middle of the bar's top edge, with the stem pointing along +y:

    bar  = [-60, 60] x [  0,  30]     (120 x 30)
    stem = [-15, 15] x [ 30, 120]     ( 30 x 90)     total height 120

The two rectangles share only the segment y = 30, |x| <= 15, so their areas add up to the T's
area (6300 px^2) and coverage can be summed over rectangle pairs. Coverage is the area of
(T at pose) intersected with (T at goal) over the T's area, computed exactly by clipping convex
polygons (Sutherland-Hodgman) and the shoelace formula.
"""

from __future__ import annotations

import numpy as np

#: Goal pose of the T's body frame (reference: x, y, theta = 256, 256, pi/4).
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])

#: The T's two rectangles in its body frame, counter-clockwise in the y-down frame is not
#: needed: clipping below handles either orientation. (2, 4, 2) = (rect, corner, xy).
T_RECTS = np.array(
    [
        [[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]],  # bar
        [[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]],  # stem
    ]
)
T_AREA = 120.0 * 30.0 + 30.0 * 90.0  # 6300 px^2

#: Area centroid of the T in its body frame (bar 3600 px^2 at y=15, stem 2700 px^2 at y=75).
T_CENTROID = np.array([0.0, (3600.0 * 15.0 + 2700.0 * 75.0) / T_AREA])

#: Polar second moment of area about the centroid divided by the area (px^2): the squared
#: radius of gyration; it sets the block's rotational friction and inertia.
T_GYRATION_SQ = (
    3600.0 * ((120.0**2 + 30.0**2) / 12.0 + (T_CENTROID[1] - 15.0) ** 2)
    + 2700.0 * ((30.0**2 + 90.0**2) / 12.0 + (75.0 - T_CENTROID[1]) ** 2)
) / T_AREA

#: The 9 keypoints in the body frame: the bar's 4 corners, the stem's 4 corners, the origin.
T_KEYPOINTS = np.concatenate([T_RECTS.reshape(8, 2), np.zeros((1, 2))], axis=0)  # (9, 2)

#: Outline of the T (8 corners, in order around the boundary) in the body frame.
T_OUTLINE = np.array(
    [
        [-60.0, 0.0],
        [60.0, 0.0],
        [60.0, 30.0],
        [15.0, 30.0],
        [15.0, 120.0],
        [-15.0, 120.0],
        [-15.0, 30.0],
        [-60.0, 30.0],
    ]
)


def rotation(theta: float) -> np.ndarray:
    """2 x 2 rotation matrix taking body-frame vectors to the world frame."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def to_world(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Body-frame points (..., 2) of a T at ``pose`` (x, y, theta) -> world points (..., 2)."""
    pose = np.asarray(pose, dtype=np.float64)
    return points @ rotation(pose[2]).T + pose[:2]


def to_body(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World points (..., 2) -> body frame of a T at ``pose``."""
    pose = np.asarray(pose, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) - pose[:2]) @ rotation(pose[2])


def t_keypoints(pose: np.ndarray) -> np.ndarray:
    """The 9 keypoints (see ``T_KEYPOINTS``) of a T at ``pose`` in world pixels, (9, 2)."""
    return to_world(pose, T_KEYPOINTS)


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned shoelace area of a simple polygon (N, 2); 0 for fewer than 3 vertices."""
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of convex polygon ``subject`` inside convex ``clip``.

    Both (N, 2), either winding. Returns the intersection polygon (M, 2), M may be 0.
    """
    out = _clip(_as_tuples(subject), _as_tuples(clip))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _as_tuples(poly: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in poly]


def _clip(subject: list[tuple[float, float]], clip: list[tuple[float, float]]):
    """Sutherland-Hodgman on plain floats (tiny polygons: numpy's per-call cost dominates)."""
    # Orient the clip polygon so that "inside" is the left of each edge (positive cross).
    n = len(clip)
    signed = sum(
        clip[i][0] * clip[(i + 1) % n][1] - clip[(i + 1) % n][0] * clip[i][1] for i in range(n)
    )
    if signed < 0:
        clip = clip[::-1]
    out = subject
    for i in range(n):
        if not out:
            break
        ax, ay = clip[i]
        bx, by = clip[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        pts = out
        out = []
        m = len(pts)
        side = [ex * (py - ay) - ey * (px - ax) for px, py in pts]
        for j in range(m):
            px, py = pts[j]
            qx, qy = pts[(j + 1) % m]
            sp, sq = side[j], side[(j + 1) % m]
            if sp >= 0:
                out.append((px, py))
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                out.append((px + t * (qx - px), py + t * (qy - py)))
    return out


def _area(poly: list[tuple[float, float]]) -> float:
    n = len(poly)
    if n < 3:
        return 0.0
    twice = sum(
        poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1] for i in range(n)
    )
    return 0.5 * abs(twice)


def t_coverage(pose: np.ndarray, goal_pose: np.ndarray = GOAL_POSE) -> float:
    """Fraction of the T's area at ``goal_pose`` covered by the T at ``pose``, in [0, 1].

    Exact: the sum over the 2 x 2 rectangle pairs of their convex intersection areas.
    """
    pose = np.asarray(pose, dtype=np.float64)
    goal_pose = np.asarray(goal_pose, dtype=np.float64)
    # Cheap reject: every point of a T lies within 81 px of its centroid.
    c0 = to_world(pose, T_CENTROID)
    c1 = to_world(goal_pose, T_CENTROID)
    if np.hypot(*(c0 - c1)) > 205.0:
        return 0.0
    rects = [_as_tuples(r) for r in to_world(pose, T_RECTS)]  # 2 x 4 corners
    goals = [_as_tuples(g) for g in to_world(goal_pose, T_RECTS)]
    area = sum(_area(_clip(r, g)) for r in rects for g in goals)
    return float(min(max(area / T_AREA, 0.0), 1.0))


def point_in_t(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Whether world points (..., 2) lie inside the T at ``pose``; bool (...)."""
    b = to_body(pose, points)
    x, y = b[..., 0], b[..., 1]
    in_bar = (np.abs(x) <= 60.0) & (y >= 0.0) & (y <= 30.0)
    in_stem = (np.abs(x) <= 15.0) & (y >= 30.0) & (y <= 120.0)
    return in_bar | in_stem


def distance_to_t(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Euclidean distance from world points (..., 2) to the T at ``pose`` (0 inside)."""
    b = to_body(pose, points)
    best = None
    for rect in T_RECTS:
        lo, hi = rect.min(axis=0), rect.max(axis=0)
        d = np.maximum(np.maximum(lo - b, b - hi), 0.0)
        dist = np.linalg.norm(d, axis=-1)
        best = dist if best is None else np.minimum(best, dist)
    return best
