"""The runtime: the executor, the step engine, the code runner, resume, wake-ups and the commit merge."""
