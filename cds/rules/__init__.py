"""Rule packs: the format, loading, compiling onto durable-rules, evaluating, cards."""
