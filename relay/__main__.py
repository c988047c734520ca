"""Allow `python -m relay` to behave exactly like the `outbox-relay` command."""

import sys

from relay.cli import main

sys.exit(main())
