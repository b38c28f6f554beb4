"""The XDP prefilter sensor: source-address deny lists dropped at XDP."""
