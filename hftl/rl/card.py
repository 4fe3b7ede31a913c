"""An RL agent's model card: SB3's Hub metadata (library, tags, model-index mean_reward) and the transfer's provenance.

The metadata follows what huggingface_sb3 writes (``library_name: stable-baselines3``, a
``model-index`` whose metric ``mean_reward`` reads ``"500.00 +/- 0.00"``) and is checked with
:func:`hftl.card_metadata.check_metadata`, so a push of the folder cannot be refused for it. The
template lives here rather than in model_cards/: it is the only card of the RL extra.

Example:
    >>> text = render_agent_card({"env_id": "CartPole-v1", "mean_reward": 500.0, "std_reward": 0.0, ...})  # doctest: +SKIP
    >>> "library_name: stable-baselines3" in text  # doctest: +SKIP
    True
"""

from __future__ import annotations

from hftl.card_metadata import check_metadata

TEMPLATE = """---
{{ card_data }}
---

# PPO agent for {{ env_id }} (hftl, {{ arm }})

A PPO agent (stable-baselines3) trained on **{{ env_text }}**{% if source_text %}, transferred from an agent trained on **{{ source_text }}**{% endif %}. Mean return {{ value }} over {{ episodes }} episodes (deterministic actions).

## How it was made (transfer provenance)

| | |
|---|---|
| Environment | {{ env_text }} |
| Source environment | {{ source_text or "none (trained from scratch)" }} |
| Arm | {{ arm }}{% if arm_text %}: {{ arm_text }}{% endif %} |
{% if transfer %}| Weights from the source | {{ transfer.copied|length }} tensors copied{% if transfer.skipped %}; did not fit: {{ transfer.skipped|join(", ") }}{% endif %}{% if transfer.fresh %}; fresh: {{ transfer.fresh|join(", ") }}{% endif %}{% if transfer.optimizer %}; optimizer state too{% endif %} |
{% endif %}{% if distill %}| Distillation | {{ distill.steps }} target steps over {{ distill.rounds }} DAgger rounds, final KL {{ "%.4f"|format(distill.final_kl) }} |
{% endif %}{% if multitask %}| Multi-task | trained on {{ multitask.variants|length }} variants at once (half the envs each); mean return {{ "%.1f"|format(multitask.return_on_source) }} on the source variant |
{% endif %}| Study | {{ study or "none" }} |
| Seed | {{ seed }} |
| Target training | {{ timesteps }} environment steps |
| PPO | {% for k, v in ppo.items() %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% endfor %} |
| Hardware | {{ hardware }} |
| Training time | {{ "%.1f"|format(train_seconds or 0) }} s |

## How to use

{{ usage }}

## Limitations

Evaluated on the environment variant above only; the physics of another variant can change its return a lot.
"""


def usage_block(repo_id: str, zip_file: str, revision: str | None = None) -> str:
    """The card's marked "how to use" block: huggingface_sb3 + ``PPO.load`` for ``repo_id``, and hftl's safe route.

    ``load_from_hub`` refuses to download a pickle unless ``TRUST_REMOTE_CODE=True`` is set; it takes no
    revision, so a branch's snippet uses ``hf_hub_download`` directly.

    Example:
        >>> "load_from_hub(\"me/ppo-cartpole\"" in usage_block("me/ppo-cartpole", "ppo-CartPole-v1.zip")
        True
    """
    from hftl.cards import USAGE_END, USAGE_START

    if revision:
        lines = ["from huggingface_hub import hf_hub_download",
                 "from stable_baselines3 import PPO", "",
                 f'checkpoint = hf_hub_download("{repo_id}", "{zip_file}", revision="{revision}")']
    else:
        lines = ["import os", "",
                 "from huggingface_sb3 import load_from_hub  # pip install sb3-team-hf-integration",
                 "from stable_baselines3 import PPO", "",
                 'os.environ["TRUST_REMOTE_CODE"] = "True"  # load_from_hub asks you to say that you trust the pickle',
                 f'checkpoint = load_from_hub("{repo_id}", "{zip_file}")']
    code = "\n".join([*lines, "model = PPO.load(checkpoint)  # an SB3 zip is a pickle: load only agents you trust"])
    local = f"hf download {repo_id} --local-dir agent" + (f" --revision {revision}" if revision else "")
    return (f"{USAGE_START}\n```python\n{code}\n```\n\nOr with hftl, from the weights in safetensors (no pickle): "
            f"`{local}`, then `hftl rl-eval agent episodes=10`.\n{USAGE_END}")


def render_agent_card(info: dict) -> str:
    """The agent's README.md: SB3's Hub metadata (library, tags, model-index mean_reward) and the provenance.

    Example:
        >>> text = render_agent_card({"env_id": "CartPole-v1", "mean_reward": 500.0, "std_reward": 0.0})  # doctest: +SKIP
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from hftl.cards import REPO_PLACEHOLDER

    env_id = info["env_id"]
    value = f"{info['mean_reward']:.2f} +/- {info['std_reward']:.2f}"  # huggingface_sb3 writes it so
    data = ModelCardData(
        library_name="stable-baselines3", license="apache-2.0", model_name=f"PPO-{env_id}",
        tags=["reinforcement-learning", "stable-baselines3", "deep-reinforcement-learning", env_id, "hftl",
              "transfer-learning", f"arm-{info.get('arm', 'scratch')}"],
        eval_results=[EvalResult(task_type="reinforcement-learning", task_name="reinforcement-learning",
                                 dataset_type=env_id, dataset_name=env_id, metric_type="mean_reward",
                                 metric_name="mean_reward", metric_value=value)])
    check_metadata(data.to_dict(), "the agent's card")
    zip_file = f"ppo-{env_id}.zip"
    return str(ModelCard.from_template(data, template_str=TEMPLATE, value=value, zip=zip_file,
                                       usage=usage_block(REPO_PLACEHOLDER, zip_file), **info))
