"""Rate-limit backends behind one interface: Redis (shared, exact across replicas) and in-process."""

from .base import Decision, Limiter, LimiterUnavailable, Limits, RateState, WindowConfig
from .memory import MemoryLimiter
from .redis_limiter import RedisLimiter

__all__ = ["Decision", "Limiter", "LimiterUnavailable", "Limits", "MemoryLimiter", "RateState", "RedisLimiter",
           "WindowConfig"]
