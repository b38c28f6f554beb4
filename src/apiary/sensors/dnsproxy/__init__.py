"""The DNS proxy of toFQDNs / rules.dns policy: in the agent (as Cilium's), on dnspython."""
