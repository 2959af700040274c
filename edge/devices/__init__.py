"""Register codecs and device drivers (sensors read, actuators written and read back)."""
