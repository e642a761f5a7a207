"""The 8-GPU path, exercised on CPU: 2 ranks (torchrun, gloo, FSDP2, one vLLM engine per rank), exact resume
after SIGKILL, and checkpoints that survive a crash in the middle of being written."""

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
from test_grpo_loop import char_fraction_z, tiny_config, tiny_prompts, trainer_logprobs

ROOT = Path(__file__).resolve().parents[1]
Sample = __import__("rollout").Sample


def test_two_ranks_train_like_one_process_and_serve_the_same_weights(tiny_model, engine, tmp_path):
    dist_dir, single_dir = tmp_path / "two-ranks", tmp_path / "one-process"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             str(ROOT / "tests" / "dist_worker.py"), tiny_model, str(dist_dir)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr[-3000:]

    # Both ranks' engines sample the same tokens with the same logprobs: they hold the same weights ...
    rank0, rank1 = (json.loads((dist_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    # ... and those are the trained weights: the trainer, loaded from the 2-rank checkpoint, agrees within 1e-4.
    dist_weights = grpo.latest_checkpoint(dist_dir) / "hf"
    samples = [Sample(s["prompt_ids"], s["completion_ids"], s["logprobs"], "", "") for s in rank0]
    for lp, s in zip(trainer_logprobs(str(dist_weights), samples, 1.0), samples):
        assert (lp - torch.tensor(s.logprobs)).abs().max() < 1e-4

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


def cli(out_dir, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "grpo.py"), "--model", extra[0], "--data", extra[1], "--out-dir", str(out_dir),
            "--steps", "5", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
            "--max-model-len", "256", "--lr", "1e-2", "--entropy-coef", "0.01", "--log-samples", "0",
            "--save-every", "1", *extra[2:]]


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
    policy = grpo.Scorer(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
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
    fresh = grpo.Scorer(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    assert grpo.load_checkpoint(good, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1), rank=0) == 1
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    reloaded = AutoModelForCausalLM.from_pretrained(good / "hf")
    assert all(torch.equal(saved["lm." + k], v) for k, v in reloaded.state_dict().items())
