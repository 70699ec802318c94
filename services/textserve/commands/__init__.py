"""CLI subcommands that are not tied to one service."""
