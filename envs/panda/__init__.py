"""Franka Emika Panda manipulation in MuJoCo: lift and stack, with scripted experts.

* ``scene.py`` - the MjSpec composition over the Franka files shipped in the gymnasium-robotics
  wheel (table, cubes, front and wrist cameras, gravity compensation);
* ``ik.py`` - damped least-squares IK that turns Cartesian commands into joint targets;
* ``env.py`` - ``PandaLiftEnv`` (``PandaLift-v0``) and ``PandaStackEnv`` (``PandaStack-v0``);
* ``experts.py`` - waypoint experts with grasp-yaw, approach-side and stacking-order modes.

The gymnasium ids are registered by ``import envs``; the tasks ``panda_lift``,
``panda_stack`` and ``panda_stack_bimodal`` (the stack env with demonstrations of both orders)
by ``envs.tasks``.
"""
