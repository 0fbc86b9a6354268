"""Operations: the local Kafka broker, dead-letter tools, the demo and `tally metrics`."""
