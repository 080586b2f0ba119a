"""Pydantic models shared by the hub and the sync worker: API bodies and events."""

from schemas.account import Address, BasicDetails, BasicDetailsUpdate, ValidationProblem

__all__ = ["Address", "BasicDetails", "BasicDetailsUpdate", "ValidationProblem"]
