"""Learning: slate policies, Plackett-Luce, diversity, metrics and off-policy estimators.

Pure numpy here: no Ray, Kafka or HTTP import, testable in milliseconds.
"""

__all__ = ["bandits", "slate", "diversity", "metrics", "ope"]
