"""bench/bench_memory.py on its small config: what it counts matches the model, and what it tracks on fake tensors is
what the same code holds on real tensors, growing with the sequence as activations must."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_memory as bm  # noqa: E402

WORLD = 8


@pytest.fixture(scope="module")
def small_lm():
    """The small model for real (random weights, a few hundred KB)."""
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**bm.SMALL), dtype=torch.float32)


@pytest.fixture(scope="module")
def measured():
    """measure() on fake tensors, 8 ranks and 1; and 8 ranks with the reference model."""
    return {world: bm.measure(bm.SMALL, world, bm.SMALL_SHAPE) for world in (WORLD, 1)} | {
        "ref": bm.measure(bm.SMALL, WORLD, bm.SMALL_SHAPE, with_ref=True)}


def formula_params(c: dict) -> int:
    """Qwen3's parameters from its config: a tied embedding (once), per layer q, k, v, o, q/k norms, the MLP and
    two norms, and the final norm."""
    h, d, q, kv = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    per_layer = h * q * d + 2 * h * kv * d + q * d * h + 2 * d + 3 * h * c["intermediate_size"] + 2 * h
    return c["vocab_size"] * h + c["num_hidden_layers"] * per_layer + h


def test_parameter_count_is_the_models(measured, small_lm):
    distinct = {p.untyped_storage().data_ptr(): p.numel() for _, p in small_lm.named_parameters(remove_duplicate=False)}
    assert small_lm.lm_head.weight is small_lm.model.embed_tokens.weight  # tied: one storage under two names
    for world in (WORLD, 1):
        assert measured[world]["params"]["total"] == sum(distinct.values()) == formula_params(bm.SMALL)


def test_qwen3_4b_fixture_matches_its_model_card():
    """The model card: 4.0B parameters, 3.6B of them outside the embedding (built on meta: no memory)."""
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**bm.QWEN3_4B), dtype=torch.float32)
    counts = bm.parameter_counts(lm)
    assert counts["total"] == formula_params(bm.QWEN3_4B)
    assert round(counts["total"] / 1e9, 1) == 4.0
    assert round((counts["total"] - counts["embedding"]) / 1e9, 1) == 3.6


def test_shards_gradients_and_adamw_add_up(measured, small_lm):
    full = 4 * formula_params(bm.SMALL)  # fp32 bytes of the whole model
    assert measured[1]["shard_bytes"] == full  # one rank holds it all, the tied weight once
    # 8 ranks: each parameter's rows are padded to a multiple of 8 (vocab 1001 -> 1008), rank 0 holds 1/8 of that
    padded = 4 * sum(math.ceil(p.shape[0] / WORLD) * WORLD * p[0].numel() for p in small_lm.parameters())
    assert padded > full
    assert WORLD * measured[WORLD]["shard_bytes"] == padded
    for world in (WORLD, 1):
        m = measured[world]
        assert m["grad_bytes"] == m["shard_bytes"]
        assert m["adam_bytes"] == 2 * m["shard_bytes"]
        # the tracker's training state at the peak: the same, plus AdamW's 4-byte step counters
        state = bm.rows(m["peak"])["state"]
        n_tensors = len(list(small_lm.parameters()))
        assert 0 <= state - (m["shard_bytes"] + m["grad_bytes"] + m["adam_bytes"]) <= 4 * n_tensors


def test_unsharded_copies_at_the_peak(measured):
    m = measured[WORLD]
    copies = bm.rows(m["peak"])["copies"]
    assert m["root_bf16_bytes"] <= copies <= m["root_bf16_bytes"] + 2 * m["layer_bf16_bytes"] + 4096  # + padding


def test_attention_mask_is_counted(measured):
    s = bm.SMALL_SHAPE
    for world in (WORLD, 1):
        assert measured[world]["mask_bytes"] == {"bool": s.seqs * s.seq_len**2, "float": 2 * s.seqs * s.seq_len**2}


def test_activations_grow_linearly_with_the_sequence_plus_the_quadratic_mask():
    kept = {}
    for seq_len in (48, 96, 192):
        m = bm.measure(bm.SMALL, WORLD, bm.Shape(seqs=2, seq_len=seq_len, completion=seq_len * 2 // 3, chunk=16))
        assert m["mask_bytes"]["bool"] == 2 * seq_len**2
        kept[seq_len] = bm.rows(m["after_forward"])["activations"] - m["mask_bytes"]["bool"]
    assert 1.9 < kept[96] / kept[48] < 2.1
    assert 1.9 < kept[192] / kept[96] < 2.1


@pytest.mark.parametrize("world", [WORLD, 1])
def test_fake_tensors_count_what_real_tensors_hold(world, measured):
    """The same code on real tensors, with the same trackers: the stand-ins for values (boolean indexing, .item())
    change nothing but a few bytes of index temporaries."""
    real = bm.measure(bm.SMALL, world, bm.SMALL_SHAPE, fake=False)
    for moment in ("after_forward", "forward_peak", "peak", "step_peak"):
        assert abs(real[moment]["Total"] - measured[world][moment]["Total"]) <= 1024, moment


def test_reference_model_adds_its_shards_head_and_gathered_root(measured):
    base, ref = measured[WORLD], measured["ref"]
    resident = ref["ref_resident_bytes"]
    # fp32 shards (as the policy's) + the fp32 head gathered whole (padded rows) + the root gathered in bf16
    assert resident >= base["shard_bytes"] + 4 * bm.SMALL["vocab_size"] * bm.SMALL["hidden_size"] \
        + base["root_bf16_bytes"]
    summary = bm.summarise({WORLD: {"base": base, "ref": ref}}, bm.SMALL, [79.1], 0.35)
    assert summary[f"{WORLD}x79.1"]["ref_extra"] >= resident


@pytest.mark.parametrize("world", [WORLD, 1])
@pytest.mark.parametrize("trainable", [True, False])
def test_bench_load_model_builds_what_grpo_load_model_builds(world, trainable, small_lm, tmp_path):
    """bench_memory.load_model mirrors grpo.load_model (which cannot run on fake tensors): on real tensors, from the
    same saved model, both give the same module, parameters (global and local shapes, dtypes, requires_grad),
    gradient checkpointing and, for the reference, the same gathered head."""
    small_lm.save_pretrained(tmp_path)
    cfg = bm.train_config(bm.SMALL_SHAPE, with_ref=not trainable)
    cfg.model = str(tmp_path)
    with bm.fake_ranks(world) as mesh:
        ours = bm.load_model(bm.SMALL, world, trainable, mesh)
        theirs = bm.grpo.load_model(cfg, torch.device("cpu"), world, trainable)

        def described(model):
            params = {name: (tuple(p.shape), tuple(bm.local(p).shape), p.dtype, p.requires_grad, type(p).__name__)
                      for name, p in model.named_parameters()}
            head = getattr(model, "head", None)
            return (type(model).__name__, model.training, model.lm.is_gradient_checkpointing, params,
                    None if head is None else (tuple(head.shape), head.dtype, type(head).__name__))

        assert described(ours) == described(theirs)


def test_cli_prints_a_table_and_one_json_line(capsys):
    bm.main(["--small", "--no-ref", "--worlds", "8"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("ESTIMATE")
    row = json.loads(out[-1])
    assert row["estimate"] is True and row["measured"]["8"]["base"]["params"]["total"] == formula_params(bm.SMALL)
