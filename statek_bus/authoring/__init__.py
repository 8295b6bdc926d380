"""The authoring API: what users write (agents, dialog agents and STATEK's ready-made roles, tools, prompts) and what model code calls (futures, the waiting tools)."""
