"""POPE on the tiny model with real vLLM: guided prompts, separate groups, the prefix search, resumable caches."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

import common
import data
import evaluate
import grpo
import pope
import reward

ROOT = Path(__file__).resolve().parents[1]


def problem(i: int, n_lines: int = 40) -> data.Problem:
    solution = "\n".join(f"step {j} of problem {i}" for j in range(n_lines))
    return data.Problem(f"p{i}", f"Problem number {i}?", str(i), solution)


def test_guided_prompt_holds_the_prefix_and_it_carries_no_loss(tiny_model, engine, tmp_path, monkeypatch):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    p = problem(1, n_lines=8)
    prefix = "step 0 of problem 1\nstep 1 of problem 1"
    guided = data.make_guided_prompt(tok, p, prefix)
    unguided = data.make_prompt(tok, p)
    text = tok.decode(guided.prompt_ids)
    assert prefix in text and p.problem in text and prefix not in tok.decode(unguided.prompt_ids)
    assert guided.kind == "guided" and guided.prefix == prefix

    seen = []  # (input_ids, loss_mask) of every trainer forward pass
    forward = grpo.Policy.forward

    def spy(self, input_ids, attention_mask, loss_mask, *args, **kwargs):
        seen.append((input_ids.clone(), loss_mask.clone()))
        return forward(self, input_ids, attention_mask, loss_mask, *args, **kwargs)

    monkeypatch.setattr(grpo.Policy, "forward", spy)
    cfg = grpo.Config(model=tiny_model, out_dir=str(tmp_path), steps=1, prompts_per_step=1, group_size=4,
                      max_new_tokens=8, max_model_len=1024, log_samples=0)
    grpo.train(cfg, [guided], lambda text, prompt: float(len(text) % 2), engine=engine)
    n = len(guided.prompt_ids)
    for input_ids, loss_mask in seen:
        assert torch.equal(input_ids[:, :n], torch.tensor(guided.prompt_ids).expand(len(input_ids), n))
        assert not loss_mask[:, :n].any()  # the whole guided prompt, prefix included, is masked out
        assert loss_mask[:, n].all()  # the first generated token carries loss


def test_guided_and_unguided_copies_are_separate_groups(tiny_model, engine, tmp_path):
    """Reward 1 on every guided sample, 0 on every unguided one: pooled, they would give nonzero advantages; as
    separate groups every group has zero spread, so no gradient flows and the kinds are logged apart."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = pope.PopeConfig(model=tiny_model, out_dir=str(tmp_path), steps=1, prompts_per_step=2, group_size=4,
                          max_new_tokens=8, max_model_len=1024, log_samples=0, eval_every=0, lr=1.0)
    hard = [problem(1, n_lines=8)]
    prompts = pope.training_set(tok, hard, {"p1": {"prefix": "step 0 of problem 1", "lines": 1}}, cfg)
    assert [p.kind for p in prompts] == ["unguided", "guided"]
    cfg.eval_every, cfg.eval_k = 1, 3  # the unguided hard set's solvability, measured during training
    history = grpo.train(cfg, prompts, lambda text, prompt: float(prompt.kind == "guided"), engine=engine,
                         eval_prompts=[prompts[0]])
    m = history[0]
    assert m["zero_std_frac"] == 1.0 and m["grad_norm"] < 1e-3  # only the entropy bonus remains
    assert m["reward_guided"] == 1.0 and m["reward_unguided"] == 0.0
    assert m["eval_solvable_at_3"] == 0.0 and m["eval_pass_at_1"] == 0.0  # unguided copies never score here


def solvable_from(lines_needed: dict[str, int]):
    """A reward under which problem i is solved exactly when its guided prefix has >= lines_needed[i] lines."""
    return lambda text, prompt: float(bool(prompt.prefix) and prompt.prefix.count("\n") + 1 >= lines_needed[prompt.problem.id])


def test_prefix_search_returns_the_shortest_solvable_candidate(tiny_model, engine, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    hard = [problem(1), problem(2), problem(3), data.Problem("p4", "no solution", "4")]
    # 40 lines -> candidates of 2, 5, 7 and 10 lines (floor(0.25 * j / 4 * 40): never more than 25%)
    reward_fn = solvable_from({"p1": 2, "p2": 6, "p3": 99, "p4": 1})
    found = pope.find_prefixes(engine, tok, hard, reward_fn, tmp_path / "prefixes.jsonl", k=2, max_tokens=4)
    assert (found["p1"]["lines"], found["p1"]["solvable"]) == (2, True)
    assert (found["p2"]["lines"], found["p2"]["solvable"]) == (7, True)  # 5 lines is too short, 7 is the next
    assert (found["p3"]["lines"], found["p3"]["solvable"]) == (10, False)  # fallback: the longest candidate
    # the search's cost per problem: k = 2 samples per round it took part in (1, 3 and 4 rounds), and their tokens
    assert [found[i]["samples"] for i in ("p1", "p2", "p3")] == [2, 6, 8]
    assert 0 < found["p1"]["tokens"] <= 2 * 4 and found["p3"]["tokens"] > found["p1"]["tokens"]
    assert found["p1"]["prefix"] == "\n".join(problem(1).solution.split("\n")[:2])
    assert "p4" not in found  # no oracle solution, no guided copy
    dropped = pope.find_prefixes(engine, tok, hard[2:3], reward_fn, tmp_path / "drop.jsonl", k=2, max_tokens=4,
                                 fallback="drop")
    assert dropped["p3"]["prefix"] is None


class CountingEngine:
    """Wraps the engine and records which prompts were sampled (and can stop after `fail_after` calls)."""

    def __init__(self, engine, fail_after=None):
        self.engine, self.prompts, self.calls, self.fail_after = engine, [], 0, fail_after

    def generate(self, prompts, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.prompts += [tuple(p) for p in prompts]
        return self.engine.generate(prompts, **kwargs)


def test_mining_and_prefix_search_resume_without_redoing_finished_problems(tiny_model, engine, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    problems = [problem(i) for i in range(6)]
    unsolved = lambda text, prompt: float(prompt.problem.id in {"p1", "p4"})  # p1, p4 are easy; the rest hard
    first = CountingEngine(engine, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        pope.mine_hard(first, tok, problems, unsolved, tmp_path / "mine.jsonl", k=2, max_tokens=4, batch_size=2)
    assert len(first.prompts) == 4  # two batches of two finished before the kill
    second = CountingEngine(engine)
    hard = pope.mine_hard(second, tok, problems, unsolved, tmp_path / "mine.jsonl", k=2, max_tokens=4, batch_size=2)
    assert [p.id for p in hard] == ["p0", "p2", "p3", "p5"]
    assert second.prompts == [tuple(data.make_prompt(tok, p).prompt_ids) for p in problems[4:]]  # only the rest
    rows = [json.loads(line) for line in (tmp_path / "mine.jsonl.rank0").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"p{i}" for i in range(6)]  # each problem recorded exactly once

    # p0-p2 are solved by the first (2-line) candidate; p3-p5 need 6 lines, i.e. the third round (7 lines)
    reward_fn = solvable_from({p.id: 2 if int(p.id[1:]) < 3 else 6 for p in problems})
    first = CountingEngine(engine, fail_after=2)  # killed before round 3
    with pytest.raises(KeyboardInterrupt):
        pope.find_prefixes(first, tok, problems, reward_fn, tmp_path / "pre.jsonl", k=2, max_tokens=4)
    second = CountingEngine(engine)
    found = pope.find_prefixes(second, tok, problems, reward_fn, tmp_path / "pre.jsonl", k=2, max_tokens=4)
    assert {i: row["lines"] for i, row in found.items()} == {"p0": 2, "p1": 2, "p2": 2, "p3": 7, "p4": 7, "p5": 7}
    finished_first = {p.problem for p in problems[:3]}
    sampled_again = {tok.decode(ids) for ids in second.prompts}
    assert len(second.prompts) == 3 * 3  # p3-p5 redo their three rounds
    assert not any(q in text for q in finished_first for text in sampled_again)


class SeedRecorder:
    """A stand-in engine that samples nothing: it records each request's (prompt, seed, n) and returns n empty
    completions (so every problem stays hard and every prefix candidate unsolved)."""

    def __init__(self):
        self.requests = []  # (prompt ids, seed, n), in call order

    def generate(self, prompts, n, temperature, max_tokens, seeds=None, top_p=1.0, top_k=0):
        self.requests += [(tuple(ids), seed, n) for ids, seed in zip(prompts, seeds)]
        return [[SimpleNamespace(text="", completion_ids=[0])] * n for _ in prompts]


def test_stage_seeds_are_distinct_and_far_apart():
    seeds = [common.stage_seed(0, stage, r, i) for stage in (common.MINING, common.PREFIX, common.EVAL,
                                                             common.BENCHMARK) for r in range(5) for i in range(50)]
    n = 16  # vLLM seeds a request's n samples seed + 0 .. n-1
    used = [s + j for s in seeds for j in range(n)]
    assert len(set(used)) == len(used)
    training = {common.request_seed(0, step, j) for step in range(8) for j in range(50)}  # the training rollouts'
    assert not training & set(seeds)


def test_offline_request_seeds_never_repeat_and_do_not_depend_on_batching_or_rank(tiny_model, tmp_path):
    """Mining, the prefix search's four rounds and two solvability evals: no sample seed is used twice, and a
    problem's seed is the same in one batch, in batches of one, and on either of two ranks."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    problems = [problem(i) for i in range(6)]  # 40 lines: four candidate prefixes each
    never = lambda text, prompt: 0.0  # noqa: E731
    k = 4
    recorder = SeedRecorder()
    hard = pope.mine_hard(recorder, tok, problems, never, tmp_path / "mine.jsonl", k=k, batch_size=6)
    assert hard == problems
    pope.find_prefixes(recorder, tok, hard, never, tmp_path / "prefixes.jsonl", k=k)
    pool = reward.RewardPool(0)
    for step in (0, 1):
        evaluate.solvability(recorder, pool, never, [data.make_prompt(tok, p) for p in problems], k=k,
                             temperature=1.0, max_tokens=4, seed=0, step=step, top_p=1.0, top_k=0, rank=0, world=1,
                             device="cpu")
    pool.close()
    assert len(recorder.requests) == len(problems) * (1 + 4 + 2)
    used = [seed + j for _, seed, n in recorder.requests for j in range(n)]
    assert len(used) == len(set(used)), "two requests share a sample seed"
    training = {common.request_seed(0, step, j) + g for step in range(8) for j in range(8) for g in range(k)}
    assert not training & set(used), "an offline request shares a seed with an early training rollout"

    mined = {ids: seed for ids, seed, _ in recorder.requests[:len(problems)]}
    for batch_size, rank, world in [(1, 0, 1), (2, 0, 2), (2, 1, 2)]:
        other = SeedRecorder()
        pope.mine_hard(other, tok, problems, never, tmp_path / f"mine-{batch_size}-{rank}.jsonl", k=k,
                       batch_size=batch_size, rank=rank, world=world)
        assert len(other.requests) == len(problems) // world
        assert all(mined[ids] == seed for ids, seed, _ in other.requests), (batch_size, rank, world)


def test_loaders_name_the_bad_row(tmp_path):
    path = tmp_path / "hard.jsonl"
    path.write_text(json.dumps({"problem": "a", "answer": "1"}) + "\n" + json.dumps({"problem": "b"}) + "\n")
    with pytest.raises(data.DataError, match=r"hard.jsonl:2: field 'answer' is missing"):
        data.load_problems(str(path))
    parquet = tmp_path / "hard.parquet"
    import pandas as pd

    pd.DataFrame([{"question": "q", "gt": "1"}, {"question": "r", "gt": None}]).to_parquet(parquet)
    with pytest.raises(data.DataError, match=r"hard.parquet row 1: field 'gt' is missing"):
        data.load_problems(str(parquet), problem="question", answer="gt")
    kept = data.load_problems(str(parquet), problem="question", answer="gt", strict=False)
    assert [p.problem for p in kept] == ["q"]


def pope_cli(tiny_model, tmp_path, *flags) -> subprocess.CompletedProcess:
    """`python pope.py` on a 3-problem data file (with solutions), one tiny training step."""
    data_file = tmp_path / "hard.jsonl"
    data_file.write_text("".join(json.dumps(dict(id=p.id, problem=p.problem, answer=p.answer, solution=p.solution))
                                 + "\n" for p in [problem(i, n_lines=8) for i in range(3)]))
    return subprocess.run([sys.executable, str(ROOT / "pope.py"), "--model", tiny_model, "--data", str(data_file),
                           "--out-dir", str(tmp_path / "run"), "--steps", "1", "--prompts-per-step", "2",
                           "--group-size", "2", "--max-new-tokens", "8", "--prefix-max-tokens", "8", "--prefix-k", "2",
                           "--eval-every", "0", "--log-samples", "0", "--micro-batch-size", "4", *flags],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_an_unknown_hub_model_gives_one_clear_error_line():
    with pytest.raises(SystemExit) as exit_info:
        pope.main(["--model", "nosuch/model"])
    message = str(exit_info.value.code)
    assert message.startswith("error: --model nosuch/model: not a local folder") and "\n" not in message, message
    assert "hf download nosuch/model" in message, message


def test_mining_gets_the_context_its_budget_needs(tiny_model, tmp_path):
    """--mine with a budget longer than the training context (the authors' 32k vs 20k; here 700 tokens after a
    45-token prompt, vs 600): the engine is sized for mining, so the random model's mining samples can run to 700."""
    result = pope_cli(tiny_model, tmp_path, "--mine", "--mine-k", "2", "--mine-max-tokens", "700",
                      "--max-model-len", "600")
    assert result.returncode == 0, result.stderr[-3000:]
    [cache] = (tmp_path / "run" / "cache").glob("mining-*.jsonl.rank0")
    assert len(cache.read_text().splitlines()) == 3


@pytest.mark.parametrize("flags, names", [
    (["--max-new-tokens", "200"], "--max-new-tokens 200"),
    (["--prefix-max-tokens", "200"], "--prefix-max-tokens 200"),
])
def test_a_length_that_cannot_fit_fails_at_start_in_one_line(tiny_model, tmp_path, flags, names):
    """The guided prompts here are 534 tokens long: 534 + 200 does not fit in 600."""
    result = pope_cli(tiny_model, tmp_path, "--max-model-len", "600", *flags)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr[-2000:]
    assert "the context 600 (--max-model-len)" in lines[0], lines[0]
    assert not (tmp_path / "run" / "cache").exists(), "nothing may sample before the check"
