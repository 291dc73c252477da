"""The trainer role (``Trainer``) and its parts; see ``agent.roles.trainer.role``."""

from agent.roles.trainer.model import HeldModel
from agent.roles.trainer.role import Trainer
from agent.roles.trainer.status import TrainerState

__all__ = ["HeldModel", "Trainer", "TrainerState"]
