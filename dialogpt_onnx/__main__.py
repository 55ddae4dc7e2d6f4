"""python -m dialogpt_onnx COMMAND: the same as the `dialogpt-onnx` console script."""

import sys

from .command import main

sys.exit(main())
