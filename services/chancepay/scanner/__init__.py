"""The outbox scanner: claims due outbox rows, publishes them with confirms, deletes on ack."""
