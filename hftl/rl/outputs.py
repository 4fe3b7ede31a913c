"""An agent's folder in SB3's Hub layout, and reading one back.

What :func:`save_agent` writes (to a temporary folder, renamed into place, so a crash never leaves a
half-written agent that looks whole)::

    ppo-CartPole-v1.zip     SB3's own file (model.save): PPO.load and huggingface_sb3 read it
    policy.safetensors      the policy's weights (optimizer.safetensors: Adam's state, to continue training)
    config.json             algorithm, environment and physics, PPO settings, arm, source, study, seed
    results.json            mean_reward / std_reward over the evaluation episodes (huggingface_sb3's keys)
    README.md               a card: library_name stable-baselines3, model-index mean_reward, the transfer's provenance

**An SB3 zip is a pickle** (its ``data`` holds cloudpickled objects): loading one can run code.
:func:`load_agent` therefore rebuilds an hftl agent from ``config.json`` + ``policy.safetensors``
and never opens the zip; it reads a bare SB3 zip only with ``allow_pickle=True``, for a file the
user points at and trusts.

``hftl push AGENT_DIR user/name`` (:func:`hftl.hub.push`) recognises such a folder
(:func:`is_agent_folder`) and uploads :func:`agent_push_files` with the card, so that
``PPO.load(huggingface_sb3.load_from_hub(repo_id, "ppo-CartPole-v1.zip"))`` restores the agent.

Example:
    >>> save_agent("outputs/agent", agent, info)  # doctest: +SKIP
    >>> PPO.load("outputs/agent/ppo-CartPole-v1.zip")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from hftl.errors import ConfigError, ModelNotFoundError, UnsafeWeightsError
from hftl.rl.card import render_agent_card
from hftl.rl.config import PPOConfig
from hftl.rl.deps import require
from hftl.rl.envs import EnvConfig

CONFIG, RESULTS, POLICY, OPTIMIZER = "config.json", "results.json", "policy.safetensors", "optimizer.safetensors"


def zip_name(env_id: str, algo: str = "ppo") -> str:
    """SB3's (and huggingface_sb3's) file name for an agent: ``ppo-CartPole-v1.zip``."""
    return f"{algo}-{env_id}.zip"


def _save_optimizer(optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().clone().contiguous() for i, s in state["state"].items()
               for k, v in s.items()}
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(state["param_groups"])})


def _load_optimizer(optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict = {}
        for key in f.keys():
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = f.get_tensor(key)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_agent(folder: str | Path, agent, info: dict) -> Path:
    """Write the agent (SB3 zip, safetensors, config.json, results.json, README.md) to ``folder``, atomically.

    ``info`` holds what the files record: ``env`` (EnvConfig dict), ``ppo`` (PPOConfig dict), ``arm``,
    ``source_env``, ``study``, ``seed``, ``timesteps``, ``mean_reward``, ``std_reward``, ``episodes``.

    Example:
        >>> save_agent("outputs/agent", agent, {"env": {"id": "CartPole-v1", "physics": {}}, ...})  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env_id = info["env"]["id"]
    agent.save(tmp / zip_name(env_id))
    save_file({k: v.detach().clone().contiguous() for k, v in agent.policy.state_dict().items()}, str(tmp / POLICY))
    _save_optimizer(agent.policy.optimizer, tmp / OPTIMIZER)
    config = {"algo": "ppo", "library": "hftl", "env_id": env_id, **{k: v for k, v in info.items()
                                                                      if k not in ("mean_reward", "std_reward")}}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=str))
    results = {"env_id": env_id, "mean_reward": info["mean_reward"], "std_reward": info["std_reward"],
               "n_evaluation_episodes": info.get("episodes"), "is_deterministic": True,
               "physics": info["env"].get("physics", {}),
               "eval_datetime": datetime.datetime.now().isoformat(timespec="seconds")}
    (tmp / RESULTS).write_text(json.dumps(results, indent=2))
    card = {**info, "env_id": env_id, "env_text": EnvConfig(**info["env"]).describe(),
            "source_text": EnvConfig(**info["source_env"]).describe() if info.get("source_env") else None}
    (tmp / "README.md").write_text(render_agent_card(card))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


def _find_zip(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".zip":
        return path
    zips = sorted(path.glob("*.zip")) if path.is_dir() else []
    return zips[0] if len(zips) == 1 else None


def load_agent(path: str | Path, env: EnvConfig | None = None, allow_pickle: bool = False, seed: int = 0):
    """An SB3 PPO agent from an hftl agent folder (safetensors, no pickle) or, with ``allow_pickle``, an SB3 zip.

    ``env`` replaces the environment the agent was trained on (another physics variant); by default
    it is the one in config.json.

    Example:
        >>> agent = load_agent("outputs/rl_study/runs/parameter/seed0")  # doctest: +SKIP
    """
    _, sb3 = require()
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"Agent '{path}' does not exist: give an hftl agent folder (with {CONFIG} and "
                                 f"{POLICY}) or an SB3 .zip.")
    if path.is_dir() and (path / CONFIG).is_file() and (path / POLICY).is_file():
        return _rebuild(path, env, seed)
    found = _find_zip(path)
    if found is None:
        raise ModelNotFoundError(f"'{path}' holds no agent: no {CONFIG} + {POLICY} (hftl) and no single SB3 .zip.")
    if not allow_pickle:
        raise UnsafeWeightsError(f"'{found}' is an SB3 zip, which is a pickle and can run code when loaded. Load it "
                                 "only if you trust it: pass allow_pickle=True (hftl rl-eval --allow-pickle).")
    from hftl.rl.agents import make_vec_env

    vec = make_vec_env(env, 1, seed) if env is not None else None
    return sb3.PPO.load(found, env=vec, device="cpu")


def _rebuild(folder: Path, env: EnvConfig | None, seed: int):
    from safetensors.torch import load_file

    from hftl.rl.agents import new_agent

    config = json.loads((folder / CONFIG).read_text())
    ppo = PPOConfig(**config["ppo"])  # the agent's own settings (its arm's ent_coef and net_arch included)
    env = env or EnvConfig(**config["env"])
    agent = new_agent(ppo, env, seed=seed)
    try:
        agent.policy.load_state_dict(load_file(str(folder / POLICY)))
    except RuntimeError as e:
        raise ConfigError(f"Agent '{folder}' does not fit environment {env.describe()}: {str(e).splitlines()[0]}") \
            from None
    if (folder / OPTIMIZER).is_file():
        _load_optimizer(agent.policy.optimizer, folder / OPTIMIZER)
    return agent


def agent_config(path: str | Path) -> dict:
    """The config.json of an agent folder ({} when there is none, e.g. a bare SB3 zip)."""
    path = Path(path)
    config = path / CONFIG if path.is_dir() else path.with_name(CONFIG)
    return json.loads(config.read_text()) if config.is_file() else {}


def is_agent_folder(path: str | Path) -> bool:
    """Whether ``path`` is an agent folder written by hftl (its config.json says ``library: hftl`` and an ``algo``).

    Example:
        >>> is_agent_folder("outputs/rl_cartpole_pole_length/runs/policy/seed0")  # doctest: +SKIP
        True
    """
    config = agent_config(path) if Path(path).is_dir() else {}
    return config.get("library") == "hftl" and "algo" in config and "env_id" in config


def agent_push_files(folder: str | Path) -> dict:
    """The files of an agent folder that go to the Hub (repo path -> local file), in SB3's layout.

    The SB3 zip (what ``huggingface_sb3.load_from_hub`` + ``PPO.load`` read), ``policy.safetensors``
    and ``optimizer.safetensors`` (what hftl reads, without unpickling), ``config.json`` and
    ``results.json``; the card (README.md) is the caller's. A folder missing the zip or the weights is
    a :class:`~hftl.errors.HubError` naming them.

    Example:
        >>> sorted(agent_push_files("outputs/agent"))  # doctest: +SKIP
        ['config.json', 'optimizer.safetensors', 'policy.safetensors', 'ppo-CartPole-v1.zip', 'results.json']
    """
    from hftl.errors import HubError

    folder = Path(folder)
    config = agent_config(folder)
    wanted = [zip_name(config["env_id"], config.get("algo", "ppo")), POLICY, CONFIG, RESULTS]
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        raise HubError(f"The agent folder '{folder}' lacks {', '.join(missing)}, so it is not a whole agent; save it "
                       "again (a study's runs/<arm>/seed<N> folders are whole agents). Nothing was uploaded.")
    files = {name: folder / name for name in wanted}
    if (folder / OPTIMIZER).is_file():
        files[OPTIMIZER] = folder / OPTIMIZER
    for extra in ("replay.gif", "replay.mp4"):  # a rendered episode, as huggingface_sb3 pushes one
        if (folder / extra).is_file():
            files[extra] = folder / extra
    return files
