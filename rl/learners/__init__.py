"""The learners that need torch and RLlib: PPO's network (:mod:`rl.learners.module`) and its
LearnerGroup on logged slates (:mod:`rl.learners.ppo`).

Everything else in :mod:`rl` is numpy; importing it loads neither torch nor Ray.
"""
