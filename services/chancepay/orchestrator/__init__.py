"""The orchestrator: public payments API and the write-once result callback."""
