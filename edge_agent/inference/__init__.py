"""Scoring with ONNX Runtime and the hot-swappable slot holding the serving model."""

from edge_agent.inference.onnx import OnnxScorer
from edge_agent.inference.slot import LoadedModel, ModelSlot

__all__ = ["LoadedModel", "ModelSlot", "OnnxScorer"]
