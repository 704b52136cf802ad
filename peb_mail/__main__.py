"""Allow ``python -m peb_mail``."""

import sys

from .cli import main

sys.exit(main())
