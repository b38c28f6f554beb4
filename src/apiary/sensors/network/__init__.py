"""apiary.sensors.network: the TC datapath (policy maps, conntrack, flows) and endpoints (netns + veth + cgroup)."""
