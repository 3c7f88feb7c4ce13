"""`rlhf` subcommands beyond the core ones: every module here with a ``register(subparsers)`` function adds its
own subcommand(s) (set ``fn`` with ``set_defaults``; ``fn(args) -> int`` exit status)."""
