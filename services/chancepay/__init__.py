"""ChancePay (随缘付): an orchestrator - outbox - RabbitMQ - wallet pipeline that cannot lose money."""

__version__ = "0.2.0"
