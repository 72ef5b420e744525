"""Implementations of the terminal commands (argument parsing lives in mixdesk.cli)."""
