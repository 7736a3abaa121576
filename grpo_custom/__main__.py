"""``python -m grpo_custom ...``: the ``grpo-custom`` command line (same as the console script)."""
import sys

from grpo_custom.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
