"""apiary.sensors.tracing: loads compiled TracingPolicies into the gsys programs (ABI mirror of tracing_abi.h).

sensor.TracingSensor is built from parts, each module over the one before: state (what it holds), links
(attachments and the syscall table), follow (followChildren/followForks bits), adoption (its pins), policies
(the policy map writes). May import apiary.loader, .kernel, .observe, .tracing, apiary.sensors.base/.pins and
the process sensor (whose ring and maps it shares); never apiary.sensors.network, apiary.agent or apiary.cli.
"""
