"""RL transfer (hftl.rl): environments and their physics, the arms' weights, the measures, the study, the outputs.

Every PPO here is tiny (2 envs x 64 steps per rollout, a 16-16 network, a few hundred steps), so each
test takes seconds; the numbers of a real study are in the README ("Transfer between RL environments").
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hftl.errors import ConfigError, UnsafeWeightsError
from hftl.rl.config import PPOConfig, RLArm, is_rl_config, rl_study_config_from_dict
from hftl.rl.envs import EnvConfig, make_env
from hftl.rl.measures import (
    ArmSummary,
    auc,
    bootstrap_ci,
    bootstrap_diff_ci,
    compare,
    curve_measures,
    iqm,
    permutation_test,
    steps_to_threshold,
    summarise,
)

TINY_PPO = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2, "net_arch": [16, 16]}


def tiny_study(tmp, **study) -> dict:
    return {"source": {"env": "CartPole-v1", "physics": {"length": 0.5}, "timesteps": 256, "seed": 7},
            "target": {"env": "CartPole-v1", "physics": {"length": 0.25}},
            "ppo": dict(TINY_PPO),
            "study": {"arms": ["scratch", "parameter"], "seeds": 2, "timesteps": 512, "eval_every": 256,
                      "eval_episodes": 2, "threshold": 100, "bootstrap": 200, "output_dir": str(tmp), **study}}


def tiny_agent(env: EnvConfig, seed: int = 0, **ppo):
    from hftl.rl.agents import new_agent

    return new_agent(PPOConfig(**{**TINY_PPO, **ppo}), env, seed)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------- the extra

def test_importing_hftl_does_not_import_gymnasium_or_sb3():
    code = ("import sys, hftl, hftl.cli, hftl.rl, hftl.rl.config, hftl.rl.measures, hftl.rl.report; "
            "print(sorted(m for m in ('gymnasium', 'stable_baselines3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    from hftl.cli import main
    from hftl.rl.deps import require

    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now raises ImportError
    with pytest.raises(ConfigError) as e:
        require()
    assert "pip install 'hftl[rl]'" in one_line(e)
    assert main(["rl-eval", str(tmp_path), "env=CartPole-v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'hftl[rl]'" in err


# --------------------------------------------------------------------------------------- environments

def test_cartpole_physics_are_set_and_derived_values_recomputed():
    env = make_env(EnvConfig("CartPole-v1", {"length": 1.0, "masspole": 0.2, "masscart": 2.0, "force_mag": 5.0}))
    u = env.unwrapped
    assert (u.length, u.masspole, u.masscart, u.force_mag) == (1.0, 0.2, 2.0, 5.0)
    assert u.total_mass == pytest.approx(2.2) and u.polemass_length == pytest.approx(0.2)
    env.reset(seed=0)
    assert u.length == 1.0  # reset keeps the physics

    def after_steps(length):  # the same start and actions: a longer pole falls more slowly
        e = make_env(EnvConfig("CartPole-v1", {"length": length}))
        e.reset(seed=3)
        for _ in range(5):
            obs = e.step(1)[0]
        return obs

    assert not np.allclose(after_steps(0.5), after_steps(1.0))


def test_acrobot_and_mountain_car_physics():
    u = make_env(EnvConfig("Acrobot-v1", {"link_length_1": 1.5, "link_mass_2": 0.5})).unwrapped
    assert (u.LINK_LENGTH_1, u.LINK_MASS_2, u.LINK_LENGTH_2) == (1.5, 0.5, 1.0)
    m = make_env(EnvConfig("MountainCar-v0", {"gravity": 0.002, "force": 0.0015})).unwrapped
    assert (m.gravity, m.force) == (0.002, 0.0015)


def test_unknown_env_id_lists_close_names():
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig("CartPol-v1"))
    text = one_line(e)
    assert "CartPol-v1" in text and "CartPole-v1" in text


def test_physics_parameter_the_env_lacks_lists_the_ones_it_has():
    with pytest.raises(ConfigError) as e:
        make_env(EnvConfig("CartPole-v1", {"pole_length": 1.0}))
    text = one_line(e)
    assert "pole_length" in text and "length" in text and "masspole" in text and "force_mag" in text
    with pytest.raises(ConfigError, match="link_length_1"):
        make_env(EnvConfig("Acrobot-v1", {"length": 1.0}))


def test_config_errors_are_one_line(tmp_path):
    cases = [({"target": {"env": "CartPole-v9"}}, "CartPole-v1"),
             ({"target": {"physics": {"mass": 1}}}, "masspole"),
             ({"source": {"physics": {"mass": 1}}}, "source"),
             ({"study": {"eval_every": 1000}}, "multiple"),
             ({"study": {"arms": ["scratch", "magic"]}}, "distill"),
             ({"study": {"arms": ["parameter", "partial"]}}, "baseline"),
             ({"study": {"seeds": 1}}, "at least 2"),
             ({"study": {"metric": "speed"}}, "jumpstart"),
             ({"study": {"seed_count": 3}}, "study.seeds"),
             ({"targets": {}}, "target"),
             ({"target": {"env": "MountainCarContinuous-v0"}, "study": {"threshold": None}}, None)]
    for data, needle in cases:
        if needle is None:  # MountainCarContinuous has a reward_threshold (90): no error
            assert rl_study_config_from_dict(data).threshold == 90
            continue
        with pytest.raises(ConfigError) as e:
            rl_study_config_from_dict(data)
        assert needle in one_line(e), (data, str(e.value))
    assert is_rl_config({"target": {}}) and not is_rl_config({"base": {}, "study": {}})


# --------------------------------------------------------------------------------------- the arms

@pytest.fixture(scope="module")
def source_agent():
    agent = tiny_agent(EnvConfig("CartPole-v1"), seed=11)
    # Two rollouts: the linear schedule's last update runs at lr 0, so the first one is what moves the weights.
    agent.learn(256)
    return agent


def _state(agent) -> dict:
    return {k: v.clone() for k, v in agent.policy.state_dict().items()}


def test_parameter_transfer_copies_every_weight_and_not_the_optimizer(source_agent):
    from hftl.rl.agents import transfer_parameters

    target = tiny_agent(EnvConfig("CartPole-v1", {"length": 0.25}), seed=1)
    info = transfer_parameters(source_agent, target)
    src, dst = _state(source_agent), _state(target)
    assert set(info["copied"]) == set(src)
    assert all(torch.equal(src[k], dst[k]) for k in src)
    assert target.policy.optimizer.state_dict()["state"] == {}  # fresh Adam


def test_partial_transfer_copies_the_trunk_and_leaves_the_heads_fresh(source_agent):
    from hftl.rl.agents import transfer_partial

    target = tiny_agent(EnvConfig("CartPole-v1", {"length": 0.25}), seed=1)
    fresh = _state(target)
    info = transfer_partial(source_agent, target)
    src, dst = _state(source_agent), _state(target)
    trunk = [k for k in src if k.startswith("mlp_extractor.")]
    assert trunk and sorted(trunk) == info["copied"]
    assert all(torch.equal(src[k], dst[k]) for k in trunk)
    heads = ["action_net.weight", "action_net.bias", "value_net.weight", "value_net.bias"]
    assert sorted(info["fresh"]) == sorted(heads)
    for k in heads:
        assert torch.equal(dst[k], fresh[k])
    for k in ("action_net.weight", "value_net.weight"):  # SB3 starts biases at 0 on both sides
        assert not torch.equal(dst[k], src[k])


def test_policy_transfer_carries_weights_and_optimizer_state(source_agent):
    from hftl.rl.agents import transfer_policy

    target = tiny_agent(EnvConfig("CartPole-v1", {"length": 0.25}), seed=1, ent_coef=0.05)
    transfer_policy(source_agent, target)
    src, dst = _state(source_agent), _state(target)
    assert all(torch.equal(src[k], dst[k]) for k in src)
    s_opt, t_opt = source_agent.policy.optimizer.state_dict(), target.policy.optimizer.state_dict()
    assert s_opt["state"] and set(s_opt["state"]) == set(t_opt["state"])
    assert all(torch.equal(s_opt["state"][i]["exp_avg"], t_opt["state"][i]["exp_avg"]) for i in s_opt["state"])
    assert target.ent_coef == 0.05  # the option to keep exploring


def test_different_spaces_parameter_names_the_layers_partial_still_works(source_agent):
    from hftl.rl.agents import transfer_parameters, transfer_partial

    acrobot = tiny_agent(EnvConfig("Acrobot-v1"), seed=1)  # 6 observations, 3 actions (CartPole: 4, 2)
    with pytest.raises(ConfigError) as e:
        transfer_parameters(source_agent, acrobot)
    text = one_line(e)
    assert "mlp_extractor.policy_net.0.weight: source (16, 4) vs target (16, 6)" in text
    assert "action_net.weight" in text and "partial" in text
    info = transfer_partial(source_agent, acrobot)
    assert info["copied"] == ["mlp_extractor.policy_net.2.bias", "mlp_extractor.policy_net.2.weight",
                              "mlp_extractor.value_net.2.bias", "mlp_extractor.value_net.2.weight"]
    assert "mlp_extractor.policy_net.0.weight" in info["skipped"]
    src, dst = _state(source_agent), _state(acrobot)
    assert torch.equal(src["mlp_extractor.policy_net.2.weight"], dst["mlp_extractor.policy_net.2.weight"])


def test_distillation_moves_the_student_towards_the_teacher(source_agent):
    from hftl.rl.distill import collect_states, distill, kl_loss

    teacher_before = _state(source_agent)
    student = tiny_agent(EnvConfig("CartPole-v1", {"length": 0.25}), seed=2, net_arch=[8])  # a smaller student
    probe = student.policy.obs_to_tensor(collect_states(student, 256))[0]
    with torch.no_grad():
        before = float(kl_loss(student.policy, source_agent.policy, probe))
    rounds = []
    info = distill(student, source_agent, steps=256, rounds=2, epochs=20, lr=3e-3, on_round=rounds.append)
    with torch.no_grad():
        after = float(kl_loss(student.policy, source_agent.policy, probe))
    assert info["steps"] == 256 and rounds == [128, 256]
    assert after < 0.5 * before
    assert all(torch.equal(v, _state(source_agent)[k]) for k, v in teacher_before.items())  # teacher untouched
    with pytest.raises(ConfigError, match="partial"):
        distill(tiny_agent(EnvConfig("Acrobot-v1")), source_agent, 128, 1, 1, 1e-3)


# --------------------------------------------------------------------------------------- the measures

def test_measures_of_synthetic_learning_curves():
    steps = [0, 1024, 2048, 3072, 4096]
    returns = [20.0, 100.0, 480.0, 500.0, 500.0]
    m = curve_measures(steps, returns, threshold=475)
    assert m["jumpstart"] == 20.0 and m["final"] == 500.0 and m["steps"] == 2048
    # trapezoids: (20+100)/2 + (100+480)/2 + (480+500)/2 + 500 = 60 + 290 + 490 + 500 = 1340 per 1024 steps
    assert m["auc"] == pytest.approx(1340 / 4)
    assert auc([0, 100, 200], [0, 100, 100]) == 75.0
    assert steps_to_threshold(steps, [1, 2, 3, 4, 5], 475) is None
    assert curve_measures([0, 10], [500.0, 500.0], 475)["steps"] == 0  # solved before training


def test_iqm_and_bootstrap_known_answers():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # the middle four
    assert iqm(list(range(10)) + [1000, -1000]) == iqm(range(10))  # the tails do not move it
    assert iqm([3.0]) == 3.0
    assert bootstrap_ci([5.0] * 6) == (5.0, 5.0)
    lo, hi = bootstrap_ci(list(range(20)), resamples=500)
    assert lo < iqm(range(20)) < hi and bootstrap_ci(list(range(20)), resamples=500) == (lo, hi)  # seeded
    assert bootstrap_diff_ci([3.0, 3.0], [1.0, 1.0]) == (2.0, 2.0)


def test_permutation_test_exact_p_values():
    # 3 vs 3, fully separated: 2 of the C(6, 3) = 20 splits are as extreme (either direction)
    stat, p = permutation_test([10, 11, 12], [1, 2, 3])
    assert stat == 3.0 and p == pytest.approx(2 / 20)
    assert permutation_test([10, 11, 12, 13, 14], [1, 2, 3, 4, 5])[1] == pytest.approx(2 / 252)
    assert permutation_test([1, 2, 3], [1, 2, 3])[1] == 1.0
    _, p_random = permutation_test(list(range(10, 20)), list(range(10)), permutations=2000)  # C(20,10) > 2000
    assert 1 / 2001 <= p_random < 0.01  # an exact p of 2 / 184756: never 0 from random splits


def test_verdicts_and_failures_to_reach_the_threshold_are_counted():
    assert compare([10, 11, 12, 13, 14], [1, 2, 3, 4, 5], "auc").verdict == "positive transfer"
    assert compare([1, 2, 3, 4, 5], [10, 11, 12, 13, 14], "final").verdict == "negative transfer"
    assert compare([1, 12, 3, 14, 5], [10, 2, 13, 4, 15], "auc").verdict == "no significant difference"
    # steps: lower is better, and a seed that never reached the threshold ranks worst
    fast, never = [1024] * 5, [None] * 5
    c = compare(fast, never, "steps")
    assert c.verdict == "positive transfer" and c.p_value == pytest.approx(2 / 252)
    assert compare(never, fast, "steps").verdict == "negative transfer"
    s = summarise("steps", [1024, None, 2048, None, None])
    assert isinstance(s, ArmSummary) and s.solved == 2 and s.n == 5 and s.median == float("inf")


def test_a_target_the_source_already_solves_is_flagged():
    from hftl.rl.report import RLStudyReport

    summaries = {"scratch": {"steps": summarise("steps", [100, None])}}
    report = RLStudyReport("t", None, ["scratch"], {"scratch": "scratch"}, "scratch", "auc", 475.0, 2, 1024, "a", "b",
                           {"return_on_target": 500.0}, {}, summaries, {})
    assert report.source_solves_target and "already solves the target" in report.warnings()[0]
    report.source = {"return_on_target": 20.0}
    assert not report.warnings()
    report.summaries = {"scratch": {"steps": summarise("steps", [None, None])}}  # a threshold no arm reaches
    assert report.nobody_solved and "No arm reached the threshold 475" in report.warnings()[0]


# --------------------------------------------------------------------------------------- the study

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from hftl.rl.runner import run_rl_study

    out = tmp_path_factory.mktemp("rl_study")
    cfg = tiny_study(out, arms=["scratch", "parameter", "partial", "policy",
                                {"name": "policy_explore", "kind": "policy", "ent_coef": 0.02},
                                {"name": "distill", "kind": "distill", "distill_steps": 256, "distill_rounds": 2,
                                 "distill_epochs": 2, "net_arch": [8]}, "multitask"])
    return cfg, run_rl_study(cfg)


def test_every_arm_runs_and_the_report_has_every_measure(study):
    cfg, report = study
    out = report.output_dir
    assert report.arms == ["scratch", "parameter", "partial", "policy", "policy_explore", "distill", "multitask"]
    assert report.trained == 1 + 7 * 2
    data = json.loads((out / "study.json").read_text())
    for arm in report.arms:
        for r in data["runs"][arm]:
            steps = r["curve"]["steps"]
            assert steps[0] == 0 and steps[-1] >= 512  # jumpstart point, then to the end of the budget
            assert len(r["curve"]["returns"]) == len(steps)
        assert set(data["summaries"][arm]) == {"jumpstart", "steps", "auc", "final"}
    distilled = data["runs"]["distill"][0]["curve"]["steps"]
    assert distilled[:3] == [0, 128, 256] and distilled[-1] == 512  # DAgger rounds count in the budget
    # the transfer arms' jumpstart is the source agent on the target (deterministic actions, same episodes)
    on_target = data["source"]["return_on_target"]
    assert all(j == pytest.approx(on_target) for j in data["measures"]["parameter"]["jumpstart"])
    md = (out / "report.md").read_text()
    assert "| parameter | parameter |" in md and "steps to threshold" in md and "learning_curves.png" in md
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert "policy_explore" in report.summary()
    mt = data["runs"]["multitask"][0]["multitask"]
    assert mt["variants"] == [{"id": "CartPole-v1", "physics": {"length": 0.5}},
                              {"id": "CartPole-v1", "physics": {"length": 0.25}}] and mt["return_on_source"] > 0


def test_multitask_env_runs_every_variant():
    from hftl.rl.agents import make_mixed_vec_env

    vec = make_mixed_vec_env([EnvConfig("CartPole-v1", {"length": 0.5}), EnvConfig("CartPole-v1", {"length": 2.0})],
                             4, seed=0)
    assert [e.unwrapped.length for e in vec.envs] == [0.5, 2.0, 0.5, 2.0]
    with pytest.raises(ConfigError, match="same observation and action spaces"):
        make_mixed_vec_env([EnvConfig("CartPole-v1"), EnvConfig("Acrobot-v1")], 2, seed=0)


def test_a_resumed_study_does_not_retrain_finished_seeds(study, monkeypatch):
    from hftl.rl import runner

    cfg, first = study
    real_train_arm = runner.train_arm

    def no_training(*a, **k):
        raise AssertionError("a finished seed was trained again")

    monkeypatch.setattr(runner, "train_arm", no_training)
    again = runner.run_rl_study(cfg)
    assert again.trained == 0 and again.skipped == 1 + 7 * 2
    assert again.to_dict()["measures"] == first.to_dict()["measures"]
    # a study killed before its last seed: that seed alone is trained on the rerun
    (first.output_dir / "records" / "partial__seed1.json").unlink()
    calls = []
    monkeypatch.setattr(runner, "train_arm", lambda cfg, arm, source, seed: calls.append((arm.name, seed)) or
                        real_train_arm(cfg, arm, source, seed))
    resumed = runner.run_rl_study(cfg)
    assert calls == [("partial", 1)] and resumed.trained == 1


def test_saved_agent_reloads_with_plain_ppo_load_and_acts_the_same(study):
    from huggingface_hub import ModelCard
    from stable_baselines3 import PPO

    from hftl.rl.outputs import load_agent

    _, report = study
    folder = report.output_dir / "runs" / "partial" / "seed0"
    names = {p.name for p in folder.iterdir()}
    assert {"ppo-CartPole-v1.zip", "config.json", "results.json", "README.md", "policy.safetensors"} <= names
    obs = np.stack([make_env(EnvConfig("CartPole-v1", {"length": 0.25})).reset(seed=i)[0] for i in range(16)])
    plain = PPO.load(folder / "ppo-CartPole-v1.zip", device="cpu")
    ours = load_agent(folder)  # from safetensors: the zip is never opened
    a1, _ = plain.predict(obs, deterministic=True)
    a2, _ = ours.predict(obs, deterministic=True)
    assert np.array_equal(a1, a2)
    for k, v in plain.policy.state_dict().items():
        assert torch.equal(v, ours.policy.state_dict()[k])
    results = json.loads((folder / "results.json").read_text())
    assert set(results) >= {"mean_reward", "std_reward"}
    config = json.loads((folder / "config.json").read_text())
    assert config["arm"] == "partial" and config["source_env"] == {"id": "CartPole-v1", "physics": {"length": 0.5}}
    assert config["study"] == report.name and config["env"]["physics"] == {"length": 0.25}
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "stable-baselines3"
    assert card.data.eval_results[0].metric_type == "mean_reward"
    assert card.data.eval_results[0].metric_value == f"{results['mean_reward']:.2f} +/- {results['std_reward']:.2f}"
    assert "CartPole-v1 (length=0.5)" in card.text and "partial" in card.text and report.name in card.text
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        load_agent(folder / "ppo-CartPole-v1.zip")  # a bare SB3 zip only with allow_pickle
    assert load_agent(folder / "ppo-CartPole-v1.zip", allow_pickle=True).predict(obs, deterministic=True)[0].tolist() \
        == a1.tolist()


def test_rl_eval_prints_the_mean_return(study, capsys):
    from hftl.cli import main

    _, report = study
    folder = report.output_dir / "runs" / "parameter" / "seed0"
    assert main(["rl-eval", str(folder), "episodes=3", "physics.length=1.0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 3 and out["env"] == "CartPole-v1 (length=1)" and out["mean_reward"] > 0
    assert main(["rl-eval", str(folder), "episode=3"]) == 2
    assert "episodes" in capsys.readouterr().err


def test_hftl_study_dispatches_an_rl_config(tmp_path):
    from hftl.cli import _is_rl_study

    assert _is_rl_study("recipes/configs/rl/cartpole_pole_length.yaml")
    assert not _is_rl_study("recipes/configs/study/negative_transfer.yaml")


def test_arm_options_are_validated():
    with pytest.raises(ConfigError) as e:
        rl_study_config_from_dict({"study": {"arms": ["scratch", {"name": "p", "kind": "policy", "entropy": 1}]}})
    assert "entropy" in one_line(e) and "ent_coef" in str(e.value)
    cfg = rl_study_config_from_dict({"study": {"arms": ["scratch", {"name": "p", "kind": "policy", "ent_coef": 0.01}]}})
    assert cfg.arms[1] == RLArm("p", "policy", ent_coef=0.01)


# --------------------------------------------------------------------------------------- the Hub

@pytest.fixture
def hub(monkeypatch):
    """The local Hub server (tests/hub_server.py) and a write token in HF_TOKEN."""
    from hub_server import start_fake_hub

    fake = start_fake_hub()
    monkeypatch.setenv("HF_TOKEN", fake.token)
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.server_errors


def test_pushed_agent_loads_with_load_from_hub_and_ppo_load_and_acts_the_same(study, hub, monkeypatch, capsys,
                                                                             tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_sb3 import load_from_hub
    from stable_baselines3 import PPO

    from hftl.cli import main
    from hftl.rl.outputs import load_agent

    _, report = study
    folder = report.output_dir / "runs" / "policy" / "seed0"
    repo = "fake-user/ppo-cartpole-long-pole"
    assert main(["push", str(folder), repo]) == 0  # `hftl push AGENT_DIR REPO_ID`
    assert "/commit/" in capsys.readouterr().out
    assert set(hub.list_files(repo)) == {".gitattributes", "README.md", "ppo-CartPole-v1.zip", "policy.safetensors",
                                         "optimizer.safetensors", "config.json", "results.json"}
    monkeypatch.setenv("TRUST_REMOTE_CODE", "True")  # huggingface_sb3 refuses a pickle without it
    pulled = PPO.load(load_from_hub(repo, "ppo-CartPole-v1.zip"), device="cpu")
    saved = load_agent(folder)
    obs = np.stack([make_env(EnvConfig("CartPole-v1", {"length": 0.25})).reset(seed=i)[0] for i in range(32)])
    assert np.array_equal(pulled.predict(obs, deterministic=True)[0], saved.predict(obs, deterministic=True)[0])
    card = ModelCard.load(hf_hub_download(repo, "README.md"))
    assert card.data.library_name == "stable-baselines3"
    result = card.data.eval_results[0]
    assert result.metric_type == "mean_reward" and result.dataset_name == "CartPole-v1"
    results = json.loads((folder / "results.json").read_text())
    assert result.metric_value == f"{results['mean_reward']:.2f} +/- {results['std_reward']:.2f}"
    # the provenance: source environment, arm and study; the usage code names this repo, and says it is a pickle
    assert "CartPole-v1 (length=0.5)" in card.text and "| Arm | policy" in card.text and report.name in card.text
    assert f'load_from_hub("{repo}", "ppo-CartPole-v1.zip")' in card.text and "<user>/<model>" not in card.text
    assert "pickle" in card.text
    # hftl's own route from the Hub's files: config.json + safetensors, the zip never opened
    local = tmp_path / "pulled"
    for name in ("config.json", "policy.safetensors"):
        hf_hub_download(repo, name, local_dir=local)
    assert np.array_equal(load_agent(local).predict(obs, deterministic=True)[0], saved.predict(obs, deterministic=True)[0])
    # a branch: load_from_hub takes no revision, so that card's code downloads with hf_hub_download
    assert main(["push", str(folder), repo, "--revision", "long-pole"]) == 0
    branch_card = ModelCard.load(hf_hub_download(repo, "README.md", revision="long-pole")).text
    assert f'hf_hub_download("{repo}", "ppo-CartPole-v1.zip", revision="long-pole")' in branch_card


def test_pushing_an_agent_refuses_tokens_an_incomplete_folder_and_a_whole_rl_study(study, hub, tmp_path):
    import shutil

    from hftl.errors import HubError
    from hftl.hub import plan_push, push

    _, report = study
    folder = tmp_path / "agent"
    shutil.copytree(report.output_dir / "runs" / "scratch" / "seed0", folder)
    assert plan_push(folder).kind == "sb3"
    with pytest.raises(HubError) as e:  # a whole study is many agents: say which to push
        plan_push(report.output_dir)
    assert "RL study" in one_line(e) and "runs/" in str(e.value)
    import zipfile

    with zipfile.ZipFile(folder / "ppo-CartPole-v1.zip", "a") as z:  # a token inside the SB3 zip
        z.writestr("notes.txt", "hf_" + "a" * 34)
    with pytest.raises(HubError, match="token"):
        push(folder, "fake-user/leaky")
    (folder / "policy.safetensors").unlink()
    with pytest.raises(HubError) as e:
        plan_push(folder)
    assert "policy.safetensors" in one_line(e)
    assert not hub.requests_of("commit") and not hub.requests_of("create_repo")  # refused before any request


# --------------------------------------------------------------------------------------- rendering

def test_rl_eval_renders_an_episode_as_a_gif(study, tmp_path, capsys):
    pytest.importorskip("pygame")
    from PIL import Image

    from hftl.cli import main

    _, report = study
    gif = tmp_path / "episode.gif"
    folder = report.output_dir / "runs" / "scratch" / "seed0"
    assert main(["rl-eval", str(folder), "episodes=2", "--render", str(gif)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["render"]["frames"] == out["render"]["return"] + 1  # CartPole: the start, then one frame a step
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames > 1 and image.size == (600, 400)
        durations = []
        for i in range(image.n_frames):
            image.seek(i)
            durations.append(image.info["duration"])
    assert sum(durations) == out["render"]["frames"] * 20  # 50 fps; Pillow merges identical frames, not time
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_missing_render_extra_or_format_is_one_line(study, tmp_path, monkeypatch, capsys):
    from hftl.cli import main
    from hftl.rl.render import check_render

    with pytest.raises(ConfigError) as e:
        check_render(tmp_path / "episode.avi")
    assert ".gif or .mp4" in one_line(e)
    pytest.importorskip("pygame")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # importing it now fails, as when not installed
    with pytest.raises(ConfigError) as e:
        check_render(tmp_path / "episode.mp4")
    assert "imageio-ffmpeg" in one_line(e) and "pip install 'hftl[render]'" in str(e.value)
    monkeypatch.setitem(sys.modules, "pygame", None)
    _, report = study
    folder = report.output_dir / "runs" / "scratch" / "seed0"
    assert main(["rl-eval", str(folder), "--render", str(tmp_path / "episode.gif")]) == 2  # before any episode
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs pygame" in err and "pip install 'hftl[render]'" in err
    assert not (tmp_path / "episode.gif").exists()
