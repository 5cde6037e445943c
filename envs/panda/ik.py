"""Damped least-squares inverse kinematics for a site (position + orientation), on the model.

``solve_ik`` iterates ``dq = J^T (J J^T + lambda^2 I)^-1 e`` (Wampler 1986; Buss 2004) from
a start configuration, with J = [jacp; jacr] of the site from ``mujoco.mj_jacSite`` restricted
to the arm's joints and e = [position error; rotation error]. The redundant seventh degree
of freedom is spent in the Jacobian's null space pulling towards a rest posture, which keeps
the elbow from drifting over long episodes. It works on a scratch ``MjData`` so the simulated
state is never touched; the result is a joint-position target for the arm's actuators.
"""

from __future__ import annotations

import mujoco
import numpy as np


def yaw_down_rotation(yaw: float) -> np.ndarray:
    """Rotation whose z axis points straight down and whose x axis has heading ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    # columns: x = (c, s, 0), y = z cross x = (s, -c, 0), z = (0, 0, -1)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking ``current`` to ``target`` (3x3 each)."""
    quat_cur, quat_tgt, err = np.empty(4), np.empty(4), np.empty(3)
    mujoco.mju_mat2Quat(quat_cur, current.reshape(-1))
    mujoco.mju_mat2Quat(quat_tgt, target.reshape(-1))
    mujoco.mju_subQuat(err, quat_tgt, quat_cur)  # in current's frame
    return current @ err


def solve_ik(
    model: mujoco.MjModel,
    scratch: mujoco.MjData,
    site_id: int,
    qpos_adr: np.ndarray,
    dof_adr: np.ndarray,
    q_start: np.ndarray,
    target_pos: np.ndarray,
    target_rot: np.ndarray,
    q_rest: np.ndarray,
    damping: float = 0.05,
    rest_gain: float = 0.05,
    max_iters: int = 8,
    tol: float = 5e-4,
) -> tuple[np.ndarray, float]:
    """Joint positions that put ``site_id`` at ``target_pos`` / ``target_rot``.

    Returns (q, position error in metres). Joint limits clip every iterate; an unreachable
    target gives the damped least-squares compromise, never an exception.
    """
    lo, hi = model.jnt_range[model.dof_jntid[dof_adr]].T
    q = np.clip(np.asarray(q_start, dtype=np.float64).copy(), lo, hi)
    jacp = np.zeros((3, model.nv))
    jacr = np.zeros((3, model.nv))
    eye6 = np.eye(6) * damping**2
    pos_err = np.inf
    for _ in range(max_iters):
        scratch.qpos[qpos_adr] = q
        mujoco.mj_kinematics(model, scratch)
        mujoco.mj_comPos(model, scratch)
        pos = scratch.site_xpos[site_id]
        rot = scratch.site_xmat[site_id].reshape(3, 3)
        err = np.concatenate([target_pos - pos, rotation_error(rot, target_rot)])
        pos_err = float(np.linalg.norm(err[:3]))
        if pos_err < tol and np.linalg.norm(err[3:]) < 10 * tol:
            break
        mujoco.mj_jacSite(model, scratch, jacp, jacr, site_id)
        jac = np.vstack([jacp[:, dof_adr], jacr[:, dof_adr]])
        jjt_inv = np.linalg.solve(jac @ jac.T + eye6, np.eye(6))
        pinv = jac.T @ jjt_inv
        null = np.eye(len(dof_adr)) - pinv @ jac
        q = np.clip(q + pinv @ err + null @ (rest_gain * (q_rest - q)), lo, hi)
    return q, pos_err
