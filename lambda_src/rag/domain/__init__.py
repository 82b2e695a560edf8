"""The business logic: retrieval, the LLM helpers, answering, prompts and budgets; no I/O of its own."""
