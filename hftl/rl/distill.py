"""Policy distillation, DAgger-style: a student matches the teacher's action distribution on states it visits.

Each round the student acts in the target environment (sampling from its own policy, so the data
covers the states *it* reaches: the point of DAgger, Ross et al. 2011); the states are added to a
growing set, and the student is trained to minimise KL(teacher || student) of the action
distributions on all of them. The teacher is only queried, never trained. Written here rather than
taken from ``imitation``, which pins older gymnasium and SB3 versions. The environment steps the
student takes count in the arm's budget; PPO then trains it on the rest.

Example:
    >>> info = distill(student, teacher, steps=2048, rounds=4, epochs=10, lr=1e-3, on_round=print)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from hftl.errors import ConfigError


def _check_spaces(student, teacher) -> None:
    if student.observation_space.shape != teacher.observation_space.shape or \
            str(student.action_space) != str(teacher.action_space):
        raise ConfigError("Distillation needs the teacher to act on the student's observations: the spaces differ "
                          f"(observations {teacher.observation_space} vs {student.observation_space}, actions "
                          f"{teacher.action_space} vs {student.action_space}). Use the partial arm instead.")


def collect_states(student, steps: int) -> np.ndarray:
    """``steps`` observations (rounded up to whole vector steps) from the student acting in its own envs."""
    env = student.get_env()
    obs = env.reset()
    states = []
    for _ in range(-(-steps // env.num_envs)):
        states.append(obs)
        actions, _ = student.policy.predict(obs, deterministic=False)
        obs, _, _, _ = env.step(actions)
    return np.concatenate(states)


def kl_loss(student_policy, teacher_policy, obs):
    """Mean KL(teacher || student) of the action distributions at ``obs`` (a tensor batch)."""
    import torch

    with torch.no_grad():
        teacher = teacher_policy.get_distribution(obs).distribution
    student = student_policy.get_distribution(obs).distribution
    kl = torch.distributions.kl_divergence(teacher, student)
    return (kl.sum(-1) if kl.dim() > 1 else kl).mean()  # Gaussian actions: one KL per action dimension


def distill(student, teacher, steps: int, rounds: int, epochs: int, lr: float, batch_size: int = 256,
            seed: int = 0, on_round=None) -> dict:
    """Train ``student`` (an SB3 PPO agent) to act like ``teacher`` over ``rounds`` DAgger rounds.

    ``on_round(steps_so_far)`` is called after each round (the study records a point of the learning
    curve there). Returns the steps taken, the states gathered and the final KL.

    Example:
        >>> distill(student, teacher, steps=1024, rounds=2, epochs=5, lr=1e-3)["steps"]  # doctest: +SKIP
        1024
    """
    import torch

    _check_spaces(student, teacher)
    optimizer = torch.optim.Adam(student.policy.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    per_round = max(1, steps // rounds)
    states: list[np.ndarray] = []
    taken, loss = 0, float("nan")
    for r in range(rounds):
        new = collect_states(student, per_round if r < rounds - 1 else steps - taken)
        taken += len(new)
        states.append(new)
        data = student.policy.obs_to_tensor(np.concatenate(states))[0]
        student.policy.set_training_mode(True)
        for _ in range(epochs):
            for idx in torch.randperm(len(data), generator=generator).split(batch_size):
                batch_loss = kl_loss(student.policy, teacher.policy, data[idx])
                optimizer.zero_grad()
                batch_loss.backward()
                optimizer.step()
                loss = float(batch_loss.detach())
        student.policy.set_training_mode(False)
        if on_round is not None:
            on_round(taken)
    return {"steps": taken, "states": int(sum(len(s) for s in states)), "rounds": rounds, "final_kl": loss}
