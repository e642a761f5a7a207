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
    scorer = grpo.Scorer(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    seqs = [dict(ids=s.prompt_ids + s.completion_ids, n_prompt=len(s.prompt_ids)) for s in samples]
    cfg = grpo.Config(temperature=temperature, micro_batch_size=64)
    return grpo.precompute_old_logp(scorer, seqs, cfg, "cpu", torch.autocast("cpu", enabled=False))


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


def make_batch(model_dir, adv_values, n_prompt=5, n_completion=4):
    """Two sequences of `n_prompt` prompt + `n_completion` completion tokens, for gradient checks."""
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (2, n_prompt + n_completion))
    attention_mask = torch.ones_like(ids, dtype=torch.bool)
    loss_mask = attention_mask.clone()
    loss_mask[:, :n_prompt] = False
    model = grpo.Scorer(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    adv = torch.tensor(adv_values).repeat_interleave(n_completion)
    return model, ids, attention_mask, loss_mask, adv


def test_prompt_tokens_get_zero_gradient(tiny_model):
    """The loss does not depend on the outputs at prompt positions: their gradient is exactly zero."""
    model, ids, attention_mask, loss_mask, adv = make_batch(tiny_model, [1.0, -0.5])
    cfg = grpo.Config(entropy_coef=0.1)
    captured = {}

    def keep_hidden(module, args, output):  # the final hidden states, all positions [b, S, H]
        output.last_hidden_state.retain_grad()
        captured["h"] = output.last_hidden_state

    model.lm.model.register_forward_hook(keep_hidden)
    stats = model(ids, attention_mask, loss_mask, 1.0, 3)
    weights = grpo.token_weights(loss_mask[:, 1:].sum(1), "token-mean", 2, len(adv), 8)
    loss, _ = grpo.grpo_loss(stats["logp"], stats["logp"].detach(), adv, weights, cfg, entropy=stats["entropy"])
    loss.backward()
    grad = captured["h"].grad  # [b, S, H]; position j predicts token j + 1
    predicts_prompt = ~loss_mask[:, 1:]  # [b, S-1]
    assert grad[:, :-1][predicts_prompt].abs().max() == 0
    assert grad[:, :-1][~predicts_prompt].abs().max() > 0
    assert grad[:, -1].abs().max() == 0  # the last position predicts nothing

    # Perturbing the prompt tokens' own loss terms changes nothing either: a different prompt-only mask is the same.
    grads_a = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    stats = model(ids, attention_mask, loss_mask, 1.0, 3)
    loss2, _ = grpo.grpo_loss(stats["logp"], stats["logp"].detach(), adv, weights, cfg, entropy=stats["entropy"])
    loss2.backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads_a, model.parameters()))


def test_group_with_equal_rewards_contributes_zero_gradient(tiny_model):
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    for std_norm in (True, False):
        assert grpo.group_advantages(rewards, std_norm, 1e-6).abs().max() == 0
    model, ids, attention_mask, loss_mask, adv = make_batch(tiny_model, [0.0, 0.0])
    stats = model(ids, attention_mask, loss_mask, 1.0, 1024)
    weights = grpo.token_weights(loss_mask[:, 1:].sum(1), "token-mean", 2, len(adv), 8)
    loss, _ = grpo.grpo_loss(stats["logp"], stats["logp"].detach(), adv, weights, grpo.Config())
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
