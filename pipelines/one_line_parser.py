"""An argument parser for the project's small commands (``python -m pipelines.X``) whose errors are one line.

argparse prints the whole usage before its error; a user of these commands gets the error alone, on one line, and
exit status :data:`USAGE_ERROR`, as ``profilestream`` gives them.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors print ``PROG: error: MESSAGE`` and exit :data:`USAGE_ERROR`."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
