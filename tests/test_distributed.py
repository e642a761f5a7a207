"""The 8-GPU path, exercised on CPU: 2 ranks (torchrun, gloo, FSDP2, one vLLM engine per rank), tied embeddings (as
Qwen3-4B-Instruct-2507 has them), bfloat16 compute, exact resume after SIGKILL, and checkpoints that survive a crash in
the middle of being written."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import grpo
import tiny
from rollout import Engine
from test_grpo_loop import char_fraction_z, tiny_config, tiny_prompts, trainer_logprobs

ROOT = Path(__file__).resolve().parents[1]
Sample = __import__("rollout").Sample


def test_two_ranks_train_like_one_process_and_serve_the_same_weights(tiny_model, engine, tmp_path):
    dist_dir, single_dir = tmp_path / "two-ranks", tmp_path / "one-process"
    run_worker(tiny_model, dist_dir, 2)

    # Both ranks' engines sample the same tokens with the same logprobs: they hold the same weights ...
    rank0, rank1 = (json.loads((dist_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    # ... and those are the trained weights: the trainer, loaded from the 2-rank checkpoint, agrees within 1e-4.
    assert served_gap(dist_dir) < 1e-4
    dist_weights = grpo.latest_checkpoint(dist_dir) / "hf"

    # The same two steps in one process give the same model: FSDP's sharded update equals the unsharded one.
    grpo.train(tiny_config(tiny_model, single_dir, steps=2), tiny_prompts(tiny_model), char_fraction_z, engine=engine)
    a = load_file(dist_weights / "model.safetensors")
    b = load_file(grpo.latest_checkpoint(single_dir) / "hf" / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-3, "training must have moved the weights"
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    metrics = [json.loads(line) for line in (dist_dir / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (single_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward"] for m in metrics] == pytest.approx([m["reward"] for m in single], abs=1e-6)

    # Each step, the ranks' shares of its prompts are disjoint and together are the step's prompts (the reward above
    # ignores the prompt, so every rank training on rank 0's share would pass everything else).
    check_prompt_shares(tiny_model, dist_dir)


def check_prompt_shares(model: str, out_dir: Path) -> None:
    """Each step of a 2-rank dist_worker run, the ranks' prompts (prompts-rank{r}.txt) are disjoint and together are
    the step's prompts."""
    cfg = tiny_config(model, out_dir, steps=2)
    per_rank_calls = cfg.prompts_per_step // 2 * cfg.group_size
    shares = [(out_dir / f"prompts-rank{r}.txt").read_text().split() for r in (0, 1)]
    for step in range(cfg.steps):
        a, b = ({*ids[step * per_rank_calls:(step + 1) * per_rank_calls]} for ids in shares)
        expected = {p.problem.id for p in grpo.prompts_for_step(tiny_prompts(model), step, cfg.prompts_per_step,
                                                                 cfg.seed)}
        assert not a & b and a | b == expected, (step, a, b, expected)


def run_worker(model: str, out_dir: Path, ranks: int, **overrides) -> list[dict]:
    """tests/dist_worker.py on `ranks` gloo ranks (1: a plain process, no torchrun); returns its metrics lines."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"] if ranks > 1 else [
        sys.executable]
    result = subprocess.run([*launcher, str(ROOT / "tests" / "dist_worker.py"), model, str(out_dir),
                             json.dumps(overrides)], capture_output=True, text=True, timeout=600, cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def served_gap(out_dir: Path) -> float:
    """Largest |vLLM logprob - trainer logprob| over rank 0's final samples, the trainer loaded from the checkpoint."""
    samples = [Sample(s["prompt_ids"], s["completion_ids"], s["logprobs"], "", "")
               for s in json.loads((out_dir / "rank0.json").read_text())]
    hf = str(grpo.latest_checkpoint(out_dir) / "hf")
    return max((lp - torch.tensor(s.logprobs)).abs().max().item()
               for lp, s in zip(trainer_logprobs(hf, samples, 1.0), samples))


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory) -> str:
    return tiny.make_tiny_model(str(tmp_path_factory.mktemp("tied-model")), tied=True)


def test_sync_casts_to_the_engine_dtype_and_gathers_a_tied_tensor_once(tied_model):
    class Recorder:  # stands in for vLLM's LLM: keeps what reload_weights would receive
        def collective_rpc(self, method, kwargs):
            self.sent = list(kwargs["weights_iterator"])

        def reset_prefix_cache(self):
            pass

    lm = AutoModelForCausalLM.from_pretrained(tied_model, dtype=torch.float32)
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    stub = type("StubEngine", (), {"llm": Recorder(), "dtype": torch.bfloat16})()
    Engine.sync_weights(stub, grpo.hf_state(grpo.Policy(lm)))
    sent = dict(stub.llm.sent)
    assert sent["lm_head.weight"] is sent["model.embed_tokens.weight"], "one cast (one gather), sent under both names"
    assert all(t.dtype == torch.bfloat16 for t in sent.values())
    assert len(stub.llm.sent) == len(sent) == len(list(lm.named_parameters(remove_duplicate=False)))
    assert not any("rotary" in name for name in sent)  # buffers are not weights


@pytest.mark.parametrize("ranks", [1, 2])
def test_tied_embeddings_train_serve_and_save_tied(tied_model, tmp_path, ranks):
    """A tied tiny Qwen3, 2 steps at lr 1e-2: the engines serve the trained weights (vLLM's CPU build keeps a
    repacked copy of the output layer, which only the tied tensor's second name refreshes), and the saved HF
    checkpoint reloads tied."""
    run_worker(tied_model, tmp_path, ranks)
    assert served_gap(tmp_path) < 1e-4
    reloaded = AutoModelForCausalLM.from_pretrained(grpo.latest_checkpoint(tmp_path) / "hf")
    assert reloaded.config.tie_word_embeddings and reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    base = AutoModelForCausalLM.from_pretrained(tied_model)
    assert (reloaded.model.embed_tokens.weight - base.model.embed_tokens.weight).abs().max() > 1e-3, "it trained"


@pytest.mark.slow
def test_bfloat16_on_two_ranks_tracks_the_float32_run(tiny_model, tmp_path):
    """--dtype bfloat16 on 2 ranks (vLLM in bf16, FSDP2 computing in bf16 over float32 master weights), with
    gradient checkpointing, micro-batches of 3 (so 3, 3, 3, 3, 3, 1 sequences of unequal lengths) and a KL term,
    against the same run in float32. Measured: both learn the 'Z' reward by step ~11 (rewards 0 until step 8, then
    1.0 from step 12), their final KL agree within 1%, and bf16's sampler-trainer gap is 0.04 at most (float32's
    2e-6). The tolerances below leave room for sampling noise: reward >= 0.9 at the end, KL within 20%."""
    setting = dict(steps=16, lr=3e-2, adv_std_norm=True, kl_coef=0.01, grad_checkpointing=True, micro_batch_size=3)
    fp32 = run_worker(tiny_model, tmp_path / "fp32", 2, dtype="float32", **setting)
    bf16 = run_worker(tiny_model, tmp_path / "bf16", 2, dtype="bfloat16", **setting)
    for run in (fp32, bf16):
        assert run[0]["reward"] < 0.1 and min(m["reward"] for m in run[-2:]) >= 0.9, [m["reward"] for m in run]
    assert bf16[-1]["kl"] == pytest.approx(fp32[-1]["kl"], rel=0.2)
    assert max(m["logprob_gap_max"] for m in fp32) < 1e-4
    assert max(m["logprob_gap_max"] for m in bf16) < 0.1 and max(m["logprob_gap_mean"] for m in bf16) < 1e-2


def test_a_rank_waiting_past_the_collective_timeout_fails_naming_the_flag():
    """Rank 1 sleeps 20 s; rank 0 waits for it at a reduction with a 3-second timeout and ends the job with one line
    that names --dist-timeout-minutes. (With the default of 240 minutes the same job would simply finish.)"""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             str(ROOT / "tests" / "timeout_worker.py"), "0.05", "20"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT / "tests")
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: a collective waited")]
    assert "--dist-timeout-minutes 0.05" in line, line


def cli(out_dir, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "grpo.py"), "--model", extra[0], "--data", extra[1], "--out-dir", str(out_dir),
            "--steps", "5", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
            "--max-model-len", "256", "--lr", "1e-2", "--entropy-coef", "0.01", "--log-samples", "0",
            "--save-every", "1", *extra[2:]]


@pytest.mark.slow  # ~45 s: three runs of the trainer, one killed
def test_resume_after_sigkill_matches_the_uninterrupted_run(tiny_model, tmp_path):
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("".join(json.dumps({"problem": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                                 for i in range(12)))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli(whole, tiny_model, str(data_file)), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(cli(killed, tiny_model, str(data_file)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while grpo.latest_checkpoint(killed) is None or grpo.latest_checkpoint(killed).name != "step-000001":
        assert time.time() < deadline and proc.poll() is None, "the run ended before its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-000004").exists(), "the run was killed before the end"
    subprocess.run(cli(killed, tiny_model, str(data_file), "--resume"), check=True, capture_output=True, timeout=300)

    def steps(run):  # per-step metrics without wall-clock and memory readings
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(("time_", "mem_"))}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert [m["step"] for m in steps(killed)] == [0, 1, 2, 3, 4]
    assert steps(killed) == steps(whole)  # bit-identical on CPU: seeded sampling, same data order, exact state
    a = load_file(grpo.latest_checkpoint(whole) / "hf" / "model.safetensors")
    b = load_file(grpo.latest_checkpoint(killed) / "hf" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def fail(*args, **kwargs):
    raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("crash_in", ["train-state", "rng", "hf-model", "pointer"])
def test_a_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tiny_model, tmp_path, monkeypatch, crash_in):
    policy = grpo.Policy(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.1)
    good = grpo.save_checkpoint(tmp_path, 0, policy, optimizer, tiny_model, rank=0)
    saved = {k: v.clone() for k, v in policy.state_dict().items()}

    with torch.no_grad():  # the next checkpoint would hold different weights
        for p in policy.parameters():
            p.add_(1.0)
    if crash_in == "rng":  # torch.save is also used inside DCP: fail only on the RNG file
        real_save = torch.save
        monkeypatch.setattr("torch.save", lambda obj, f, *a, **k: fail() if "rng-rank" in str(f)
                            else real_save(obj, f, *a, **k))
    else:
        target = {"train-state": "torch.distributed.checkpoint.save", "pointer": "os.replace",
                  "hf-model": "transformers.PreTrainedModel.save_pretrained"}[crash_in]
        monkeypatch.setattr(target, fail)
    with pytest.raises(KeyboardInterrupt):
        grpo.save_checkpoint(tmp_path, 1, policy, optimizer, tiny_model, rank=0)
    monkeypatch.undo()

    assert grpo.latest_checkpoint(tmp_path) == good
    fresh = grpo.Policy(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    assert grpo.load_checkpoint(good, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1), rank=0) == 1
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    reloaded = AutoModelForCausalLM.from_pretrained(good / "hf")
    assert all(torch.equal(saved["lm." + k], v) for k, v in reloaded.state_dict().items())


def test_the_hf_export_is_written_in_the_compute_dtype(tiny_model, tmp_path):
    """bf16 training exports bf16 weights (half of fp32's bytes: what vLLM and HF consumers load) and a config.json
    that says so; the DCP train state stays fp32 (exact resume)."""
    policy = grpo.Policy(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    path = grpo.save_checkpoint(tmp_path, 0, policy, torch.optim.AdamW(policy.parameters()), tiny_model, rank=0,
                                dtype=torch.bfloat16)
    exported = AutoModelForCausalLM.from_pretrained(path / "hf", dtype="auto")
    assert exported.dtype == torch.bfloat16 and json.loads((path / "hf" / "config.json").read_text())["dtype"] == \
        "bfloat16"
    for name, p in policy.lm.named_parameters():
        torch.testing.assert_close(exported.get_parameter(name), p.detach().to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.slow  # ~1 min: two trainer processes with an engine each
def test_two_nodes_on_localhost_train_and_serve_the_same_weights(tiny_model, tmp_path):
    """torchrun's multi-node launch, as two torchrun processes on this machine (--nnodes 2, one rank each, node ranks
    0 and 1): LOCAL_RANK is 0 on both, RANK 0 and 1. The same trainer path as on one node must work: both engines
    serve the trained weights, and each step the ranks' prompt shares are disjoint and complete."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(ROOT / "tests" / "dist_worker.py"), tiny_model, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT / "tests")
             for node in (0, 1)]
    results = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    assert json.loads((tmp_path / "rank0.json").read_text()) == json.loads((tmp_path / "rank1.json").read_text())
    assert served_gap(tmp_path) < 1e-4
    check_prompt_shares(tiny_model, tmp_path)


@pytest.mark.slow  # ~1 min each: a 2-rank run and a 1-process run
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "sum"])
def test_two_ranks_with_a_token_budget_train_like_one_process_without(tiny_model, engine, tmp_path, loss_agg):
    """Length-sorted micro-batches by a token budget on 2 ranks (each rank groups its own share) end in the same
    weights as fixed micro-batches in one process: the loss does not depend on how sequences share a pass. (Within
    2e-4: Adam at lr 1e-2 amplifies float summation order, and in one process micro-batches of 4 instead of 16
    already move the weights by 6e-5; training moves them by more than 1e-3.)"""
    budget = run_worker(tiny_model, tmp_path / "budget", 2, micro_batch_tokens=150, loss_agg=loss_agg)
    fixed = grpo.train(tiny_config(tiny_model, tmp_path / "fixed", steps=2, loss_agg=loss_agg),
                       tiny_prompts(tiny_model), char_fraction_z, engine=engine)
    assert [m["grad_norm"] for m in budget] == pytest.approx([m["grad_norm"] for m in fixed], rel=1e-5)
    assert budget[0]["grad_norm"] > 1e-3
    a = load_file(grpo.latest_checkpoint(tmp_path / "budget") / "hf" / "model.safetensors")
    b = load_file(grpo.latest_checkpoint(tmp_path / "fixed") / "hf" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-4


def test_ranks_run_as_many_passes_when_a_token_budget_packs_them_differently(tiny_model, tmp_path):
    """Rank 0's sequences fit one pass of the budget, rank 1's need eight: FSDP gathers the weights in every forward,
    so rank 0 must split its pass until both run eight (unplanted, rank 0 stops after one forward and the other
    rank's gathers wait until the collective timeout)."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             str(ROOT / "tests" / "passes_worker.py"), tiny_model, str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"passes-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["passes"] for r in ranks] == [8, 8] and ranks[0]["grad_norm"] == ranks[1]["grad_norm"] > 0, ranks
