"""The P2P peer role (``[aggregator] mode = "p2p"``): gossip averaging, no aggregator."""

from agent.roles.peer.role import Peer as Peer
