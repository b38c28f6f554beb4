"""The L7 HTTP proxy: HAProxy driven by the agent (config, process, identities, access logs)."""
