"""The labeled corpus and the tools that build and evaluate it (`make eval`)."""
