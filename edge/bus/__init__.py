"""Field buses: one owner (task + lock) per serial port or TCP gateway."""
