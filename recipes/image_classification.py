"""Image classification by transfer learning.

    accelerate launch recipes/image_classification.py recipes/configs/image_classification/resnet18_finetune.yaml [key=value ...]

Identical to `hftl train CONFIG [key=value ...]`; the loop lives in hftl.trainer.
"""

import sys

from hftl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
