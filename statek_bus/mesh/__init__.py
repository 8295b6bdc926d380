"""Mesh plumbing: settings, the NATS connection, JetStream availability, provisioning, the service runner, discovery."""
