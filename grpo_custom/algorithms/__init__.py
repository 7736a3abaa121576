"""Layer 1, pure tensor math: advantage estimators, KL estimators, regularizers, loss aggregation.

Nothing here knows the trainer or imports Unsloth; every function is a registered or plain pure function.
"""
