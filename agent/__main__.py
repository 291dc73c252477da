"""``python -m agent`` is the ``fedbus`` command."""

from agent.cli.main import main

main()
