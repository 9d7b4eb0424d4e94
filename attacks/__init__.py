"""Model-inversion attacks on split models. Never imports defenses/: the deployed obfuscation
arrives as a plain callable `z -> z~` handed in by the caller."""
from attacks.base import Attack, AttackResult, TrainedAttack

__all__ = ["Attack", "AttackResult", "TrainedAttack"]
