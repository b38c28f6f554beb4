"""apiary.sensors: the kernel-facing capabilities, one package per sensor (process, tracing, network).

A sensor loads its BPF programs, owns its maps and links, and decodes its own ring-buffer records.
May import apiary.loader, .kernel, .observe, .tracing, .policy; never apiary.agent or apiary.cli.
"""
