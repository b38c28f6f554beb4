"""apiary.sensors.tracing: loads compiled TracingPolicies into the gsys programs (ABI mirror of tracing_abi.h)."""
