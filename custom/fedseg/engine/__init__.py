"""Training and evaluation engine (no nvflare, no ray)."""

from fedseg.engine.engine import SegmentationEngine, TrainResult
from fedseg.engine.metrics import DiceScores
from fedseg.engine.runtime import Runtime

__all__ = ["SegmentationEngine", "TrainResult", "DiceScores", "Runtime"]
