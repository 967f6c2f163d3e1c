"""Your own model, the same way: a small HuggingFace GPT-2 trained on the standard library, imported, its induction heads checked.

Run it with ``.venv/bin/python examples/induction_gpt2.py --out runs/gpt2_induction`` (a few minutes on a CPU).

1. Build a 2-layer GPT-2 from a ``GPT2Config`` (random weights, nothing downloaded) over bytes
   (vocabulary 256) and train it on the ``text`` task's windows of Python's standard library.
2. Import it with ``ci.from_hf``: every head, MLP and norm becomes a box of our diagram, checked
   against the model's own forward.
3. Run the same induction check as ``compinterp demo lm``: find the previous-token and induction
   heads on random bytes repeated twice, fix their patterns (other heads of their layers
   mean-ablated), and check the hypothesis and a control with the wrong heads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

import compinterp as ci
from compinterp import lm
from compinterp.disk import write_atomically
from compinterp.tasks import text


def train_gpt2(steps: int, *, context: int = 128, width: int = 128, layers: int = 2, heads: int = 4,
               batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> tuple[GPT2LMHeadModel, float]:
    """A byte-level GPT-2 trained for ``steps`` AdamW steps on the text task's training windows; seconds taken."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=text.VOCAB, n_positions=context, n_embd=width, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    tokens, _, labels = text.windows(text.corpus("train", steps * batch_size * context + 1), context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(steps), desc="train gpt2", unit="step"):
        rows = slice(step * batch_size, (step + 1) * batch_size)
        logits = model(tokens[rows]).logits
        loss = F.cross_entropy(logits.reshape(-1, text.VOCAB), labels[rows].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpt2_induction"))
    parser.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    hf, seconds = train_gpt2(args.steps, width=args.width)
    held_out = text.windows(text.corpus("test", 65536), 128)
    model = ci.from_hf(hf, example=held_out[0][:2])                      # checked against hf's own forward
    bits = text.bits_per_byte(model, held_out).mean().item()
    score = text.induction(model)
    result = lm.explain_induction(model)
    print(f"GPT-2 ({sum(p.numel() for p in hf.parameters()):,} parameters), {args.steps} steps in {seconds:.0f} s: "
          f"{bits:.3f} bits per byte held out, induction score {score['score']:.3f}")
    print(result)
    numbers = {"steps": args.steps, "seconds": seconds, "bits_per_byte": bits, "induction": score,
               "boxes": sorted({b.kind for b in model.boxes.values()}), **result.to_json()}
    write_atomically(args.out / "induction.json", lambda p: p.write_text(json.dumps(numbers, indent=1) + "\n"))
    print(f"wrote {args.out / 'induction.json'}")


if __name__ == "__main__":
    main()
