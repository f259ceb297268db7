"""The audit trail: append-only, hash-chained traces of every call and its feedback."""
