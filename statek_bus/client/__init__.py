"""Clients of the mesh: the async and sync clients, jobs and states facades, the LLM provider seam."""
