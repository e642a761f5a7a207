"""The metrics the README's claims rest on, each pinned to its definition on a case small enough to work by hand,
through the function the trainer and the toys call: solvability at k and pass@k (evaluate.solvability,
evaluate.summarize, rapo_world.measure), the ways' shares, the hard-set threshold of mining and the prefix search
and their sampling cost (pope.mine_hard, pope.find_prefixes), rollouts and sampled tokens per step and per arm
(grpo.step_metrics, pope_compare.run_seed; rapo_world's in tests/test_toys_rapo.py), clip fractions
(grpo.grpo_loss -> step_metrics), the vLLM-vs-trainer logprob gap (grpo.update -> step_metrics), and the learning
rate the optimizer really gets under each --lr-schedule (grpo.train, pope.PopeConfig's default).

Sampling is scripted (`ScriptedEngine`: chosen texts and lengths), so every number below is exact."""

from __future__ import annotations

import contextlib
import json
import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import data
import evaluate
import grpo
import pope
import reward
import pope_world
import pope_compare
import rapo_world
from rollout import Sample


class ScriptedEngine:
    """Stands in for rollout.Engine: sample i of a prompt reads `text(prompt_ids, i)` and has `length(i, call)`
    completion tokens, `call` counting generate calls from 0. Weight syncs are accepted and ignored."""

    def __init__(self, text=lambda ids, i: str(i), length=lambda i, call: i + 1):
        self.text, self.length, self.calls = text, length, 0

    def generate(self, prompts, n, temperature, max_tokens, seeds=None, top_p=1.0, top_k=0):
        groups = [[Sample(list(ids), [5] * self.length(i, self.calls), [0.0] * self.length(i, self.calls),
                          self.text(ids, i), "stop") for i in range(n)] for ids in prompts]
        self.calls += 1
        return groups

    def sync_weights(self, weights):
        pass


def first_correct(counts: dict[str, int]):
    """A reward under which the first counts[id] samples of problem `id` are correct (sample i's text is "i").
    A guided prompt counts only if its prefix has at least counts[id] lines (then its first sample is correct)."""
    def reward_fn(text: str, prompt: data.Prompt) -> float:
        if prompt.kind == "guided":
            return float(text == "0" and prompt.prefix.count("\n") + 1 >= counts[prompt.problem.id])
        return float(int(text) < counts[prompt.problem.id])
    return reward_fn


def bare_prompt(i: int, pid: str | None = None) -> data.Prompt:
    """A prompt whose token ids are just [i] (the scripted engine needs nothing more)."""
    return data.Prompt(data.Problem(pid or f"p{i}", f"problem {i}", "1"), [i])


# ----------------------------------------------------------------------------------------------------------------
# Solvability at k and pass@k


# 3 problems, k = 4 samples each, with c = 1, 0 and 2 correct:
#   solvable = problems with >= 1 correct / problems = 2/3   (c = 1 counts: "at least one", not "more than one")
#   pass@1 = mean c / k            = (1/4 + 0 + 2/4) / 3                    = 0.25
#   pass@2 = 1 - C(4-c, 2) / C(4, 2): c=1: 1 - 3/6 = 1/2, c=0: 0, c=2: 1 - 1/6 = 5/6;  mean (1/2 + 5/6) / 3 = 4/9
#   pass@4 = solved among 4 samples: (1 + 0 + 1) / 3                         = 2/3
CORRECT = {"p0": 1, "p1": 0, "p2": 2}
EXPECTED = {"pass@1": 0.25, "pass@2": 4 / 9, "pass@4": 2 / 3}


def test_solvability_is_at_least_one_correct_of_k_and_pass_at_k_the_unbiased_estimate():
    prompts = [bare_prompt(i) for i in range(3)]
    pool = reward.RewardPool(0)
    metrics = evaluate.solvability(ScriptedEngine(), pool, first_correct(CORRECT), prompts, k=4, temperature=1.0,
                                   max_tokens=4, seed=0, step=0, top_p=1.0, top_k=0, rank=0, world=1, device="cpu")
    pool.close()
    assert metrics == pytest.approx({"eval_solvable_at_4": 2 / 3, **{f"eval_pass_at_{k}": EXPECTED[f"pass@{k}"]
                                                                     for k in (1, 2, 4)}})
    # the toy comparison's summary reads the same numbers, renamed (pope_compare.measured)
    assert pope_compare.measured(metrics, 4) == pytest.approx({"solvable": 2 / 3, **EXPECTED})


def test_summarize_counts_solved_problems_and_averages_pass_at_k_over_problems():
    """evaluate.py's results: the same 3 problems as scores [P, n] (the first c samples correct)."""
    problems = [data.Problem(pid, "q", "1") for pid in CORRECT]
    scores = np.array([[1.0] * c + [0.0] * (4 - c) for c in CORRECT.values()])  # [3, 4]
    b = evaluate.summarize(problems, scores, [1, 2, 4])
    assert (b["problems"], b["n"], b["solved"]) == (3, 4, 2)
    assert {k: b[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert [p["c"] for p in b["per_problem"]] == [1, 0, 2]
    assert [p["pass@2"] for p in b["per_problem"]] == pytest.approx([1 / 2, 0, 5 / 6])


def test_rapo_toy_measure_gives_pass_at_k_and_the_ways_shares_by_kind():
    """rapo_world.measure on 2 held-out problems, n = 4 answers each, written by hand:
        wrap:   careful, careful with a miscopy, direct, direct   -> rewards 1 0 0 0
        add13:  remainder, direct, direct, direct                 -> rewards 1 0 0 0
    pass@k for k up to n / 4 = 1: 1/4 on each kind and overall; careful's share on wrap 1/2, remainder's on add13
    1/4; the right answers: careful's on wrap, remainder's on add13."""
    rng = random.Random(0)
    wrap, add13 = rapo_world.make_problem(rng, "wrap"), rapo_world.make_problem(rng, "add13")
    answers = {0: [rapo_world.answer("careful", wrap.problem), rapo_world.answer("careful", wrap.problem, 1.0, rng)]
               + [rapo_world.answer("direct", wrap.problem)] * 2,
               1: [rapo_world.answer("remainder", add13.problem)] + [rapo_world.answer("direct", add13.problem)] * 3}
    prompts = [data.Prompt(wrap, [0]), data.Prompt(add13, [1])]
    m = rapo_world.measure(ScriptedEngine(text=lambda ids, i: answers[ids[0]][i]), prompts, n=4, temperature=1.0,
                           max_tokens=8, seed=0)
    assert set(m) == {"all", "wrap", "add13"} and m["all"] == {"pass@1": 0.25}
    assert m["wrap"]["pass@1"] == 0.25 and m["wrap"]["share_careful"] == 0.5 and m["wrap"]["share_direct"] == 0.5
    assert m["add13"]["pass@1"] == 0.25 and m["add13"]["share_remainder"] == 0.25 and m["add13"]["share_other"] == 0
    assert m["wrap"]["right_by_careful"] == 1.0 and m["add13"]["right_by_remainder"] == 1.0  # who solved each kind
    assert m["add13"]["right_by_direct"] == 0.0


# ----------------------------------------------------------------------------------------------------------------
# POPE: the hard set, the prefix search, and what each sampled


@pytest.fixture(scope="module")
def toy_tokenizer():
    return AutoTokenizer.from_pretrained(pope_world.SHIPPED_MODEL)


def test_mining_keeps_exactly_the_problems_with_no_correct_sample(toy_tokenizer, tmp_path):
    """k = 3 samples of lengths 1, 2, 3 tokens per problem; q0 gets 1 correct, q1 none, q2 two: only q1 is hard
    (one correct answer in 128 already makes a problem not hard). Each problem's cost: 1 + 2 + 3 = 6 tokens."""
    problems = [data.Problem(f"q{i}", f"problem {i}", "1") for i in range(3)]
    hard = pope.mine_hard(ScriptedEngine(), toy_tokenizer, problems, first_correct({"q0": 1, "q1": 0, "q2": 2}),
                          tmp_path / "mine.jsonl", k=3, max_tokens=4)
    assert [p.id for p in hard] == ["q1"]
    rows = [json.loads(line) for line in (tmp_path / "mine.jsonl.rank0").read_text().splitlines()]
    assert rows == [{"id": "q0", "correct": 1, "k": 3, "tokens": 6}, {"id": "q1", "correct": 0, "k": 3, "tokens": 6},
                    {"id": "q2", "correct": 2, "k": 3, "tokens": 6}]


def test_prefix_search_takes_the_first_candidate_with_one_correct_sample_and_counts_its_cost(toy_tokenizer, tmp_path):
    """16-line solutions at --prefix-max-fraction 0.25, 4 candidates: prefixes of 1, 2, 3, 4 lines, tried in rounds.
    k = 2 samples per candidate; in round j (the j-th generate call) sample i has i + 1 + j tokens, so a round
    costs (1 + j) + (2 + j) = 3 + 2j tokens: 3, 5, 7, 9. Under the reward only sample 0 can be correct (c <= 1).
        a needs 1 line:    solved in round 0     samples 2   tokens 3
        b needs 3 lines:   solved in round 2     samples 6   tokens 3 + 5 + 7     = 15
        c needs 99 lines:  never; keeps the 4-line prefix (fallback "longest"), samples 8, tokens 3 + 5 + 7 + 9 = 24"""
    solution = "\n".join(f"line {j}" for j in range(16))
    problems = [data.Problem(pid, f"problem {pid}", "1", solution) for pid in "abc"]
    found = pope.find_prefixes(ScriptedEngine(length=lambda i, call: i + 1 + call), toy_tokenizer, problems,
                               first_correct({"a": 1, "b": 3, "c": 99}), tmp_path / "prefixes.jsonl", k=2,
                               max_tokens=16)
    got = {pid: (r["lines"], r["solvable"], r["samples"], r["tokens"]) for pid, r in found.items()}
    assert got == {"a": (1, True, 2, 3), "b": (3, True, 6, 15), "c": (4, False, 8, 24)}


# ----------------------------------------------------------------------------------------------------------------
# One step's metrics: rollouts, tokens, clip fractions, logprob gap


def sample(completion: list[int], sampler_logp: list[float] | None = None, finish: str = "stop") -> Sample:
    return Sample([1], completion, sampler_logp or [0.0] * len(completion), "", finish)


def loss_sums(**kw) -> dict:
    """What grpo.update returns, all zero unless given."""
    return {"gap_sum": 0.0, "gap_max": 0.0, "n_tokens": 0, "grad_norm_sum": 0.0, "clip_pos": 0, "n_pos": 0,
            "clip_neg": 0, "n_neg": 0, "entropy": 0.0, **kw}


def test_step_metrics_counts_rollouts_and_tokens_and_divides_each_sum_by_its_own_count():
    """2 prompts (a guided and an unguided copy) x G = 2 rollouts of 3, 5 | 2, 6 completion tokens (one cut):
        samples 4, sampled_tokens 16, len_mean 4, len_max 6, truncated 1/4
        rewards [[1, 0], [0, 0]]: reward 1/4, zero-spread groups 1/2; guided mean 1/2 (solved), unguided 0
    and the loss's sums (hand-made): 1 of 4 positive-advantage tokens clipped, 3 of 6 negative ones; entropy 8 over
    16 tokens; gaps summing to 0.8 over 16 tokens, the largest 0.3."""
    prompts = [data.Prompt(bare_prompt(0).problem, [0], kind="guided", prefix="x"), bare_prompt(0)]
    groups = [[sample([5] * 3), sample([5] * 5)], [sample([5] * 2), sample([5] * 6, finish="length")]]
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    sums = loss_sums(gap_sum=0.8, gap_max=0.3, n_tokens=16, grad_norm_sum=2.0, clip_pos=1, n_pos=4, clip_neg=3,
                     n_neg=6, entropy=8.0)
    m = grpo.step_metrics(3, prompts, groups, rewards, sums, 0, 1e-3, ["guided", "unguided"], {}, "cpu")
    assert (m["step"], m["samples"], m["sampled_tokens"], m["len_max"]) == (3, 4, 16, 6)
    assert m == pytest.approx({**m, "len_mean": 4.0, "truncated_frac": 0.25, "reward": 0.25, "zero_std_frac": 0.5,
                               "reward_unguided": 0.0, "solve_rate_unguided": 0.0, "reward_guided": 0.5,
                               "solve_rate_guided": 1.0, "clip_frac_pos_adv": 0.25, "clip_frac_neg_adv": 0.5,
                               "entropy": 0.5, "logprob_gap_mean": 0.05, "logprob_gap_max": 0.3, "grad_norm": 2.0,
                               "lr": 1e-3})


def test_clip_counts_only_tokens_whose_clip_holds_for_their_advantage_sign():
    """eps_low 0.2, eps_high 0.28 (different, so swapping them shows). The ratio rho = exp(logp - old_logp):
        A > 0, rho 1.30, 1.25, 0.70: clipped only above 1.28 -> 1 of 3 (0.70 is below 0.8, but with A > 0 the
                                     surrogate keeps its gradient there)
        A < 0, rho 0.70, 0.75, 0.82, 1.30: clipped only below 0.8 -> 2 of 4
        A = 0, rho 1.5: neither count"""
    ratios = torch.tensor([1.30, 1.25, 0.70, 0.70, 0.75, 0.82, 1.30, 1.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 0.0])
    _, m = grpo.grpo_loss(ratios.log(), torch.zeros(8), adv, torch.full((8,), 1 / 8), eps_low=0.2, eps_high=0.28)
    assert (m["clip_pos"], m["n_pos"], m["clip_neg"], m["n_neg"]) == (1, 3, 2, 4)
    fractions = grpo.step_metrics(0, [bare_prompt(0)], [[sample([5] * 4), sample([5] * 4)]], torch.tensor([[1., 0.]]),
                                  loss_sums(**m, n_tokens=8), 0, 1e-3, ["unguided"], {}, "cpu")
    assert (fractions["clip_frac_pos_adv"], fractions["clip_frac_neg_adv"]) == (pytest.approx(1 / 3), 0.5)


class TablePolicy(torch.nn.Module):
    """A policy whose log-probability of token t is table[t] whatever the context: the trainer's side of the gap
    is known exactly. Called like grpo.Policy."""

    def __init__(self, table: list[float]):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))

    def forward(self, input_ids, attention_mask, loss_mask, temperature, chunk_size, ref=None):
        logp = self.table[input_ids[:, 1:][loss_mask[:, 1:]]]  # [N] at the completion tokens, as Policy
        return {"logp": logp, "entropy": torch.zeros_like(logp)}


def test_logprob_gap_is_the_mean_and_max_of_the_absolute_difference_over_tokens():
    """One group of two rollouts, one micro-batch each. The trainer gives token 2 log-prob -1 and token 3 -2; vLLM
    reported:
        rollout A: token 3 at -1.7                 gap |-2 - (-1.7)|             = 0.3
        rollout B: tokens 2, 3 at -1.1, -2.0       gaps |-1 - (-1.1)|, |-2 + 2|  = 0.1, 0
    logprob_gap_mean = (0.3 + 0.1 + 0) / 3 tokens = 0.4 / 3; logprob_gap_max = 0.3 (in the first micro-batch: the
    max is over all of them). Signed differences would sum to -0.2, not 0.4. Rewards [1, 0]: A's advantage is
    +1/2 on its 1 token, B's -1/2 on 2; with one minibatch the ratio is 1, so no clip."""
    groups = [[sample([3], [-1.7]), sample([2, 3], [-1.1, -2.0])]]
    rewards = torch.tensor([[1.0, 0.0]])
    cfg = grpo.Config(micro_batch_size=1, adv_std_norm=False, max_new_tokens=2, temperature=1.0)
    policy = TablePolicy([0.0, 0.0, -1.0, -2.0])
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    sums = grpo.update(policy, None, optimizer, grpo.rollout_tensors(groups, rewards, None, cfg, "cpu"), cfg, "cpu",
                       contextlib.nullcontext(), {})
    assert (sums["n_tokens"], sums["n_pos"], sums["n_neg"], sums["clip_pos"], sums["clip_neg"]) == (3, 1, 2, 0, 0)
    m = grpo.step_metrics(0, [bare_prompt(0)], groups, rewards, sums, 0, 0.0, ["unguided"], {}, "cpu")
    assert (m["samples"], m["sampled_tokens"]) == (2, 3)
    assert m["logprob_gap_mean"] == pytest.approx(0.4 / 3) and m["logprob_gap_max"] == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------------------------
# The toys' per-arm budgets


def fake_train(calls: list):
    """Stands in for grpo.train: each step logs prompts_per_step x group_size rollouts of 3 tokens each, and the
    eval at the last step; the config of every call is kept."""
    def train(cfg, prompts, reward_fn, eval_prompts=None, engine=None, ref_sharpness=None):
        calls.append(cfg)
        per_step = cfg.prompts_per_step * cfg.group_size
        return [{"step": s, "samples": per_step, "sampled_tokens": 3 * per_step, "entropy": 1.0, "reward": 0.0,
                 "clip_frac_pos_adv": 0.1 * s, "clip_frac_neg_adv": 0.05,
                 **({f"eval_solvable_at_{cfg.eval_k}": 0.5, "eval_pass_at_1": 0.25} if s == cfg.steps - 1 else {})}
                for s in range(cfg.steps)]
    return train


def test_toy_comparison_gives_every_arm_at_least_popes_rollouts_prefix_search_included(toy_tokenizer, tmp_path,
                                                                                       monkeypatch):
    """2 hard problems, 2 steps x 3 prompts; POPE's group 2; k = 2 per prefix candidate. Nothing is ever correct, so
    the search tries all 4 candidates (3, 7, 10, 14 of 17 lines) of both problems: 2 x 4 x 2 = 16 rollouts of 5
    tokens = 80 tokens. POPE's budget: 16 + 2 x 3 x 2 = 28 rollouts, so GRPO's group is ceil(28 / (2 x 3)) = 5
    (rounded up: 4 would give it fewer rollouts than POPE).
        grpo: 2 x 3 x 5 = 30 rollouts (>= 28), 3 x 30 = 90 tokens
        pope: 2 x 3 x 2 = 12 in training + 16 searched = 28 rollouts, 3 x 12 + 80 = 116 tokens"""
    calls = []
    monkeypatch.setattr(grpo, "train", fake_train(calls))
    cfg = pope_compare.ToyConfig(out_dir=str(tmp_path), n_hard=2, arms="grpo,pope", steps=2, prompts_per_step=3,
                                group_size=2, eval_every=2, eval_k=2, prefix_k=2)
    engine = ScriptedEngine(text=lambda ids, i: "no answer", length=lambda i, call: 5)
    results = pope_compare.run_seed(cfg, ["grpo", "pope"], engine, toy_tokenizer, seed=0)
    assert [c.group_size for c in calls] == [5, 2]
    assert {arm: (results[arm]["group_size"], results[arm]["rollouts"], results[arm]["sampled_tokens"])
            for arm in ("grpo", "pope")} == {"grpo": (5, 30, 90), "pope": (2, 28, 116)}
    # "clip_frac" as pope_compare defines it: the largest over steps of clip_frac_pos_adv + clip_frac_neg_adv, a sum
    # of two fractions with different denominators (step 1: 0.1 + 0.05), not clipped tokens / all tokens
    assert results["grpo"]["clip_frac"] == pytest.approx(0.15)
    assert results["base"]["final"]["solvable"] == 0.0 and results["pope"]["final"]["solvable"] == 0.5


# ----------------------------------------------------------------------------------------------------------------
# The learning rate the optimizer gets


@pytest.fixture
def optimizer_lrs(monkeypatch):
    """Every AdamW.step's learning rates, one list per step (one entry per parameter group)."""
    seen, step = [], torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return seen


def tiny_run(cls, model, engine, out_dir, **kw) -> list[dict]:
    """A few steps on 2 prompts, group 2, 4 new tokens: seconds."""
    tok = AutoTokenizer.from_pretrained(model)
    prompts = [data.make_prompt(tok, data.Problem(str(i), f"What is {i} + {i}?", str(2 * i))) for i in range(2)]
    cfg = cls(**{**dict(model=model, out_dir=str(out_dir), prompts_per_step=2, group_size=2, max_new_tokens=4,
                        max_model_len=1024, micro_batch_size=4, log_samples=0, eval_every=0, lr=1e-3), **kw})
    return grpo.train(cfg, prompts, lambda text, prompt: float(len(text) % 2), engine=engine)


@pytest.mark.parametrize("schedule, decay_steps, expected", [
    ("constant", 0, [1, 1, 1, 1]),
    # H = --steps = 4: (1 + cos(pi s / 4)) / 2 = 1, (1 + 1/sqrt 2) / 2 = 0.854, 1/2, (1 - 1/sqrt 2) / 2 = 0.146
    ("cosine", 0, [1, (1 + 0.5**0.5) / 2, 0.5, (1 - 0.5**0.5) / 2]),
    # H = 2: 1, (1 + cos(pi / 2)) / 2 = 1/2, then 0 from step 2 on
    ("cosine", 2, [1, 0.5, 0, 0]),
])
def test_the_optimizer_gets_the_scheduled_learning_rate(tiny_model, engine, tmp_path, optimizer_lrs, schedule,
                                                        decay_steps, expected):
    history = tiny_run(grpo.Config, tiny_model, engine, tmp_path, steps=4, lr_schedule=schedule,
                       lr_decay_steps=decay_steps)
    assert np.array(optimizer_lrs) == pytest.approx(1e-3 * np.array(expected)[:, None], abs=1e-12)
    assert [h["lr"] for h in history] == pytest.approx([1e-3 * e for e in expected], abs=1e-12)  # logged as used


def test_pope_default_schedule_is_effectively_constant(tiny_model, engine, tmp_path, optimizer_lrs):
    """pope.py: cosine over the POPE authors' 100000-step horizon. Step 1: (1 + cos(pi / 1e5)) / 2 = 1 - 2.5e-10;
    step 100: (1 + cos(pi / 1000)) / 2 = 1 - 2.5e-6, still >= 0.9999 of --lr."""
    tiny_run(pope.PopeConfig, tiny_model, engine, tmp_path, steps=2, grad_checkpointing=False)
    assert [lr for [lr] in optimizer_lrs] == pytest.approx([1e-3, 1e-3], rel=1e-9)
    cfg = pope.PopeConfig()
    assert (cfg.lr_schedule, cfg.lr_decay_steps) == ("cosine", 100_000)
    assert grpo.learning_rate(cfg, 100) >= 0.9999 * cfg.lr
    assert grpo.learning_rate(cfg, 100) == pytest.approx(cfg.lr * (1 + math.cos(math.pi / 1000)) / 2)
