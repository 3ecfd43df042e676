"""CLI sub-commands. Each module defines ``add_arguments(parser)`` and ``run(args) -> int``."""
