"""The agent runtime: the receive loop, listeners, sending, and the process entry point."""
