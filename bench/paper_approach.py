"""The paper's approach (SagnikMukherjee/sparsity_in_rl, check_sparsity.py), re-implemented for
timing: load both models whole through transformers in bf16 on CPU, subtract state dicts in the
load dtype, concatenate every delta, count exact zeros and isclose(Δ, 0, atol=1e-5).

usage: python bench/paper_approach.py BASE_DIR TUNED_DIR
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, device_map="cpu")
    tuned = AutoModelForCausalLM.from_pretrained(
        sys.argv[2], dtype=torch.bfloat16, device_map="cpu"
    )
    sd_tuned = tuned.state_dict()
    deltas = []
    for name, p in base.named_parameters():
        try:
            deltas.append((sd_tuned[name] - p.data).reshape(-1))
        except Exception as err:  # the original prints and drops the tensor
            print(f"Error in {name}: {err}", file=sys.stderr)
    delta = torch.cat(deltas)
    n = delta.numel()
    zeros = int((delta == 0).sum())
    close = int(torch.isclose(delta, torch.zeros_like(delta), atol=1e-5).sum())
    print(json.dumps({"n_params": n, "sparsity": zeros / n, "sparsity_1e-05": close / n}))


if __name__ == "__main__":
    main()
