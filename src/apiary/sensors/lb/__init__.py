"""The socket load balancer (Cilium's bpf_sock.c): service, backend, reverse-NAT, affinity and Maglev maps
and the cgroup hooks that translate a frontend to a backend at connect()/sendmsg(). May import
apiary.loader, apiary.sensors.base/abi and apiary.services (the pure model whose tables it writes)."""
