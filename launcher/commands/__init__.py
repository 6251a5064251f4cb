"""One module per `dialsum` subcommand. Each exposes `register(subparsers)` which adds its parser and sets
`func=run` where `run(args) -> int` returns the exit code."""
