"""The trainer role (``Trainer``); see ``agent.roles.trainer.role``."""

from agent.roles.trainer.role import Trainer

__all__ = ["Trainer"]
