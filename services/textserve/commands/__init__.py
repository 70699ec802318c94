"""CLI subcommands: `serve`, `tune`, `config`, and the client commands that call a running service."""
