"""``python3 -m harness`` is the same as the ``mharness`` command."""
import sys

from harness.cli import main

sys.exit(main())
