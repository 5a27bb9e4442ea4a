#!/usr/bin/env python
"""Entry point: `python cli.py compress facebook/detr-resnet-50 --recipe act` (see `python cli.py --help`)."""

import sys

from compressor.cli import main

if __name__ == "__main__":
    sys.exit(main())
