"""The authoring API: what users write (agents, tools, prompts) and what model code calls (futures, the waiting tools)."""
