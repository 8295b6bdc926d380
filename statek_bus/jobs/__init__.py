"""Jobs as stored data: the job store, listing, the event log, request checks, the agent registry, job definitions (a job's own options), submission."""
