"""The automatic abuse layer of the edge (README.md here): a sans-IO tracker
fed connection and request events with `now`, that blocks sources at accept."""
from edge.abuse.config import AbuseConfig
from edge.abuse.rate import MinRate
from edge.abuse.source import Exempt, keys
from edge.abuse.tracker import REASONS, AbuseTracker, Block, Conn

__all__ = ["AbuseConfig", "AbuseTracker", "Block", "Conn", "Exempt", "MinRate", "REASONS", "keys"]
