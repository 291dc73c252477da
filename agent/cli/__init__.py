"""The ``fedbus`` command line (click)."""
