"""Causal language-model fine-tuning (GPT-2 family, any AutoModelForCausalLM), and masked-LM adaptation.

    accelerate launch recipes/causal_lm.py recipes/configs/causal_lm/gpt2_finetune.yaml [key=value ...]
    accelerate launch recipes/causal_lm.py recipes/configs/masked_lm/minilm_domain_adapt.yaml
    hftl generate outputs/gpt2_finetune "Once upon a time"

Identical to `hftl train CONFIG [key=value ...]` (the config's task says causal_lm or masked_lm);
the loop lives in hftl.trainer.
"""

import sys

from hftl.cli import main
from hftl.launch import relaunch_cpu_multiprocess

if __name__ == "__main__":
    code = relaunch_cpu_multiprocess(sys.argv[1:])
    sys.exit(code if code is not None else main(["train", *sys.argv[1:]]))
