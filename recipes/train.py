"""Train any task by transfer learning: the config's ``task`` says which (its folder under configs/ too).

    accelerate launch recipes/train.py recipes/configs/image_classification/resnet18_finetune.yaml [key=value ...]
    accelerate launch --cpu --num_processes 2 recipes/train.py CONFIG          # DDP on gloo, 2 CPU ranks
    accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml recipes/train.py CONFIG
    torchrun --standalone --nproc_per_node 2 recipes/train.py CONFIG

Identical to `hftl train CONFIG [key=value ...]`: one entry point, as every task runs on the one
run path (hftl.run) and the one loop (hftl.trainer).
"""

import sys

from hftl.cli import main
from hftl.launch import relaunch_cpu_multiprocess

if __name__ == "__main__":
    code = relaunch_cpu_multiprocess(sys.argv[1:])
    sys.exit(code if code is not None else main(["train", *sys.argv[1:]]))
