"""plunderctl, the command line."""
