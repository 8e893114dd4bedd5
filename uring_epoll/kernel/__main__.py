"""``python -m uring_epoll.kernel``: the kernel subcommands without the package CLI."""

import sys

from .cli import main

sys.exit(main())
