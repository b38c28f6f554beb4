"""apiary.sensors.process: process exec/fork/exit with ancestry (programs, the ABI mirror of process_abi.h)."""
