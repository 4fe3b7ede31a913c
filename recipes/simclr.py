"""Self-supervised pretraining of an image encoder on unlabelled images (SimCLR).

    accelerate launch recipes/simclr.py recipes/configs/simclr/resnet18_digits.yaml [key=value ...]
    accelerate launch --cpu --num_processes 2 recipes/simclr.py CONFIG   # DDP on gloo

Identical to `hftl train CONFIG [key=value ...]`; the loop lives in hftl.trainer.
"""

import sys

from hftl.cli import main
from hftl.launch import relaunch_cpu_multiprocess

if __name__ == "__main__":
    code = relaunch_cpu_multiprocess(sys.argv[1:])
    sys.exit(code if code is not None else main(["train", *sys.argv[1:]]))
