"""Moved to ``sde_diffusion.interop.peers``; this name is kept so old imports keep working."""

from .interop.peers import *  # noqa: F401,F403
from .interop.peers import PEER_SPACINGS, PEERS, STOCHASTIC_PEERS, make_scheduler, peer_nfe, peer_spacings, run_peer  # noqa: F401
