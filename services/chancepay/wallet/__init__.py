"""The wallet: consumes payment messages, deducts by a coin flip, calls the orchestrator back."""
