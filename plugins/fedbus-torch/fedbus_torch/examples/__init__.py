"""First-party examples built on ``fedbus_torch`` the way a third party would."""
