"""The walking skeleton, for real: vLLM rollouts -> rewards -> GRPO loss -> AdamW -> weight sync, on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import grpo
import rapo

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(model: str, out_dir, **kw) -> grpo.Config:
    base = dict(model=model, out_dir=str(out_dir), steps=1, prompts_per_step=4, group_size=8, max_new_tokens=8,
                max_model_len=1024, temperature=1.0, lr=1e-2, micro_batch_size=16, log_samples=0)
    return grpo.Config(**{**base, **kw})


def tiny_prompts(model: str, n: int = 8) -> list[data.Prompt]:
    tok = AutoTokenizer.from_pretrained(model)
    return [data.make_prompt(tok, data.Problem(str(i), f"What is {i} + {i}?", str(2 * i))) for i in range(n)]


def trainer_logprobs(model_dir: str, samples, temperature: float) -> list[torch.Tensor]:
    """The trainer's log-probabilities of each sample's completion tokens, recomputed from `model_dir`."""
    scorer = grpo.Policy(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    ids, attention_mask, loss_mask = grpo.batch_tensors(
        [dict(ids=s.prompt_ids + s.completion_ids, n_prompt=len(s.prompt_ids)) for s in samples], "cpu")  # [b, S]
    with torch.no_grad():
        logp = scorer(ids, attention_mask, loss_mask, temperature, 512)["logp"]  # [N]
    return logp.split(loss_mask.sum(1).tolist())


def char_fraction(char: str):
    return lambda text, prompt: text.count(char) / max(len(text), 1)


def char_fraction_z(text: str, prompt) -> float:
    """Fraction of characters that are 'Z' (a module-level reward, so worker processes can import it)."""
    return text.count("Z") / max(len(text), 1)


def test_engine_serves_the_new_policy_after_sync(tiny_model, engine, tmp_path):
    prompts = tiny_prompts(tiny_model)
    cfg = tiny_config(tiny_model, tmp_path, steps=1)
    grpo.train(cfg, prompts, char_fraction("7"), engine=engine)  # one step, then train() syncs the engine
    new_weights = str(grpo.latest_checkpoint(tmp_path) / "hf")

    # After the sync: the engine's own logprobs of what it samples equal the trainer's with the new weights.
    after = [s for g in engine.generate([p.prompt_ids for p in prompts], 4, 1.0, 8, seeds=[1, 9, 17, 25, 33, 41, 49, 57]) for s in g]
    gap_after = max((lp - torch.tensor(s.logprobs)).abs().max().item()
                    for lp, s in zip(trainer_logprobs(new_weights, after, 1.0), after))
    assert gap_after < 1e-4

    # The same check against an engine holding the old weights fails: a sync that did nothing would be caught.
    old = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    engine.sync_weights(old.state_dict().items())
    before = [s for g in engine.generate([p.prompt_ids for p in prompts], 4, 1.0, 8, seeds=[1, 9, 17, 25, 33, 41, 49, 57]) for s in g]
    gap_before = max((lp - torch.tensor(s.logprobs)).abs().max().item()
                     for lp, s in zip(trainer_logprobs(new_weights, before, 1.0), before))
    assert gap_before > 1e-2, "one step at lr=1e-2 should move the policy far more than the sync tolerance"


@pytest.mark.parametrize("sign", [1, -1])
def test_loop_learns_in_the_direction_of_the_reward(tiny_model, engine, tmp_path, sign):
    """reward = +-(fraction of characters that are 'Z', a token of its own: no BPE merge contains it): it must rise to >= 0.9, or fall, within 25 steps (it takes ~10)."""
    prompts = tiny_prompts(tiny_model)
    reward_fn = char_fraction("Z")
    signed = (lambda text, p: reward_fn(text, p)) if sign > 0 else (lambda text, p: -reward_fn(text, p))
    cfg = tiny_config(tiny_model, tmp_path, steps=25 if sign > 0 else 10, lr=3e-2, adv_std_norm=True)
    history = grpo.train(cfg, prompts, signed, engine=engine)
    fractions = [sign * h["reward"] for h in history]
    start = sum(fractions[:2]) / 2
    assert start < 0.2, "a random tiny model writes few 'Z'"
    if sign > 0:
        assert max(fractions[-3:]) >= 0.9, fractions
    else:
        assert fractions[-1] < start * 0.5 and fractions[-1] < 0.01, fractions


def scatter_reward(text: str, prompt) -> float:
    """A reward in [0, 1] that differs between almost any two texts, so (nearly) every group has a spread."""
    return (sum(map(ord, text)) % 13) / 12


class RecordingEngine:
    """The shared engine, recording every group `generate` returns (the rollouts `train` trains on)."""

    def __init__(self, engine):
        self.engine, self.groups = engine, []

    def generate(self, *args, **kwargs):
        groups = self.engine.generate(*args, **kwargs)
        self.groups += groups
        return groups

    def __getattr__(self, name):  # sync_weights, sleep, wake_up: the engine's own
        return getattr(self.engine, name)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "sum"])
def test_a_train_step_does_not_depend_on_the_micro_batch_size(tiny_model, engine, tmp_path, loss_agg):
    """Same rollouts (same seeds and weights), micro-batches of 1 sequence, of all 32 at once, and by a token budget
    (length-sorted, several passes of unequal size): the same gradient and loss terms. token_weights must be given
    the whole step's sequence and token counts, not the micro-batch's."""
    runs = []
    for mbs, budget in ((1, 0), (32, 0), (32, 150)):
        cfg = tiny_config(tiny_model, tmp_path / f"mbs{mbs}-{budget}", loss_agg=loss_agg, micro_batch_size=mbs,
                          micro_batch_tokens=budget, entropy_coef=0.01, kl_coef=0.1, max_new_tokens=12)
        runs.append(grpo.train(cfg, tiny_prompts(tiny_model), scatter_reward, engine=engine)[0])
    assert runs[0]["grad_norm"] > 1e-3, runs
    for run in runs[1:]:
        for key in ("grad_norm", "kl", "entropy"):
            assert run[key] == pytest.approx(runs[0][key], rel=1e-5, abs=1e-9), (key, runs)
        # the vLLM-vs-trainer gap is float32 rounding (~1e-7), and its mean moves with the batch's shape on some CPUs
        # (1.1% measured on one 2-core box): a normalisation by the micro-batch (x 1/32) would still fail this
        assert run["logprob_gap_mean"] == pytest.approx(runs[0]["logprob_gap_mean"], rel=0.05), runs


@pytest.mark.parametrize("minibatches", [1, 2])
def test_trainer_scores_what_vllm_sampled_at_the_sampling_temperature(tiny_model, engine, tmp_path, minibatches):
    """At T = 0.7, over two steps (the second after a weight sync), the trainer's logprobs of the sampled tokens at
    the rollout weights equal vLLM's: with --minibatches 2 these are pi_old, computed before the first update."""
    cfg = tiny_config(tiny_model, tmp_path, steps=2, temperature=0.7, minibatches=minibatches, lr=1e-3)
    history = grpo.train(cfg, tiny_prompts(tiny_model), scatter_reward, engine=engine)
    assert [h["logprob_gap_max"] < 1e-4 for h in history] == [True, True], history
    assert all(h["logprob_gap_mean"] > 0 for h in history), "the gap must be measured"


def test_ppo_ratio_uses_pi_old_and_the_clip_acts_with_two_minibatches(tiny_model, engine, tmp_path):
    """With --minibatches 2 the second minibatch is scored by updated weights against pi_old from the rollout: under
    a large learning rate its ratios leave [0.8, 1.2] and the clip acts. (With pi_old = pi the ratio is always 1.)"""
    cfg = tiny_config(tiny_model, tmp_path, minibatches=2, lr=5e-2, group_size=4, max_new_tokens=12)
    [m] = grpo.train(cfg, tiny_prompts(tiny_model), scatter_reward, engine=engine)
    assert m["clip_frac_pos_adv"] + m["clip_frac_neg_adv"] > 0.01, m
    cfg = tiny_config(tiny_model, tmp_path / "one", minibatches=1, lr=5e-2, group_size=4, max_new_tokens=12)
    [m] = grpo.train(cfg, tiny_prompts(tiny_model), scatter_reward, engine=engine)
    assert m["clip_frac_pos_adv"] + m["clip_frac_neg_adv"] == 0, "one minibatch: the ratio is exactly 1"


@pytest.mark.parametrize("sign", [1, -1])
def test_each_sample_moves_with_its_own_advantage(tiny_model, engine, tmp_path, sign):
    """One small step on groups of 2: within every group, the sample with the higher reward gains log-probability
    relative to the other (the first-order effect of any descent step on -sum_i A_i log pi(y_i) with A = +-a), in
    both directions of the reward. Advantages attached to the wrong samples break this for some group."""
    recorder = RecordingEngine(engine)
    reward_fn = scatter_reward if sign > 0 else (lambda text, prompt: 1 - scatter_reward(text, prompt))
    cfg = tiny_config(tiny_model, tmp_path, prompts_per_step=8, group_size=2, lr=1e-4, max_new_tokens=12)
    grpo.train(cfg, tiny_prompts(tiny_model), reward_fn, engine=recorder)
    after_dir = str(grpo.latest_checkpoint(tmp_path) / "hf")
    checked = 0
    for group in recorder.groups:
        before = [lp.sum().item() for lp in trainer_logprobs(tiny_model, group, 1.0)]
        after = [lp.sum().item() for lp in trainer_logprobs(after_dir, group, 1.0)]
        rewards = [reward_fn(s.text, None) for s in group]
        if rewards[0] == rewards[1]:
            continue
        hi, lo = (0, 1) if rewards[0] > rewards[1] else (1, 0)
        assert (after[hi] - before[hi]) - (after[lo] - before[lo]) > 0, (rewards, before, after)
        checked += 1
    assert checked >= 5


def prompt_and_completion_batch(model_dir):
    """Three sequences of different prompt and completion lengths (so right padding), through `batch_tensors`."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (3, 6), (7, 2)]  # (prompt tokens, completion tokens)
    seqs = [dict(ids=torch.randint(3, 300, (p + c,), generator=g).tolist(), n_prompt=p) for p, c in shapes]
    ids, attention_mask, loss_mask = grpo.batch_tensors(seqs, "cpu")  # [3, 10] each
    model = grpo.Policy(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    return model, seqs, ids, attention_mask, loss_mask


def test_only_completion_tokens_carry_loss_through_batch_tensors(tiny_model):
    """The loss mask from `batch_tensors` is True exactly at completion tokens; the loss's gradient w.r.t. the
    final hidden states is zero at every position that predicts a prompt token or padding, nonzero elsewhere."""
    model, seqs, ids, attention_mask, loss_mask = prompt_and_completion_batch(tiny_model)
    for row, s in zip(loss_mask.tolist(), seqs):
        assert row == [False] * s["n_prompt"] + [True] * (len(s["ids"]) - s["n_prompt"]) + [False] * (
            len(row) - len(s["ids"]))
    captured = {}

    def keep_hidden(module, args, output):  # the final hidden states, all positions [b, S, H]
        output.last_hidden_state.retain_grad()
        captured["h"] = output.last_hidden_state

    model.lm.model.register_forward_hook(keep_hidden)
    stats = model(ids, attention_mask, loss_mask, 1.0, 3)
    lens = loss_mask.sum(1)  # [b] as train() computes them
    adv = torch.repeat_interleave(torch.tensor([1.0, -0.5, 2.0]), lens)  # [N]
    weights = grpo.token_weights(lens, "token-mean", 3, int(lens.sum()), 8)
    loss, _ = grpo.grpo_loss(stats["logp"], stats["logp"].detach(), adv, weights, eps_low=0.2, eps_high=0.2,
                             entropy=stats["entropy"], entropy_coef=0.1)
    loss.backward()
    grad = captured["h"].grad.abs().sum(-1)  # [b, S]; position j predicts token j + 1
    predicts_completion = loss_mask[:, 1:]  # [b, S-1]
    assert grad[:, :-1][~predicts_completion].max() == 0
    assert grad[:, :-1][predicts_completion].min() > 0
    assert grad[:, -1].max() == 0  # the last position predicts nothing


def test_group_with_equal_rewards_contributes_zero_gradient(tiny_model):
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    for std_norm in (True, False):
        assert grpo.group_advantages(rewards, std_norm, 1e-6).abs().max() == 0
    model, seqs, ids, attention_mask, loss_mask = prompt_and_completion_batch(tiny_model)
    stats = model(ids, attention_mask, loss_mask, 1.0, 1024)
    lens = loss_mask.sum(1)
    weights = grpo.token_weights(lens, "token-mean", 3, int(lens.sum()), 8)
    loss, _ = grpo.grpo_loss(stats["logp"], stats["logp"].detach(), torch.zeros(int(lens.sum())), weights,
                             eps_low=0.2, eps_high=0.2)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "grpo.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("case", ["malformed_row", "missing_field", "empty_file", "missing_model"])
def test_bad_input_gives_one_clear_error_line(tiny_model, tmp_path, case):
    good = json.dumps({"problem": "1+1?", "answer": "2"})
    path = tmp_path / "train.jsonl"
    path.write_text({"malformed_row": good + "\n{not json\n", "missing_field": good + "\n" + json.dumps({"problem": "x"}),
                     "empty_file": "", "missing_model": good}[case])
    model = str(tmp_path / "no-such-model") if case == "missing_model" else tiny_model
    result = run_cli("--model", model, "--data", str(path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"malformed_row": "train.jsonl:2", "missing_field": "field 'answer'", "empty_file": "holds no rows",
                "missing_model": "no-such-model"}[case]
    assert expected in lines[0]


@pytest.mark.parametrize("case", ["unknown_hub_model", "unknown_dataset"])
def test_an_unknown_hub_model_or_dataset_gives_one_clear_error_line(tiny_model, tmp_path, case):
    """Offline (as tests run: HF_HUB_OFFLINE=1), an id neither local nor cached ends in one line, before any load."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    argv = {"unknown_hub_model": ["--model", "nosuch/model", "--data", str(path)],
            "unknown_dataset": ["--model", tiny_model, "--data", "nosuch-dataset"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        grpo.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    expected = {"unknown_hub_model": ["nosuch/model", "not in the local Hugging Face cache", "HF_HUB_OFFLINE",
                                      "hf download nosuch/model"],
                "unknown_dataset": ["nosuch-dataset", "not a name in data.DATASETS", "pope-hard",
                                    "not in the local Hugging Face cache", "local .jsonl/.parquet file"]}[case]
    assert all(part in message for part in expected), message


def test_wandb_gets_the_metrics_of_metrics_jsonl(tiny_model, engine, tmp_path, monkeypatch):
    """--wandb-project, offline (no network): a real wandb run receives every step's metrics line, as logged."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, real_init = [], wandb.init

    def init(**kwargs):  # the real run, with its `log` recorded on the way through
        run = real_init(**kwargs)
        real_log = run.log
        monkeypatch.setattr(run, "log", lambda row, step: (logged.append((step, dict(row))), real_log(row, step=step)))
        return run

    monkeypatch.setattr(wandb, "init", init)
    cfg = tiny_config(tiny_model, tmp_path, steps=2, wandb_project="pope-test")
    history = grpo.train(cfg, tiny_prompts(tiny_model), scatter_reward, engine=engine)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [(m["step"], m) for m in lines] and lines == history
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.stat().st_size > 0


def test_a_stale_weight_sync_stops_the_run_in_one_line(tiny_model, engine, tmp_path, monkeypatch):
    """A planted broken sync (the engine keeps its old weights after the optimizer step): step 0 passes (the engine
    was synced at the start), step 1's rollouts come from stale weights, and the run stops after logging that step,
    naming the bound's flag and the likely causes."""
    monkeypatch.setattr(grpo, "sync", lambda engine, policy, sleep_level: None)
    with pytest.raises(grpo.HealthError, match=r"step 1: vLLM's logprobs differ .* --max-logprob-gap.*weight sync"):
        grpo.train(tiny_config(tiny_model, tmp_path, steps=3), tiny_prompts(tiny_model), char_fraction("7"),
                   engine=engine)
    gaps = [json.loads(line)["logprob_gap_mean"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(gaps) == 2 and gaps[0] < 1e-5 < 1e-3 < gaps[1], gaps


def test_a_drifting_reweighted_reference_stops_the_run(tiny_model, engine, tmp_path):
    """RAPO's reweighted reference past --ref-hat-max-entropy-gain (set below what phi 0.5 over the whole vocabulary
    adds) stops the run at the first step, naming the flags to change."""
    cfg = tiny_config(tiny_model, tmp_path, kl_coef=0.1, kl="forward-exact", ref_nucleus=0.0,
                      ref_hat_max_entropy_gain=1e-6)
    with pytest.raises(grpo.HealthError, match=r"ref_hat_entropy_gain .* --ref-hat-max-entropy-gain.*--ref-nucleus"):
        grpo.train(cfg, tiny_prompts(tiny_model), lambda text, prompt: 0.0, engine=engine,
                   ref_sharpness=rapo.phi_rule(0.5))
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["reweighted_frac"] == 1.0 and logged["ref_hat_entropy_gain"] > 1e-6 and logged["ref_hat_tail"] >= 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for a machine without a CUDA device")
@pytest.mark.parametrize("script", ["grpo", "pope", "evaluate"])
def test_a_gpu_sized_model_without_a_gpu_stops_in_one_line(tmp_path, capsys, script):
    """A 0.2 B-parameter config (no weights: the check counts parameters on the meta device) on this CPU machine: the
    run stops before loading anything, naming what torch sees and --allow-cpu."""
    from transformers import Qwen3Config

    Qwen3Config(vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=4, head_dim=128).save_pretrained(tmp_path / "big")
    module = __import__(script)
    argv = ["--model", str(tmp_path / "big"), "--data" if script != "evaluate" else "--benchmarks", "aime-2025"]
    with pytest.raises(SystemExit) as stop:
        module.main(argv)
    message = str(stop.value.code)
    assert message.startswith("error: --model") and "sees no CUDA device" in message and "--allow-cpu" in message
    assert "\n" not in message
