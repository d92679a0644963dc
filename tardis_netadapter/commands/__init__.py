"""Subcommands of the tardis-netadapter CLI, one module each."""
