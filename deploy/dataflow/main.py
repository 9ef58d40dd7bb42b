"""The Flex Template launcher: runs ``profilestream run`` with the parameters Dataflow passes.

``FLEX_TEMPLATE_PYTHON_PY_FILE`` in ``deploy/dataflow/Dockerfile`` points here; the template's parameters are the
flags of ``profilestream run`` (``deploy/dataflow/metadata.json``, built by :mod:`pipelines.flex_template`).
"""

import sys

from pipelines.cli import main
from pipelines.flex_template import launcher_argv

if __name__ == "__main__":
    sys.exit(main(["run", *launcher_argv(sys.argv[1:])]))
