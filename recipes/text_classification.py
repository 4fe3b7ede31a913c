"""Text classification (or regression) by transfer learning from a transformers encoder.

    accelerate launch recipes/text_classification.py recipes/configs/text_classification/minilm_finetune.yaml [key=value ...]
    accelerate launch --cpu --num_processes 2 recipes/text_classification.py CONFIG   # DDP on gloo

Identical to `hftl train CONFIG [key=value ...]`; the loop lives in hftl.trainer. To start from a
domain-adapted encoder, train recipes/configs/masked_lm/minilm_domain_adapt.yaml first and pass
model.id=<its output_dir>: the model card then records the chain.
"""

import sys

from hftl.cli import main
from hftl.launch import relaunch_cpu_multiprocess

if __name__ == "__main__":
    code = relaunch_cpu_multiprocess(sys.argv[1:])
    sys.exit(code if code is not None else main(["train", *sys.argv[1:]]))
